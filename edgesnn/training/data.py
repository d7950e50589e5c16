"""Datasets for training: built-in digits, local image folders, CIFAR-10 (python format) and the
neuromorphic N-MNIST, DVS Gesture and SHD (through tonic; see :mod:`edgesnn.training.events`).

Nothing is downloaded. Every loader returns a :class:`Split`: static images as float32 tensors
scaled to [0, 1], shape ``[N, C, H, W]`` (or ``[N, features]`` when ``flat``); event data as
frames ``[N, T, ...]`` (event counts per time bin, any dtype; ``Split.events`` is true); labels
``int64 [N]``. :meth:`Split.inputs` gives a batch as the model takes it.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple, Union

import numpy as np
import torch

from ..errors import USER_ERRORS, first_line
from ..functional.checks import check_int

__all__ = ["Split", "Dataset", "load_dataset", "load_digits_dataset", "load_cifar10", "load_image_folder", "DATASETS",
           "DIGITS_CLASSES", "CIFAR10_CLASSES"]

DATASETS = ("digits", "cifar10", "folder", "nmnist", "dvsgesture", "shd")
#: datasets of events, binned into T frames (need tonic and ``--data-dir``)
EVENT_DATASETS = ("nmnist", "dvsgesture", "shd")
#: Datasets whose loaders scale every input value to [0, 1] (pixels / 255, digits / 16): an ONNX
#: training export (``onnx-step``, ``onnx-training``) of a model trained on one records that range
#: for the device runner.
UNIT_RANGE_DATASETS = ("digits", "cifar10", "folder")
#: Classes of the built-in static datasets (labels 0..N-1). The source of truth: the loaders below use
#: them, and so does the planner (:data:`edgesnn.planner.datasets.DATASET_SPECS`); the event datasets'
#: counts are in :data:`edgesnn.training.events.EVENT_SPECS`.
DIGITS_CLASSES = 10
CIFAR10_CLASSES = 10


@dataclass
class Split:
    """Inputs ``x`` and labels ``y`` of one split.

    ``events=False``: ``x`` is ``[N, ...]`` (one static sample each; the model repeats it over T).
    ``events=True``: ``x`` is ``[N, T, ...]`` frames (counts, any dtype, possibly backed by a
    memory-mapped cache file); :meth:`inputs` returns them time-major ``[T, B, ...]`` float32.
    """

    x: torch.Tensor
    y: torch.Tensor
    events: bool = False

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def sample_shape(self) -> Tuple[int, ...]:
        """One sample's shape at one time step (what the model's ``in_shape`` must be)."""
        return tuple(self.x.shape[2:] if self.events else self.x.shape[1:])

    def inputs(self, index: Union[slice, torch.Tensor]) -> torch.Tensor:
        """The model input for samples ``index`` (a slice or an index tensor of ``B`` samples): ``x[index]``
        ``[B, ...]``, or for events the frames time-major as float32 ``[T, B, ...]``."""
        x = self.x[index]
        if not self.events:
            return x
        return x.to(torch.float32).transpose(0, 1).contiguous()


@dataclass
class Dataset:
    """A named dataset: its ``train`` and ``test`` splits and ``num_classes`` (labels ``0..num_classes-1``)."""

    name: str
    train: Split
    test: Split
    num_classes: int

    @property
    def in_shape(self) -> Tuple[int, ...]:
        """One sample's shape at one time step (the train split's :attr:`Split.sample_shape`)."""
        return self.train.sample_shape


def _split_indices(n: int, test_fraction: float, seed: int, source: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` sample indices: one permutation (``seed``), its first ``round(n * test_fraction)``
    for testing. Both parts must be non-empty (an empty test split would report 0% accuracy)."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    if n_test < 1 or n_test >= n:
        raise ValueError(f"data: {source} has {n} samples, too few for a train/test split "
                         f"({n_test} of them would be test samples); add samples")
    return order[n_test:], order[:n_test]


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> Tuple[Split, Split]:
    tr, te = _split_indices(len(y), test_fraction, seed, "the dataset")
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return Split(t(x[tr]), t(y[tr])), Split(t(x[te]), t(y[te]))


#: scikit-learn's digits table: 1,797 rows of 64 pixels (0-16) and the label
_DIGITS_SHAPE = (1797, 65)


def _digits_table() -> np.ndarray:
    """scikit-learn's ``digits.csv.gz`` as ``[1797, 65]`` float64 (64 pixels 0-16, then the label),
    read from scikit-learn's package folder without importing scikit-learn: that import alone added
    ~75 MiB of resident memory to the training process (more than the MLP's whole training step on
    digits), which ``edgesnn plan`` does not count. Where the file is not there or does not read as
    that table, ``sklearn.datasets.load_digits`` gives it (the same values)."""
    spec = importlib.util.find_spec("sklearn")  # (finds the package folder; imports nothing)
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        path = os.path.join(root, "datasets", "data", "digits.csv.gz")
        try:
            with gzip.open(path, "rt") as fh:
                table = np.loadtxt(fh, delimiter=",")
        except (OSError, ValueError, EOFError):
            continue
        if table.shape == _DIGITS_SHAPE:
            return table
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.column_stack([d.data, d.target])


def load_digits_dataset(flat: bool = True, seed: int = 0, test_fraction: float = 0.25) -> Dataset:
    """scikit-learn's 8x8 digits (1,797 real samples, shipped with scikit-learn), 75/25 split."""
    table = _digits_table()
    x = (table[:, :-1] / 16.0).astype(np.float32)
    if not flat:
        x = x.reshape(-1, 1, 8, 8)
    train, test = _split(x, table[:, -1].astype(np.int64), test_fraction, seed)
    return Dataset("digits", train, test, DIGITS_CLASSES)


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"data: CIFAR-10 batch file not found: {path}")
    try:
        fh = open(path, "rb")
    except OSError as exc:  # PermissionError was a traceback
        raise ValueError(f"data: cannot read CIFAR-10 batch file {path} ({exc.strerror or first_line(exc)})") from None
    with fh:
        try:
            return pickle.load(fh, encoding="latin1")
        except Exception as exc:
            raise ValueError(f"data: {path} is not a CIFAR-10 python batch "
                             f"({type(exc).__name__}: {first_line(exc)})") from None


