"""From tonic's event samples to cached frame files: per-sample checks, binning, the frame cache.

:mod:`edgesnn.training.events` builds the tonic dataset (layout checks, transforms); this module
reads its samples one by one, bins them into ``uint8`` frames streamed into a ``.npy`` file and
serves them memory-mapped from the cache folder on later runs.

Per sample, before any binning: events are put in time order (:func:`time_sorted`) and events
outside the sensor are refused (:class:`InSensor`: one line naming the file and the range; a
negative coordinate would otherwise be wrapped into the frame by numpy's indexing). DVS Gesture's
``.npy`` arrays and SHD's spike rows are checked as stored, before tonic casts them
(:func:`check_dvs_array`, :func:`check_shd_row`): a polarity other than 0/1 (tonic's bool cast put
-1/1 events all in the ON channel), NaN/Inf times (cast to the most negative integer: every event
in the first bin), fractional coordinates or units (truncated), coordinates that wrap in int16 and
millisecond times that overflow their type when tonic converts them to microseconds (float16 and
int8/uint8 included). Frames are tonic's ``ToFrame`` counts, counted again in ``int64`` for a sample
where some pixel holds 32,768 events or more (tonic's ``int16`` counts wrapped: :class:`CountFrames`).

Samples that give all-zero frames are binned, not refused: a sample with no events at all (a
0-byte N-MNIST ``.bin``, an empty DVS Gesture array, an empty SHD row) and one whose events span
fewer than T time units (tonic's ``ToFrame(n_time_bins=T)`` then has zero-width bins and drops
every event). One log line gives their count and the first such file, so a broken extraction
shows; training on silence is allowed because one unreadable recording should not block the
rest. A split in which *every* sample is all-zero is refused. The log line is written when the
split is binned (a run served from the cache does not repeat it).

The cache key covers each source file's path, size, modification time and status-change time
(``st_ctime_ns``): ctime changes on any write to the file, even one whose mtime is put back
(``touch -r``, ``os.utime``), so in-place edits are binned again. The cost: copying or extracting
the dataset anew (new ctimes) bins it once more.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..atomic import atomic_fill
from ..errors import UsageError, first_line
from .data import Split

__all__ = ["InSensor", "BadEvents", "OutOfSensor", "CountFrames", "check_dvs_array", "check_shd_row", "time_sorted",
           "frame_cache_dir", "load_split"]

_FORMAT = 6  # bump when the frame layout, the binning or the cache key changes (2: events sorted by time,
# empty samples; 3: samples in file-path order; 4: st_ctime_ns in the key, events outside the sensor refused;
# 5: DVS Gesture arrays and SHD rows checked as stored: frames binned from unchecked files are binned again;
# 6: counts of 32768+ per pixel and bin no longer wrap (CountFrames); float16/int8/uint64 DVS arrays refused)

Log = Callable[[str], None]


# ------------------------------------------------------------------------------------- per sample


class BadEvents(ValueError):
    """A sample's events are not what its format holds (the message says what; the caller names the file)."""


class OutOfSensor(BadEvents):
    """A sample holds events outside the sensor (the message gives the range; the caller names the file)."""


def _nonfinite(name: str, v: np.ndarray) -> None:
    if v.dtype.kind == "f" and v.size and not bool(np.isfinite(v).all()):
        raise BadEvents(f"{int(np.count_nonzero(~np.isfinite(v)))} events with a NaN or Inf {name}")


def _fractional(name: str, v: np.ndarray) -> None:
    if v.dtype.kind == "f" and v.size and bool((v != np.round(v)).any()):
        raise BadEvents(f"{int(np.count_nonzero(v != np.round(v)))} events with a fractional {name} (tonic would "
                        "truncate it); expected whole numbers")


def _in_range(name: str, v: np.ndarray, size: int, hint: str = "", what: str = "the sensor's ") -> None:
    lo, hi = v.min(), v.max()
    if lo < 0 or hi >= size:
        n = int(np.count_nonzero((v < 0) | (v >= size)))
        raise BadEvents(f"{n} events with {name} outside {what}0..{size - 1} ({name} spans {lo:g}..{hi:g}){hint}")


