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
pixel (or channel), polarity and time bin, saturated at 255 and stored as ``uint8`` (a sample with
32,768 or more events on one pixel is counted again over tonic's bins in ``int64``: tonic's ``int16``
counts wrapped, 65,541 events became 5; see :class:`~edgesnn.training.event_frames.CountFrames`).
Folders tonic's file walk would misread are refused, naming them: a symlinked N-MNIST digit folder
or DVS Gesture user folder (not followed: its samples were left out), a folder inside a user folder
(its ``.npy`` files read as more samples), a file ending in ``npy`` not named ``<label>.npy``.

Frames are computed once per (dataset, split, T, source files) and cached as ``.npy`` files
(written to a temp file and renamed: atomic), by default in ``DIR/.edgesnn-frames`` (or
``~/.cache/edgesnn/frames`` when ``DIR`` is read-only); ``$EDGESNN_FRAME_CACHE`` overrides, and
when set it must be a writable folder outside ``DIR/<dataset folder>`` (a one-line error names the
variable otherwise).
Cached frames are memory-mapped, so data-parallel ranks on one node share one copy in the page
cache. The cache key covers the list of source files with their sizes, modification and
status-change times (ctime: an in-place edit whose mtime is put back is still seen; a fresh copy
of the dataset is binned once more), the transform and tonic's version, so an edited dataset is
binned again. Events outside the sensor are refused, and so are DVS Gesture arrays and SHD rows that
tonic's casts would change (polarity not 0/1, NaN/Inf times, fractional coordinates, units or labels,
times that overflow, float16 included; int8/uint8 arrays, which cannot hold x 1000), each in one line
naming the file, as is any ``.npy`` that is not one plain array (object arrays: never unpickled;
an ``.npz``); samples that give all-zero frames (no events, or a time span shorter than T) are
binned and counted in one log line: see :mod:`edgesnn.training.event_frames`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

import numpy as np

from ..errors import DependencyError, first_line
from .data import Dataset, Split
from .event_frames import CountFrames, InSensor, check_dvs_array, check_shd_row, frame_cache_dir, load_split, time_sorted

__all__ = ["EVENT_SPECS", "EventSpec", "check_layout", "load_event_dataset", "frame_cache_dir", "tonic_dataset"]


@dataclass(frozen=True)
class EventSpec:
    """One event dataset: its tonic class, class count, frame size after the spatial reduction
    (``spatial_factor``) and the folder layout tonic reads (for messages)."""

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
#: SHD's per-sample arrays: one entry per sample each (same length).
_SHD_ARRAYS = ("spikes/times", "spikes/units", "labels")


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


_DIGITS = frozenset(str(d) for d in range(10))
_LINKED = ("a symlinked folder (tonic's file walk does not follow links: its samples would be left out; link or copy "
           "the whole split folder instead):")


def _check_nmnist_entries(spec: EventSpec, folder: Path) -> None:
    """Only the digit folders 0..9, holding no folders, in ``Train/`` or ``Test/``: tonic labels every
    file ending in ``bin`` by the last character of its folder's path (``Train/13`` would be digit 3,
    ``Train/3 (copy)`` an ``int()`` error naming no file). Files tonic does not read (``README``,
    ``.DS_Store``: no ``bin`` ending) are let be."""
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if not entry.is_dir():
            if entry.name.endswith("bin"):
                raise _missing(spec, Path(entry.path), "a .bin file outside the digit folders (tonic cannot label it):")
            continue
        if entry.is_symlink():  # os.walk lists it but does not go in: a whole digit was left out without a word
            raise _missing(spec, Path(entry.path), _LINKED)
        if entry.name not in _DIGITS:
            raise _missing(spec, Path(entry.path), "unexpected folder (only the digit folders 0-9; tonic would label "
                                                   "its files by the last character of its path):")
        with os.scandir(entry.path) as inner:
            files = sorted(inner, key=lambda e: e.name)
        nested = next((e.path for e in files if e.is_dir()), None)
        if nested is not None:
            raise _missing(spec, Path(nested), "a folder inside a digit folder (tonic would label its files by the "
                                               "last character of its path):")
        # tonic reads whole 5-byte records: one byte over a record was dropped without a word
        cut = next(((e.path, size) for e in files if e.name.endswith("bin") and (size := e.stat().st_size) % 5), None)
        if cut is not None:
            raise ValueError(f"data: {spec.name} {folder.name.lower()}: cannot read {cut[0]} ({cut[1]} bytes: not a "
                             "whole number of 5-byte events); a truncated or foreign file? remove or replace it")