#: values per CIFAR-10 image row: 1024 red, then 1024 green, then 1024 blue (32x32, row-major)
_CIFAR_ROW = 3 * 32 * 32


def _cifar_labels(path: Path, labels) -> np.ndarray:
    """A batch's ``labels`` as int64 ``[N]``: whole numbers 0..9 (one line naming ``path`` otherwise)."""
    y = np.asarray(labels)
    if y.ndim != 1 or y.dtype.kind not in "iuf":
        raise ValueError(f"data: {path}: 'labels' is {y.dtype} of shape {list(y.shape)}; expected a list of "
                         "whole numbers 0..9")
    if y.dtype.kind == "f" and y.size and not bool(np.all(np.isfinite(y) & (y == np.round(y)))):
        bad = y[~(np.isfinite(y) & (y == np.round(y)))][0]
        raise ValueError(f"data: {path}: label {bad} is not a whole number; CIFAR-10 labels are 0..9")
    if y.size and (y.min() < 0 or y.max() > CIFAR10_CLASSES - 1):
        raise ValueError(f"data: {path} has labels {int(y.min())}..{int(y.max())}; CIFAR-10 has 0..9")
    return y.astype(np.int64)


def _cifar_images(path: Path, data) -> np.ndarray:
    """A batch's ``data`` as uint8 ``[N, 3, 32, 32]``: it must be uint8 rows of 3072 channel-major
    values (a float array would be cast to 0/1 images, an HWC ``[N, 32, 32, 3]`` one mix the channels)."""
    try:
        a = data if isinstance(data, np.ndarray) else np.asarray(data)
    except (ValueError, TypeError) as exc:  # ragged rows: numpy's message named no file
        raise ValueError(f"data: {path}: 'data' is not an array ({first_line(exc, 80)}); expected uint8 of shape "
                         f"[N, {_CIFAR_ROW}]") from None
    if a.dtype != np.uint8 or a.ndim != 2 or a.shape[1] != _CIFAR_ROW:
        raise ValueError(f"data: {path}: 'data' is {a.dtype} of shape {list(a.shape)}; expected uint8 of shape "
                         f"[N, {_CIFAR_ROW}] (one row per image: 1024 red, 1024 green, 1024 blue values)")
    return a.reshape(-1, 3, 32, 32)