def check_dvs_array(a: np.ndarray, sensor_size: Sequence[int]) -> None:
    """One DVS Gesture sample as stored: ``[N, 4]`` numbers, columns x, y, polarity (0 = OFF, 1 = ON), t
    in ms. Checked before tonic casts x/y to int16, p to bool and t (times 1000, in the array's own
    dtype) to int64, each of which would silently change the events."""
    if not isinstance(a, np.ndarray):  # np.load gives an NpzFile for a .npz archive under a .npy name
        raise BadEvents("an .npz archive, not one .npy array; expected [N, 4] numbers (x, y, polarity, t in ms) "
                        "saved with np.save")
    if a.ndim != 2 or a.shape[1] != 4 or a.dtype.kind not in "iuf":
        raise BadEvents(f"an array of {a.dtype} and shape {list(a.shape)}; expected [N, 4] numbers "
                        "(x, y, polarity, t in ms)")
    if a.dtype.kind in "iu" and np.iinfo(a.dtype).max < 1000:  # tonic's `t *= 1000` raised OverflowError, empty or not
        raise BadEvents(f"an array of {a.dtype}: tonic converts its times to microseconds (x 1000) in the array's "
                        "own dtype, which cannot hold 1000; save the array as int64 or float64")
    if not len(a):
        return
    for col, name in enumerate(("x", "y", "polarity", "t")):
        _nonfinite(name, a[:, col])
    for col, name in enumerate(("x", "y", "polarity")):
        _fractional(name, a[:, col])
    _in_range("x", a[:, 0], int(sensor_size[0]))
    _in_range("y", a[:, 1], int(sensor_size[1]))
    _in_range("polarity", a[:, 2], 2, "; expected 0 (OFF) or 1 (ON): store -1/1 polarities as 0/1", what="")
    # tonic multiplies t by 1000 in the array's own dtype, then casts to int64: both must hold the product
    # (float16 times over 65 ms became inf, then the most negative int64; uint64 beyond int64 wrapped negative)
    t = a[:, 3]
    int64_top = np.iinfo(np.int64).max // 1000
    if a.dtype.kind in "iu":
        top = min(int(np.iinfo(a.dtype).max) // 1000, int64_top)
    else:
        top = min(float(np.finfo(a.dtype).max) / 1000, int64_top)
    bottom = -top if a.dtype.kind != "u" else 0
    if t.max() > top or t.min() < bottom:
        narrow = a.dtype if top < int64_top else "int64"
        raise BadEvents(f"times {t.min():g}..{t.max():g} ms overflow {narrow} when tonic converts them to "
                        "microseconds (x 1000); save the array as int64 or float64")


def check_shd_row(times: np.ndarray, units: np.ndarray, channels: int) -> None:
    """One SHD sample as stored: ``times [N]`` and ``units [N]`` (one unit per spike); finite spike times
    in seconds (tonic casts times x 1e6 to int64: NaN became the most negative integer) and whole unit
    numbers 0..channels-1 (tonic casts them to int)."""
    times, units = np.asarray(times), np.asarray(units)
    if times.shape != units.shape:  # tonic broadcasts a single unit to every spike: a silent misread
        raise BadEvents(f"{times.size} spike times but {units.size} units; the file's rows must pair one unit "
                        "with each spike time")
    _nonfinite("time", times)
    if times.size and float(np.abs(times.astype(np.float64)).max()) * 1e6 >= 2.0 ** 63:
        raise BadEvents(f"spike times up to {float(np.abs(times).max()):g} s; tonic converts them to int64 "
                        "microseconds")
    _nonfinite("unit", units)
    _fractional("unit", units)
    if units.size:
        _in_range("unit", units, channels)


class InSensor:
    """A tonic transform step that refuses events outside the sensor: ``0 <= x < width`` (and
    ``0 <= y < height`` when the events have a ``y``). Vectorised: a min and a max per field."""

    def __init__(self, sensor_size: Sequence[int], names: Tuple[str, str] = ("x", "y")) -> None:
        self.bounds = {"x": int(sensor_size[0]), "y": int(sensor_size[1])}
        self.names = dict(zip(("x", "y"), names))

    def __call__(self, events: np.ndarray) -> np.ndarray:
        """``events`` (a structured array ``[N]``) unchanged, or :class:`OutOfSensor` naming the counts."""
        if events.dtype.names is None or events.size == 0:
            return events
        bad = []
        for field, size in self.bounds.items():
            if field not in events.dtype.names:
                continue
            v = events[field]
            lo, hi = v.min(), v.max()
            if lo < 0 or hi >= size:
                n = int(np.count_nonzero((v < 0) | (v >= size)))
                name = self.names[field]
                bad.append(f"{n} events with {name} outside the sensor's 0..{size - 1} ({name} spans {lo}..{hi})")
        if bad:
            raise OutOfSensor("; ".join(bad))
        return events


def time_sorted(events: np.ndarray) -> np.ndarray:
    """``events`` (a structured array ``[N]`` with a ``t`` field) in time order (a stable sort, only when
    they are not already)."""
    if events.dtype.names and "t" in events.dtype.names and events.size > 1:
        t = events["t"]
        if bool((t[1:] < t[:-1]).any()):
            return events[np.argsort(t, kind="stable")]
    return events


class CountFrames:
    """tonic's ``ToFrame(sensor_size, n_time_bins=T)`` with counts that do not wrap: tonic counts in
    ``int16``, so a pixel with 65,536 + k events in one bin came out as k (and one with 32,768 or
    more as a negative number). Where some pixel holds 32,768 events or more in the whole sample,
    that sample is counted again over tonic's own time bins (:func:`tonic.slicers.slice_events_by_time_bins`)
    in ``int64``; every other sample gets tonic's frames as they are. The binning then saturates
    counts at 255.

    tonic's bins are ``(t_last - t0) // T`` time units wide from the first event's time ``t0``: the
    events at ``t0 + T x width`` and later (always the sample's last one) fall in no bin.
    ``events_in`` / ``events_counted`` add up, over every call, the events given and those in the
    frames, so the binning can say how many were left out."""

    _LIMIT = 32768  # int16: the first count tonic's frames cannot hold

    def __init__(self, sensor_size: Sequence[int], n_time_bins: int) -> None:
        import tonic.transforms as tt

        self.sensor_size, self.n_time_bins = tuple(int(v) for v in sensor_size), int(n_time_bins)
        self.to_frame = tt.ToFrame(sensor_size=self.sensor_size, n_time_bins=self.n_time_bins)
        self.events_in = self.events_counted = 0

    def __call__(self, events: np.ndarray) -> np.ndarray:
        """Event counts ``[n_time_bins, polarities, H, W]`` (``[n_time_bins, polarities, W]`` without ``y``: SHD)
        for one sample's ``events`` (a structured array ``[N]``), as tonic's ``ToFrame``."""
        frames = self._frames(events)
        self.events_in += len(events)
        if frames.dtype.names is None:  # (no events: tonic hands the empty array back)
            self.events_counted += int(frames.sum(dtype=np.int64))
        return frames

    def _index(self, events: np.ndarray) -> Tuple[Tuple[np.ndarray, ...], Tuple[int, ...]]:
        """Each event's (polarity, [y,] x) index into one frame, and the frame's shape (as tonic lays it out)."""
        w, h, pol = self.sensor_size
        p = np.zeros(len(events), np.int64) if pol == 1 else events["p"].astype(np.int64)  # tonic: one polarity -> 0
        if "y" in events.dtype.names:
            return (p, events["y"].astype(np.int64), events["x"].astype(np.int64)), (pol, h, w)
        return (p, events["x"].astype(np.int64)), (pol, w)

    def _frames(self, events: np.ndarray) -> np.ndarray:
        """tonic's frames, counted again in ``int64`` where a pixel reaches ``int16``'s limit."""
        frames = self.to_frame(events)
        if len(events) < self._LIMIT or frames.dtype.kind not in "iu":
            return frames
        index, shape = self._index(events)
        if int(np.bincount(np.ravel_multi_index(index, shape), minlength=int(np.prod(shape))).max()) < self._LIMIT:
            return frames  # no pixel reaches int16's limit even over the whole sample: tonic's counts are exact
        from tonic.slicers import slice_events_by_time_bins

        exact = np.zeros(frames.shape, np.int64)
        for i, part in enumerate(slice_events_by_time_bins(events, self.n_time_bins)):
            if len(part):
                idx, _ = self._index(part)
                np.add.at(exact, (i, *idx), 1)
        return exact


def _sources(tonic_ds) -> List[str]:
    """The files a tonic dataset reads (for the cache key and the messages)."""
    files = list(getattr(tonic_ds, "data", []) or [])
    if not files or not isinstance(files[0], (str, os.PathLike)):  # SHD: one HDF5 file
        files = [os.path.join(tonic_ds.location_on_system, tonic_ds.data_filename)]
    return [str(f) for f in files]


def _where(tonic_ds, i: int) -> str:
    """Sample ``i``'s file (N-MNIST, DVS Gesture), or the HDF5 file and the row (SHD)."""
    files = getattr(tonic_ds, "data", None)
    if isinstance(files, list) and i < len(files) and isinstance(files[i], (str, os.PathLike)):
        return str(files[i])
    try:
        return f"{_sources(tonic_ds)[0]} sample {i}"
    except (AttributeError, TypeError):
        return f"sample {i}"


def _sample(tonic_ds, i: int, label: str):
    """Sample ``i`` of a tonic dataset; a file it cannot read is a one-line error naming the file."""
    try:
        return tonic_ds[i]
    except BadEvents as exc:
        raise ValueError(f"data: {label}: {_where(tonic_ds, i)}: {exc}; remove or replace it") from None
    except (ValueError, OSError, IndexError, EOFError, KeyError) as exc:
        raise ValueError(f"data: {label}: cannot read {_where(tonic_ds, i)} ({first_line(exc, 100)}); a truncated or "
                         "foreign file? remove or replace it") from None


def _is_empty_sample(frames: np.ndarray) -> bool:
    """A sample with no events: tonic hands its (empty, structured) event array back untransformed."""
    return frames.dtype.names is not None or frames.size == 0


# ------------------------------------------------------------------------------------------- cache


def _unwritable(folder: Path) -> Optional[str]:
    """Why ``folder`` cannot take the frame cache (created if missing), or None when it can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
        return None
    except OSError as exc:
        return exc.strerror or first_line(exc, 80)


def frame_cache_dir(save_to: Path, dataset: Optional[Path] = None) -> Path:
    """The frame cache folder: ``$EDGESNN_FRAME_CACHE`` when set (``~`` expanded; it must be a
    writable folder outside ``dataset``, the folder tonic reads, or a one-line error names the
    variable), else ``<save_to>/.edgesnn-frames`` when writable, else ``~/.cache/edgesnn/frames``;
    neither writable is a one-line :class:`~edgesnn.errors.UsageError`."""
    env = os.environ.get("EDGESNN_FRAME_CACHE")
    if env:
        if dataset is not None:  # checked before the folder is made: cached .npy files there became "samples"
            inside, data = Path(os.path.realpath(Path(env).expanduser())), Path(os.path.realpath(dataset))
            if inside == data or data in inside.parents:
                raise UsageError(f"EDGESNN_FRAME_CACHE: {env} is inside the dataset folder {dataset} (tonic would "
                                 "take the cached frames for samples); point it at a folder outside it")
        why = _unwritable(Path(env).expanduser())
        if why:
            raise UsageError(f"EDGESNN_FRAME_CACHE: {env} is not a writable folder for the frame cache ({why}); "
                             "point it at one or unset it")
        return Path(env).expanduser()
    candidates = [save_to / ".edgesnn-frames"]
    try:
        candidates.append(Path.home() / ".cache" / "edgesnn" / "frames")
    except RuntimeError:  # no home folder
        pass
    for c in candidates:
        if _unwritable(c) is None:
            return c
    raise UsageError(f"data: no writable folder for the frame cache (tried {', '.join(map(str, candidates))}); "
                     "set EDGESNN_FRAME_CACHE to one")


def _cache_key(parts: list, files: List[str], root: Path) -> str:
    """Hash of ``parts`` (format, dataset, split, T, transform, tonic version) and every source
    file's relative path, size, mtime and ctime."""
    h = hashlib.sha256()
    h.update(json.dumps([_FORMAT, *parts]).encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.relpath(f, root)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\n".encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------- binning


def _first_frames(tonic_ds, label: str):
    """``(index, frames, target)`` of the first sample with events (it gives the frame shape)."""
    n = len(tonic_ds)
    for j in range(n):
        frames, target = _sample(tonic_ds, j, label)
        frames = np.asarray(frames)
        if not _is_empty_sample(frames):
            return j, frames, target
    raise ValueError(f"data: {label}: none of the {n} samples holds an event (first: {_where(tonic_ds, 0)})")


def _log_blank(tonic_ds, blank: List[int], n: int, steps: int, log: Log, label: str) -> None:
    """One line for samples binned as all-zero frames; refuse a split that is all of them."""
    if not blank:
        return
    what = f"no events or a time span shorter than T={steps} steps (all-zero frames)"
    if len(blank) == n:
        raise ValueError(f"data: {label}: all {n} samples have {what}, e.g. {_where(tonic_ds, blank[0])}")
    log(f"  {label}: {len(blank)} of {n} samples have {what}: {_where(tonic_ds, blank[0])}")


def _frame_counter(tonic_ds) -> Optional[CountFrames]:
    """The :class:`CountFrames` of the dataset's transform (its counters reset), if it has one."""
    steps = getattr(getattr(tonic_ds, "transform", None), "transforms", None) or []
    counter = next((s for s in steps if isinstance(s, CountFrames)), None)
    if counter is not None:
        counter.events_in = counter.events_counted = 0
    return counter


def _log_left_out(counter: Optional[CountFrames], steps: int, log: Log, label: str) -> None:
    """One line for the events tonic's time bins left out (see :class:`CountFrames`)."""
    if counter is None or counter.events_in <= counter.events_counted:
        return
    left = counter.events_in - counter.events_counted
    log(f"  {label}: {left} of {counter.events_in} events ({100 * left / counter.events_in:.2g}%) are in no frame: "
        f"tonic's T={steps} time bins are (t_last - t0) // T wide, so each sample's last event(s) fall after "
        "the last bin")


def _bin_split(tonic_ds, out: Path, log: Log, label: str) -> Tuple[np.ndarray, int]:
    """Bin every sample into frames, streamed into ``out`` (temp file + rename). Returns labels, saturated count."""
    n = len(tonic_ds)
    if n == 0:
        raise FileNotFoundError(f"data: {label}: tonic found no samples")
    counter = _frame_counter(tonic_ds)  # (the samples _first_frames reads before the first with events have none)
    j, first, first_target = _first_frames(tonic_ds, label)
    shape = (n,) + tuple(first.shape)
    labels = np.empty(n, dtype=np.int64)
    saturated, blank = 0, []
    t0 = time.perf_counter()

    def fill(tmp: Path) -> None:
        nonlocal saturated
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        for i in range(n):
            frames, target = (first, first_target) if i == j else _sample(tonic_ds, i, label)
            frames = np.asarray(frames)
            if _is_empty_sample(frames):
                frames = np.zeros(shape[1:], dtype=np.uint8)  # no events: all-zero frames
            if frames.shape != shape[1:]:
                raise ValueError(f"data: {label}: {_where(tonic_ds, i)} gave frames {frames.shape}, "
                                 f"the first gave {shape[1:]}")
            if not frames.any():
                blank.append(i)
            over = (frames > 255) | (frames < 0)  # tonic counts in int16: beyond 32767 the count wraps negative
            saturated += int(over.sum())
            mm[i] = np.where(over, 255, frames).astype(np.uint8)
            labels[i] = int(np.asarray(target))
            if (i + 1) % 5000 == 0:
                log(f"  {label}: {i + 1}/{n} samples binned ({time.perf_counter() - t0:.0f} s)")
        _log_blank(tonic_ds, blank, n, shape[1], log, label)
        _log_left_out(counter, shape[1], log, label)
        mm.flush()
        del mm

    atomic_fill(out, fill)  # a killed binning's temp file (GBs for N-MNIST) goes with the next binning
    return labels, saturated


def load_split(tonic_ds: Any, name: str, split: str, timesteps: int, transform: list, num_classes: int,
               save_to: Path, cache: Path, log: Log) -> Split:
    """Split ``split`` (``"train"``, ``"test"``) of dataset ``name`` as ``events=True`` frames from
    the cache folder ``cache``, binned first when its entry is missing.

    ``transform``: what else decides the frames (sensor size, spatial factor, tonic's version);
    it goes into the cache key with the source files (paths relative to ``save_to``).
    """
    from ..atomic import atomic_write

    label = f"{name} {split}"
    key = _cache_key([name, split, timesteps, *transform], _sources(tonic_ds), save_to)
    stem = f"{name}-{split}-T{timesteps}-{key}"
    frames_path, labels_path = cache / f"{stem}.frames.npy", cache / f"{stem}.labels.npy"
    if not (frames_path.is_file() and labels_path.is_file()):
        log(f"binning {label} ({len(tonic_ds)} samples) into T={timesteps} frames once; cached in {cache}")
        labels, saturated = _bin_split(tonic_ds, frames_path, log, label)
        if saturated:
            log(f"  {label}: {saturated} frame values above 255 events saturated at 255")
        atomic_write(labels_path, lambda fh: np.save(fh, labels))  # written last: marks the cache entry complete
    try:
        frames = np.load(frames_path, mmap_mode="r")
        labels = np.load(labels_path)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"data: frame cache {frames_path} is unreadable ({first_line(exc, 80)}); "
                         "delete it (and its .labels.npy) to rebuild") from None
    if frames.shape[0] != labels.shape[0] or frames.shape[1] != timesteps:
        raise ValueError(f"data: frame cache {frames_path} does not match its labels; delete it to rebuild")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"data: {label}: labels outside 0..{num_classes - 1} ({labels.min()}..{labels.max()})")
    with warnings.catch_warnings():  # read-only memory map: the training loop never writes to it
        warnings.simplefilter("ignore", UserWarning)
        x = torch.from_numpy(frames)
    return Split(x, torch.from_numpy(labels), events=True)