def _check_nmnist(spec: EventSpec, root: Path) -> None:
    for split in ("Train", "Test"):
        folder = root / split
        if not folder.is_dir():
            raise _missing(spec, folder)
        _check_nmnist_entries(spec, folder)
        empty = [str(d) for d in range(10) if not any((folder / str(d)).glob("*.bin"))]
        if empty:
            raise _missing(spec, folder, f"no .bin files for digit(s) {', '.join(empty)} in")


_USER = re.compile(r"user\d+_.+")
_LABEL = re.compile(r"[0-9]+\.npy")


def _check_dvsgesture(spec: EventSpec, root: Path) -> None:
    """What tonic's walk reads: every file ending in ``npy`` in and below ``user<NN>_<lighting>/``,
    labelled ``int(name[:-4])``. So only ``<label>.npy`` files and no folders there (a ``backup/3.npy``
    was one more sample, a ``10npy`` label 1), and no symlinked user folders (not followed: left out)."""
    not_label = f"a sample whose name is not a label 0-{spec.num_classes - 1}:"
    for split in ("ibmGestureTrain", "ibmGestureTest"):
        folder = root / split
        if not folder.is_dir():
            raise _missing(spec, folder)
        subs = sorted(p for p in folder.iterdir() if p.is_dir())
        stray = sorted(folder.glob("*.npy"))
        if stray:  # tonic reads only the user folders: these samples would be left out without a word
            raise _missing(spec, stray[0], "a sample outside the user<NN>_<lighting> folders (tonic does not read it):")
        bad = [p.name for p in subs if not _USER.fullmatch(p.name)]
        if bad:
            raise _missing(spec, folder / bad[0], "unexpected folder (tonic reads only user<NN>_<lighting> folders)")
        linked = next((p for p in subs if p.is_symlink()), None)
        if linked is not None:
            raise _missing(spec, linked, _LINKED)
        files = []
        for sub in subs:
            with os.scandir(sub) as it:
                entries = sorted(it, key=lambda e: e.name)
            for entry in entries:
                path = Path(entry.path)
                if entry.is_dir():
                    raise _missing(spec, path, "a folder inside a user folder (expected only <label>.npy files there; "
                                               "tonic would read the .npy files in it as more samples):")
                if not entry.name.endswith("npy"):
                    continue  # not read by tonic (README, .DS_Store)
                if _LABEL.fullmatch(entry.name) is None or not int(entry.name[:-4]) < spec.num_classes:
                    raise _missing(spec, path, not_label)
                if not entry.is_file():
                    raise _missing(spec, path, "a broken link or not a file:")
                files.append(path)
        if not files:
            raise _missing(spec, folder, "no user<NN>_<lighting>/<label>.npy files in")


def _check_shd(spec: EventSpec, root: Path) -> None:
    import h5py

    for name in ("shd_train.h5", "shd_test.h5"):
        path = root / name
        if not path.is_file():
            raise _missing(spec, path)
        try:
            with h5py.File(path, "r") as f:
                absent = [k for k in _SHD_KEYS if k not in f]
                # one value per sample each: a scalar (0-d) dataset has no len() (h5py's TypeError)
                ndims = {k: getattr(f[k], "ndim", None) for k in _SHD_ARRAYS if k not in absent}
                n = {k: len(f[k]) for k in ndims if ndims[k] != 0}
                labels = f["labels"][()] if "labels" in n else None
        except OSError as exc:
            raise _missing(spec, path, f"unreadable HDF5 ({first_line(exc, 1000)}; a partial download?):") from None
        if absent:  # (raised outside the try: a FileNotFoundError is an OSError, it was wrapped as "unreadable")
            raise _missing(spec, path, f"no {', '.join(absent)} in")
        scalars = [k for k, d in ndims.items() if d == 0]
        if scalars:
            raise _missing(spec, path, f"{scalars[0]!r} is a scalar (one value per sample expected) in")
        if len(set(n.values())) != 1:
            raise _missing(spec, path, f"inconsistent lengths {n} in")
        _check_labels(spec, path, np.asarray(labels))


