"""Neuromorphic datasets through tonic: N-MNIST, DVS Gesture and SHD, binned into T frames.

``edgesnn train --dataset nmnist|dvsgesture|shd --data-dir DIR -T 8``

``DIR`` is the folder handed to tonic as ``save_to``; tonic reads each dataset from a sub-folder
named after its class, in the dataset's own on-disk format (``DIR`` may also be that sub-folder):

=============  ==============================================================================
dataset        files tonic reads
=============  ==============================================================================
``nmnist``     ``DIR/NMNIST/Train/<digit>/*.bin`` and ``DIR/NMNIST/Test/<digit>/*.bin``: N-MNIST's
               5-byte event records (unzipped ``train.zip`` / ``test.zip``); 10 classes.
``dvsgesture`` ``DIR/DVSGesture/ibmGestureTrain/user<NN>_<lighting>/<label>.npy`` (and
               ``ibmGestureTest``): tonic's pre-processed DVS Gesture, one ``[N, 4]`` array
               (x, y, p, t in ms) per sample, named by its label 0-10; 11 classes.
``shd``        ``DIR/SHD/shd_train.h5`` and ``DIR/SHD/shd_test.h5``: HDF5 with ``spikes/times``,
               ``spikes/units``, ``labels`` and ``extra/keys``, ``extra/speaker``; 20 classes.
=============  ==============================================================================

Nothing is downloaded: tonic's own download is switched off (a missing or partial folder is a
one-line error naming what is missing and where tonic expects it). Events go through tonic's
readers and transforms (:class:`tonic.transforms.ToFrame` with ``n_time_bins=T``; DVS Gesture is
first reduced to 32x32 with :class:`tonic.transforms.Downsample`). Frames hold event counts per
pixel (or channel), polarity and time bin, saturated at 255 and stored as ``uint8``.

Frames are computed once per (dataset, split, T, source files) and cached as ``.npy`` files
(written to a temp file and renamed: atomic), by default in ``DIR/.edgesnn-frames`` (or
``~/.cache/edgesnn/frames`` when ``DIR`` is read-only; ``$EDGESNN_FRAME_CACHE`` overrides).
Cached frames are memory-mapped, so data-parallel ranks on one node share one copy in the page
cache. The cache key covers the list of source files with their sizes and modification times,
the transform and tonic's version, so an edited dataset is binned again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

from ..errors import DependencyError, first_line
from .data import Dataset, Split

__all__ = ["EVENT_SPECS", "EventSpec", "check_layout", "load_event_dataset", "frame_cache_dir", "tonic_dataset"]

_FORMAT = 3  # bump when the frame layout or the binning changes (2: events sorted by time, empty samples;
# 3: samples in file-path order)


@dataclass(frozen=True)
class EventSpec:
    name: str            # --dataset value
    tonic_class: str     # tonic.datasets.<class>; also the sub-folder tonic reads
    num_classes: int
    sensor_size: Tuple[int, int, int]  # after the spatial reduction (x, y, polarity) / (units, 1, 1)
    spatial_factor: float = 1.0
    layout: str = ""     # for the error messages


EVENT_SPECS = {
    "nmnist": EventSpec("nmnist", "NMNIST", 10, (34, 34, 2), 1.0,
                        "DIR/NMNIST/Train/<digit 0-9>/*.bin and DIR/NMNIST/Test/<digit 0-9>/*.bin (unzipped train.zip/test.zip)"),
    "dvsgesture": EventSpec("dvsgesture", "DVSGesture", 11, (32, 32, 2), 0.25,
                            "DIR/DVSGesture/ibmGestureTrain/user<NN>_<lighting>/<label>.npy and .../ibmGestureTest/... "
                            "(tonic's ibmGestureTrain.tar.gz/ibmGestureTest.tar.gz, extracted)"),
    "shd": EventSpec("shd", "SHD", 20, (700, 1, 1), 1.0,
                     "DIR/SHD/shd_train.h5 and DIR/SHD/shd_test.h5 (unzipped shd_train.h5.zip/shd_test.h5.zip)"),
}

_SHD_KEYS = ("spikes/times", "spikes/units", "labels", "extra/keys", "extra/speaker")


def _require_tonic():
    try:
        import tonic  # noqa: F401
    except ImportError:
        raise DependencyError("data: event datasets are read with tonic: pip install 'edgesnn[data]' (tonic 1.7)") from None
    return tonic


# ------------------------------------------------------------------------------------------- layout


def _save_to(spec: EventSpec, data_dir: Optional[str]) -> Path:
    """The ``save_to`` folder for tonic (DIR, or the parent when DIR is the dataset's own folder)."""
    if not data_dir:
        raise FileNotFoundError(f"data: --dataset {spec.name} needs --data-dir DIR with {spec.layout}; nothing is downloaded")
    d = Path(data_dir).expanduser()
    if not d.is_dir():
        raise FileNotFoundError(f"data: --data-dir {data_dir} is not a folder (tonic expects {spec.layout})")
    if d.name == spec.tonic_class and not (d / spec.tonic_class).is_dir():
        return d.parent
    return d


def _missing(spec: EventSpec, what: Path, why: str = "missing") -> FileNotFoundError:
    return FileNotFoundError(f"data: {spec.name}: {why} {what} (tonic expects {spec.layout})")


def _check_nmnist(spec: EventSpec, root: Path) -> None:
    for split in ("Train", "Test"):
        folder = root / split
        if not folder.is_dir():
            raise _missing(spec, folder)
        empty = [str(d) for d in range(10) if not any((folder / str(d)).glob("*.bin"))]
        if empty:
            raise _missing(spec, folder, f"no .bin files for digit(s) {', '.join(empty)} in")


_USER = re.compile(r"user\d+_.+")


def _check_dvsgesture(spec: EventSpec, root: Path) -> None:
    for split in ("ibmGestureTrain", "ibmGestureTest"):
        folder = root / split
        if not folder.is_dir():
            raise _missing(spec, folder)
        subs = sorted(p for p in folder.iterdir() if p.is_dir())
        bad = [p.name for p in subs if not _USER.fullmatch(p.name)]
        if bad:
            raise _missing(spec, folder / bad[0], "unexpected folder (tonic reads only user<NN>_<lighting> folders)")
        files = [f for p in subs for f in p.glob("*.npy")]
        if not files:
            raise _missing(spec, folder, "no user<NN>_<lighting>/<label>.npy files in")
        for f in files:
            if not f.stem.isdigit() or not 0 <= int(f.stem) < spec.num_classes:
                raise _missing(spec, f, f"a sample whose name is not a label 0-{spec.num_classes - 1}:")


def _check_shd(spec: EventSpec, root: Path) -> None:
    import h5py

    for name in ("shd_train.h5", "shd_test.h5"):
        path = root / name
        if not path.is_file():
            raise _missing(spec, path)
        try:
            with h5py.File(path, "r") as f:
                absent = [k for k in _SHD_KEYS if k not in f]
                if absent:
                    raise _missing(spec, path, f"no {', '.join(absent)} in")
                n = {k: len(f[k]) for k in ("spikes/times", "spikes/units", "labels")}
        except OSError as exc:
            raise _missing(spec, path, f"unreadable HDF5 ({first_line(exc, 1000)}; a partial download?):") from None
        if len(set(n.values())) != 1:
            raise _missing(spec, path, f"inconsistent lengths {n} in")


def check_layout(name: str, data_dir: Optional[str]) -> Path:
    """Check that ``data_dir`` holds ``name`` as tonic expects it; returns tonic's ``save_to`` folder.

    Raises ``FileNotFoundError`` with one line naming what is missing and where tonic looks.
    """
    spec = EVENT_SPECS[name]
    save_to = _save_to(spec, data_dir)
    root = save_to / spec.tonic_class
    if not root.is_dir():
        raise _missing(spec, root)
    {"nmnist": _check_nmnist, "dvsgesture": _check_dvsgesture, "shd": _check_shd}[name](spec, root)
    return save_to


# ------------------------------------------------------------------------------------------- tonic


def tonic_dataset(name: str, save_to, train: bool, timesteps: int):
    """tonic's dataset class for ``name`` with its download switched off, binning into ``timesteps`` frames.

    Reads exactly what tonic reads (its file walk, readers and transforms); only tonic's
    "is the archive there" check is replaced by :func:`check_layout` (tonic wants the downloaded
    archive and, for N-MNIST, at least 10,000 files before it will read a folder).
    """
    tonic = _require_tonic()
    import tonic.transforms as tt

    spec = EVENT_SPECS[name]
    base = getattr(tonic.datasets, spec.tonic_class)

    def download(self):  # pragma: no cover - check_layout runs first
        raise FileNotFoundError(f"data: {name}: files missing under {self.location_on_system}; edgesnn never downloads "
                                f"(tonic expects {spec.layout})")

    # same class name: tonic reads from save_to/<class name>
    local = type(spec.tonic_class, (base,), {"_check_exists": lambda self: True, "download": download})
    steps = [_time_sorted]  # tonic's time bins assume sorted timestamps (unsorted events were dropped)
    if spec.spatial_factor != 1.0:
        steps.append(tt.Downsample(spatial_factor=spec.spatial_factor))
    steps.append(tt.ToFrame(sensor_size=spec.sensor_size, n_time_bins=timesteps))
    ds = local(str(save_to), train=train, transform=tt.Compose(steps))
    _sort_by_file(ds)
    return ds


def _sort_by_file(tonic_ds) -> None:
    """Put a file-per-sample dataset (N-MNIST, DVS Gesture) in path order, labels alongside: tonic
    lists them in ``os.walk`` order, which depends on the filesystem, so the same ``--seed`` would
    train on another order on another machine."""
    files, targets = getattr(tonic_ds, "data", None), getattr(tonic_ds, "targets", None)
    if not isinstance(files, list) or not files or not isinstance(files[0], (str, os.PathLike)):
        return  # SHD: one HDF5 file, indexed in its own order
    if not isinstance(targets, list) or len(targets) != len(files):
        return
    order = sorted(range(len(files)), key=lambda i: str(files[i]))
    tonic_ds.data = [files[i] for i in order]
    tonic_ds.targets = [targets[i] for i in order]


def _sample(tonic_ds, i: int, label: str):
    """Sample ``i`` of a tonic dataset; a file it cannot read is a one-line error naming the file."""
    try:
        return tonic_ds[i]
    except (ValueError, OSError, IndexError, EOFError, KeyError) as exc:
        files = getattr(tonic_ds, "data", None)
        where = f"{files[i]}" if isinstance(files, list) and i < len(files) else f"sample {i}"
        raise ValueError(f"data: {label}: cannot read {where} ({first_line(exc, 100)}); a truncated or foreign file? "
                         "remove or replace it") from None


def _time_sorted(events: np.ndarray) -> np.ndarray:
    """``events`` in time order (a stable sort, only when they are not already)."""
    if events.dtype.names and "t" in events.dtype.names and events.size > 1:
        t = events["t"]
        if bool((t[1:] < t[:-1]).any()):
            return events[np.argsort(t, kind="stable")]
    return events


def _is_empty_sample(frames: np.ndarray) -> bool:
    """A sample with no events: tonic hands its (empty, structured) event array back untransformed."""
    return frames.dtype.names is not None or frames.size == 0


# ------------------------------------------------------------------------------------------- cache


def frame_cache_dir(save_to: Path) -> Path:
    """``$EDGESNN_FRAME_CACHE``, else ``<save_to>/.edgesnn-frames`` when writable, else ``~/.cache/edgesnn/frames``."""
    env = os.environ.get("EDGESNN_FRAME_CACHE")
    candidates = [Path(env)] if env else []
    candidates += [save_to / ".edgesnn-frames", Path.home() / ".cache" / "edgesnn" / "frames"]
    for c in candidates:
        try:
            c.mkdir(parents=True, exist_ok=True)
            probe = c / f".write-test-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
            return c
        except OSError:
            continue
    raise PermissionError(f"data: no writable folder for the frame cache (tried {', '.join(map(str, candidates))}); "
                          "set EDGESNN_FRAME_CACHE")


def _sources(tonic_ds) -> List[str]:
    """The files a tonic dataset reads (for the cache key)."""
    files = list(getattr(tonic_ds, "data", []) or [])
    if not files or not isinstance(files[0], (str, os.PathLike)):  # SHD: one HDF5 file
        files = [os.path.join(tonic_ds.location_on_system, tonic_ds.data_filename)]
    return [str(f) for f in files]


def _cache_key(name: str, split: str, timesteps: int, files: List[str], root: Path) -> str:
    import tonic

    h = hashlib.sha256()
    spec = EVENT_SPECS[name]
    h.update(json.dumps([_FORMAT, name, split, timesteps, spec.sensor_size, spec.spatial_factor, tonic.__version__]).encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.relpath(f, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _bin_split(tonic_ds, out: Path, log: Callable[[str], None], label: str) -> Tuple[np.ndarray, int]:
    """Bin every sample into frames, streamed into ``out`` (temp file + rename). Returns labels, saturated count."""
    n = len(tonic_ds)
    if n == 0:
        raise FileNotFoundError(f"data: {label}: tonic found no samples")
    first, first_target, j = None, None, 0
    while first is None or _is_empty_sample(first):  # the frame shape of the first sample with events
        if j == n:
            raise ValueError(f"data: {label}: none of the {n} samples holds an event")
        first, first_target = _sample(tonic_ds, j, label)
        first = np.asarray(first)
        j += 1
    shape = (n,) + tuple(first.shape)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    labels = np.empty(n, dtype=np.int64)
    saturated = 0
    t0 = time.perf_counter()
    try:
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        for i in range(n):
            frames, target = (first, first_target) if i == j - 1 else _sample(tonic_ds, i, label)
            frames = np.asarray(frames)
            if _is_empty_sample(frames):
                frames = np.zeros(shape[1:], dtype=np.uint8)  # no events: all-zero frames
            if frames.shape != shape[1:]:
                raise ValueError(f"data: {label}: sample {i} gave frames {frames.shape}, the first gave {shape[1:]}")
            over = (frames > 255) | (frames < 0)  # tonic counts in int16: beyond 32767 the count wraps negative
            saturated += int(over.sum())
            mm[i] = np.where(over, 255, frames).astype(np.uint8)
            labels[i] = int(np.asarray(target))
            if (i + 1) % 5000 == 0:
                log(f"  {label}: {i + 1}/{n} samples binned ({time.perf_counter() - t0:.0f} s)")
        mm.flush()
        del mm
        os.replace(tmp, out)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    return labels, saturated


def _load_split(name: str, save_to: Path, train: bool, timesteps: int, cache: Path, log: Callable[[str], None]) -> Split:
    from ..atomic import atomic_write

    split = "train" if train else "test"
    ds = tonic_dataset(name, save_to, train, timesteps)
    key = _cache_key(name, split, timesteps, _sources(ds), save_to)
    stem = f"{name}-{split}-T{timesteps}-{key}"
    frames_path, labels_path = cache / f"{stem}.frames.npy", cache / f"{stem}.labels.npy"
    if not (frames_path.is_file() and labels_path.is_file()):
        log(f"binning {name} {split} ({len(ds)} samples) into T={timesteps} frames once; cached in {cache}")
        labels, saturated = _bin_split(ds, frames_path, log, f"{name} {split}")
        if saturated:
            log(f"  {name} {split}: {saturated} frame values above 255 events saturated at 255")
        atomic_write(labels_path, lambda fh: np.save(fh, labels))  # written last: marks the cache entry complete
    try:
        frames = np.load(frames_path, mmap_mode="r")
        labels = np.load(labels_path)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"data: frame cache {frames_path} is unreadable ({first_line(exc, 80)}); "
                         "delete it (and its .labels.npy) to rebuild") from None
    if frames.shape[0] != labels.shape[0] or frames.shape[1] != timesteps:
        raise ValueError(f"data: frame cache {frames_path} does not match its labels; delete it to rebuild")
    spec = EVENT_SPECS[name]
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise ValueError(f"data: {name} {split}: labels outside 0..{spec.num_classes - 1} ({labels.min()}..{labels.max()})")
    with warnings.catch_warnings():  # read-only memory map: the training loop never writes to it
        warnings.simplefilter("ignore", UserWarning)
        x = torch.from_numpy(frames)
    return Split(x, torch.from_numpy(labels), events=True)


def load_event_dataset(name: str, data_dir: Optional[str], timesteps: int, flat: bool = False,
                       log: Optional[Callable[[str], None]] = None) -> Dataset:
    """Load ``name`` (``nmnist``, ``dvsgesture``, ``shd``) from ``data_dir`` as ``T = timesteps`` frames.

    Returns a :class:`Dataset` whose splits are ``events=True``: ``x`` is ``[N, T, C, H, W]``
    (``[N, T, 1, 700]`` for SHD; ``[N, T, features]`` when ``flat``).
    """
    if name not in EVENT_SPECS:
        raise ValueError(f"dataset: unknown event dataset {name!r}; expected one of {tuple(EVENT_SPECS)}")
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"timesteps: expected an integer >= 1, got {timesteps!r}")
    _require_tonic()
    log = log or (lambda msg: None)
    save_to = check_layout(name, data_dir)
    cache = frame_cache_dir(save_to)
    train = _load_split(name, save_to, True, timesteps, cache, log)
    test = _load_split(name, save_to, False, timesteps, cache, log)
    if flat:
        train = Split(train.x.reshape(*train.x.shape[:2], -1), train.y, events=True)
        test = Split(test.x.reshape(*test.x.shape[:2], -1), test.y, events=True)
    return Dataset(name, train, test, EVENT_SPECS[name].num_classes)