def _cifar_batch(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch file: uint8 images ``[N, 3, 32, 32]`` and int64 labels ``[N]``,
    checked (keys, dtype and shape, whole labels 0..9, one label per image); one line naming the file."""
    d = _unpickle(path)
    if not isinstance(d, dict) or "data" not in d or "labels" not in d:
        keys = sorted(map(str, d)) if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"data: {path} holds no CIFAR-10 'data' and 'labels' (found {keys}; "
                         "CIFAR-100 batches say 'fine_labels')")
    x, y = _cifar_images(path, d["data"]), _cifar_labels(path, d["labels"])
    if len(x) != len(y):  # one label short would shift every later label by one
        raise ValueError(f"data: {path} has {len(x)} images but {len(y)} labels; expected one label per image "
                         "(a damaged or edited batch)")
    return x, y


def load_cifar10(root: str, flat: bool = False) -> Dataset:
    """CIFAR-10 in torchvision's python format from a local folder (``cifar-10-batches-py``).

    ``root`` may be that folder or its parent (``~`` is expanded). Nothing is downloaded. Every
    batch file is checked (:func:`_cifar_batch`): uint8 ``data`` of shape ``[N, 3072]``, as many
    whole-number labels 0..9; anything else is a one-line error naming the file.
    """
    base = Path(root).expanduser()
    if (base / "cifar-10-batches-py").is_dir():
        base = base / "cifar-10-batches-py"
    if not base.is_dir():
        raise FileNotFoundError(f"data: CIFAR-10 folder not found: {root}" if not base.exists() else
                                f"data: {root} is not a folder; expected the CIFAR-10 folder cifar-10-batches-py "
                                "or its parent")

    def read(names: List[str]) -> Split:
        # uint8 files first, then one float32 array filled in place: the load holds the split once
        # in float32 (as the planner's dataset term counts it) plus its uint8 bytes (a quarter),
        # not a uint8 copy and two float32 ones
        u8s, ys = [], []
        for n in names:
            u8, y = _cifar_batch(base / n)
            u8s.append(u8)
            ys.append(y)
        x = np.empty((sum(len(u) for u in u8s), 3, 32, 32), dtype=np.float32)
        i = 0
        for u in u8s:
            np.divide(u, 255.0, out=x[i:i + len(u)], dtype=np.float32)
            i += len(u)
        del u8s
        if not len(x):  # an empty split failed later as "cannot reshape array of size 0", naming nothing
            raise ValueError(f"data: {base}: {', '.join(names)} {'holds' if len(names) == 1 else 'hold'} no images; "
                             "expected CIFAR-10's batches "
                             "(10000 images each)")
        if flat:
            x = x.reshape(len(x), -1)
        return Split(torch.from_numpy(x), torch.from_numpy(np.concatenate(ys)))

    return Dataset("cifar10", read([f"data_batch_{i}" for i in range(1, 6)]), read(["test_batch"]), CIFAR10_CLASSES)


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def _read_image(path: Path, size: Tuple[int, int]) -> np.ndarray:
    """One image as float32 ``[H, W, 3]`` in 0..1. Integer images deeper than 8 bits (PIL modes
    ``I;16*`` and ``I``, which 16-bit PNGs open as) are scaled by 65535 and float images (``F``)
    taken as 0..1: PIL's RGB conversion would clip them at 255, almost all white. An unreadable
    file is a one-line error naming it (pillow is checked by :func:`load_image_folder`)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                full = 1.0 if im.mode == "F" else 65535.0
                a = np.asarray(im, dtype=np.float64)
                gray = Image.fromarray(np.clip(a / full, 0.0, 1.0).astype(np.float32), mode="F").resize(size)
                # PIL resizes F images with a bicubic filter, which overshoots past 0 and 1 at sharp
                # edges (8-bit images are clamped by their uint8 result): clip to keep values in [0, 1]
                g = np.clip(np.asarray(gray, dtype=np.float32), 0.0, 1.0)
                return np.repeat(g[:, :, None], 3, axis=2)
            return np.asarray(im.convert("RGB").resize(size), dtype=np.float32) / 255.0
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # PIL: UnidentifiedImageError is an OSError; DecompressionBombError (an image claiming more
        # than ~179M pixels) is a plain Exception and was a traceback
        raise ValueError(f"data: {path} is not a readable image ({first_line(exc, 100)})") from None


def _class_images(folder: Path) -> Tuple[List[Path], List[Path]]:
    """``(images, skipped)`` directly in one class folder: files with an image suffix, and the other
    entries (other suffixes such as .tif/.webp/.gif, nested folders) that are not read. Hidden
    entries (macOS's AppleDouble ``._x.png`` beside every image, ``.DS_Store``) are neither."""
    images, skipped = [], []
    for f in sorted(folder.iterdir()):
        if f.name.startswith("."):
            continue
        ok = f.suffix.lower() in _IMAGE_SUFFIXES and not f.is_dir()
        (images if ok else skipped).append(f)
    return images, skipped


def _log_skipped(root: Path, skipped: List[Path], log) -> None:
    """One line: how many entries of the class folders are not read, with an example."""
    if skipped and log is not None:
        first = skipped[0]
        example = f"{first.relative_to(root)}{'/' if first.is_dir() else ''}"
        log(f"data: {root}: skipped {len(skipped)} entries of the class folders (only "
            f"{'/'.join(_IMAGE_SUFFIXES)} files directly inside are read; not sub-folders), e.g. {example}")


def load_image_folder(root: str, size: Tuple[int, int] = (32, 32), flat: bool = False, seed: int = 0,
                      test_fraction: float = 0.25, log: Optional[Callable[[str], None]] = None) -> Dataset:
    """Images in ``root/<class name>/*.png|jpg|jpeg|bmp`` (one folder per class; ``~`` is expanded),
    each resized to ``size`` (width, height; stretched, not cropped) and converted to RGB.

    Other files in the class folders (.tif, .webp, .gif...) and nested sub-folders are not read:
    ``log`` gets one line with their count and an example.
    """
    try:
        import PIL.Image  # noqa: F401 - present? (_read_image reads with it)
    except ImportError:  # pragma: no cover - the `images` extra (and matplotlib, in `dev`) bring pillow
        from ..errors import DependencyError

        raise DependencyError("data: reading image folders needs pillow (pip install 'edgesnn[images]', or pip install "
                              "pillow)") from None
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"data: image folder not found: {root}" if not base.exists() else
                                f"data: {root} is not a folder; expected one sub-folder of images per class")
    # hidden folders (.ipynb_checkpoints, .git) are not classes: they would shift every label
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise ValueError(f"data: {root} must hold one sub-folder per class (found {len(classes)})")
    paths, ys, skipped = [], [], []
    for label, cls in enumerate(classes):
        files, other = _class_images(base / cls)
        if not files:
            raise ValueError(f"data: class folder {base / cls} holds no images ({'/'.join(_IMAGE_SUFFIXES)}); "
                             "remove it or add images (an empty class would still take an output)")
        paths += files
        ys += [label] * len(files)
        skipped += other
    _log_skipped(base, skipped, log)
    y = np.asarray(ys, dtype=np.int64)
    tr, te = _split_indices(len(y), test_fraction, seed, str(root))
    shape = (3, size[1], size[0])  # PIL's size is (width, height)
    splits = []
    for idx in (tr, te):  # each image read straight into its split's array: the data is held once
        x = np.empty((len(idx), *shape), dtype=np.float32)
        for row, i in enumerate(idx):
            x[row] = _read_image(paths[i], size).transpose(2, 0, 1)
        x = x.reshape(len(x), -1) if flat else x
        splits.append(Split(torch.from_numpy(x), torch.from_numpy(y[idx].copy())))
    return Dataset(f"folder:{base.name}", splits[0], splits[1], len(classes))