def _check_labels(spec: EventSpec, path: Path, y: np.ndarray) -> None:
    """SHD's ``labels``: one whole number 0..classes-1 per sample (tonic casts them with ``astype(int)``:
    2.5 became class 2; a 2-D array was a TypeError traceback)."""
    expected = f"expected one whole number 0..{spec.num_classes - 1} per sample"
    if y.ndim != 1 or y.dtype.kind not in "iuf":
        raise ValueError(f"data: {spec.name}: {path}: 'labels' is {y.dtype} of shape {list(y.shape)}; {expected}")
    whole = np.isfinite(y) & (y == np.round(y)) if y.dtype.kind == "f" else np.ones(y.shape, bool)
    bad = ~whole | (y < 0) | (y >= spec.num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"data: {spec.name}: {path}: {int(bad.sum())} labels outside 0..{spec.num_classes - 1} "
                         f"or not whole numbers (sample {i}: {y[i]}); {expected}")


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


def tonic_dataset(name: str, save_to: Path, train: bool, timesteps: int) -> Any:
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

    # same class name: tonic reads from save_to/<class name>; each sample checked as stored, before
    # tonic's casts (DVS Gesture: int16 x/y, bool polarity, ms x 1000; SHD: times x 1e6 to int64)
    members = {"_check_exists": lambda self: True, "download": download}
    if name in _CHECKED_READS:
        members["__getitem__"] = _CHECKED_READS[name](base)
    local = type(spec.tonic_class, (base,), members)
    # events outside the sensor refused first (numpy would wrap a negative coordinate into the frame),
    # then sorted: tonic's time bins assume sorted timestamps (unsorted events were dropped)
    steps = [InSensor(base.sensor_size, ("unit", "y") if name == "shd" else ("x", "y")), time_sorted]
    if spec.spatial_factor != 1.0:
        steps.append(tt.Downsample(spatial_factor=spec.spatial_factor))
    steps.append(CountFrames(spec.sensor_size, timesteps))  # tonic's ToFrame; counts that do not wrap in int16
    try:  # tonic's file walk parses labels out of names: int() errors that name no file
        ds = local(str(save_to), train=train, transform=tt.Compose(steps))
    except (ValueError, IndexError) as exc:
        raise ValueError(f"data: {name}: tonic cannot list the samples under {Path(save_to) / spec.tonic_class} "
                         f"({first_line(exc, 100)}; tonic expects {spec.layout})") from None
    _sort_by_file(ds)
    return ds


def _dvs_read(base):
    def getitem(self, index):
        stored = np.load(self.data[index], mmap_mode="r")  # allow_pickle stays False: object arrays are refused
        try:
            check_dvs_array(stored, base.sensor_size)
        finally:
            if hasattr(stored, "close"):  # an NpzFile (refused) holds its file open
                stored.close()
        return base.__getitem__(self, index)
    return getitem


def _shd_read(base):
    def getitem(self, index):
        import h5py

        with h5py.File(os.path.join(self.location_on_system, self.data_filename), "r") as f:
            check_shd_row(f["spikes/times"][index], f["spikes/units"][index], base.sensor_size[0])
        return base.__getitem__(self, index)
    return getitem


_CHECKED_READS = {"dvsgesture": _dvs_read, "shd": _shd_read}


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


def _load_split(name: str, save_to: Path, train: bool, timesteps: int, cache: Path, log: Callable[[str], None]) -> Split:
    """One split through tonic, binned into the frame cache (or served from it)."""
    import tonic

    spec = EVENT_SPECS[name]
    ds = tonic_dataset(name, save_to, train, timesteps)
    transform = [spec.sensor_size, spec.spatial_factor, tonic.__version__]
    return load_split(ds, name, "train" if train else "test", timesteps, transform, spec.num_classes, save_to, cache, log)


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
    cache = frame_cache_dir(save_to, save_to / EVENT_SPECS[name].tonic_class)
    train, test = (_load_split(name, save_to, split, timesteps, cache, log) for split in (True, False))
    if flat:
        train = Split(train.x.reshape(*train.x.shape[:2], -1), train.y, events=True)
        test = Split(test.x.reshape(*test.x.shape[:2], -1), test.y, events=True)
    return Dataset(name, train, test, EVENT_SPECS[name].num_classes)