def load_dataset(name: str, path: Optional[str] = None, flat: bool = True, seed: int = 0, timesteps: int = 4,
                 log: Optional[Callable[[str], None]] = None) -> Dataset:
    """Load ``"digits"`` (built in), ``"cifar10"`` or ``"folder"`` (both need ``path``), or an event
    dataset (``"nmnist"``, ``"dvsgesture"``, ``"shd"``: ``path`` is the folder tonic reads, events
    are binned into ``timesteps`` frames and cached; see :mod:`edgesnn.training.events`).
    ``~`` in ``path`` is expanded; ``log`` gets the loaders' notes (skipped files, binning). A missing
    ``path`` is a one-line ``FileNotFoundError``; a file or folder the loaders cannot read (permissions,
    I/O errors) a one-line ``ValueError`` naming it. ``flat``: static samples as flat vectors ``[N, F]``
    (the MLP; digits ``(64,)``), else as images ``[N, C, H, W]`` (the conv models; digits ``(1, 8, 8)``).
    ``seed`` (an integer in [0, 2**32 - 1]) draws the train/test split of ``digits`` and ``folder``."""
    _check_load_args(flat, seed, log)
    timesteps = check_int(timesteps, "timesteps", 1)  # (event frames; "abc" was accepted)
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path: expected a folder or file path, got {type(path).__name__}")
    try:
        return _load(name, path, flat, seed, timesteps, log)
    except OSError as exc:
        if isinstance(exc, USER_ERRORS) or exc.filename is None:
            raise
        # PermissionError and other I/O errors (an unreadable class or digit folder) were tracebacks
        raise ValueError(f"data: {name}: cannot read {exc.filename} ({exc.strerror or first_line(exc)})") from None


def _check_load_args(flat: Any, seed: Any, log: Any) -> None:
    """One ``ValueError`` line for a ``flat`` that is not a bool (``"no"`` would count as true), a
    ``seed`` NumPy cannot take, or a ``log`` that is not callable."""
    if not isinstance(flat, (bool, np.bool_)):
        raise ValueError(f"flat: expected True or False, got {flat!r:.80}")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= 2**32 - 1:
        raise ValueError(f"seed: expected an integer in [0, {2**32 - 1}], got {seed!r:.80}")
    if log is not None and not callable(log):
        raise ValueError(f"log: expected None or a callable taking one str (e.g. print), got {log!r:.80}")


def _load(name: str, path: Optional[str], flat: bool, seed: int, timesteps: int,
          log: Optional[Callable[[str], None]]) -> Dataset:
    if name in EVENT_DATASETS:
        from .events import load_event_dataset

        return load_event_dataset(name, path, timesteps, flat=flat, log=log)
    if name == "digits":
        if path:
            raise ValueError(f"data: digits is built in (scikit-learn); --data-dir {path} would not be read: drop it")
        return load_digits_dataset(flat=flat, seed=seed)
    if name in ("cifar10", "folder"):
        if not path:
            raise ValueError(f"data: dataset {name!r} needs --data-dir pointing at a local folder (no downloads)")
        if name == "cifar10":
            return load_cifar10(path, flat=flat)
        return load_image_folder(path, flat=flat, seed=seed, log=log)
    raise ValueError(f"dataset: unknown dataset {name!r}; expected one of {DATASETS}")
