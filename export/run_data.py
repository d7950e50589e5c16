"""The device runner's data: loading and checking ``--data`` / ``--eval-data``, the held-out split,
and a fingerprint that ``--resume`` compares. NumPy only: no torch, no onnxruntime.

Every error is one line that names the flag and the file (and the array, where one is at fault).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np

from edgesnn.errors import UsageError

from .artifacts import Manifest, PathLike, StepManifest, valid_input_range
from .run_support import read_npz

__all__ = ["load_dataset", "input_range", "split_holdout", "data_fingerprint"]

#: dtype kinds accepted for ``x``: bool, signed and unsigned integers, floats (converted to float32)
_X_KINDS = "biuf"


def _integer_labels(y: np.ndarray, path: Path, flag: str, num_classes: int) -> np.ndarray:
    """``y [N]`` as int64, checked to lie in ``0..num_classes-1`` *before* the cast (a uint64 label
    of 2^63 or more would wrap to a negative int64; a float label 2.7 would truncate to 2)."""
    where = f"{flag}: {path} array 'y'"
    if y.dtype.kind not in "iuf":
        raise UsageError(f"{where} has dtype {y.dtype}; expected integer class indices")
    if y.dtype.kind == "f" and y.size:
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            raise UsageError(f"{where} holds non-integer labels (e.g. {y[bad].flat[0].item()!r}); expected integer class indices")
    if y.size:
        lo, hi = y.min(), y.max()  # in y's own dtype: exact for every integer dtype
        lo, hi = (int(lo), int(hi))
        if lo < 0 or hi >= num_classes:
            raise UsageError(f"{where}: labels must lie in [0, {num_classes}), got [{lo}, {hi}]")
    return y.astype(np.int64)


def input_range(manifest: Union[Manifest, StepManifest]) -> Optional[Tuple[float, float]]:
    """The manifest's ``input_range`` (``None``: unknown), checked: two finite numbers, low < high."""
    r = getattr(manifest, "input_range", None)
    if r is None:
        return None
    if not valid_input_range(r):
        raise UsageError(f"manifest.json: input_range must be [low, high] with finite low < high, or null; got {r!r}")
    return float(r[0]), float(r[1])


def _check_range(x: np.ndarray, r: Tuple[float, float], path: Path, flag: str, integer: bool) -> None:
    """``x`` within ``r`` (a slack of 1e-3 of its width for rounding), else one line saying how to scale it."""
    if not x.size:
        return
    lo, hi = float(x.min()), float(x.max())
    slack = 1e-3 * (r[1] - r[0])
    if lo >= r[0] - slack and hi <= r[1] + slack:
        return
    hint = " (8-bit pixels: x / 255)" if integer and r == (0.0, 1.0) and hi <= 255 else ""
    raise UsageError(f"{flag}: {path} array 'x' holds values in [{lo:g}, {hi:g}], but the model was trained on inputs in "
                     f"[{r[0]:g}, {r[1]:g}]; scale x the same way{hint}, or pass --any-input-range to train on it as it is")


def load_dataset(path: PathLike, manifest: Union[Manifest, StepManifest], min_samples: Optional[int] = None, flag: str = "--data",
                 check_range: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Load ``x`` (float32 ``[N, *in_shape]``) and ``y`` (int64 ``[N]``, in ``0..num_classes-1``)
    from an ``.npz``, checked against the manifest.

    Args:
        path: the ``.npz`` file.
        manifest: the artifact manifest (``in_shape``, ``num_classes``, ``batch_size``, ``input_range``).
        min_samples: fewest samples accepted (default: one batch of the manifest's batch size).
        flag: the command-line flag the file came from (``--data`` or ``--eval-data``), for errors.
        check_range: refuse ``x`` outside the manifest's ``input_range`` (when it has one): raw
            8-bit pixels given to a model trained on pixels / 255 would train without an error,
            on inputs 255x too large.
    """
    from edgesnn.atomic import check_input_file

    # a directory or a pipe is named as what it is, not "no such file"
    path = check_input_file(path, flag, "an .npz file with arrays x and y")
    arrays = read_npz(path, flag)
    if "x" not in arrays or "y" not in arrays:
        raise UsageError(f"{flag}: {path} must hold arrays 'x' and 'y' (found {sorted(arrays)})")
    x, y = np.asarray(arrays.pop("x")), np.asarray(arrays.pop("y"))
    if x.dtype.kind not in _X_KINDS:
        raise UsageError(f"{flag}: {path} array 'x' has dtype {x.dtype}; expected real numbers (float32, integers or bool)")
    expect = f"[N, {', '.join(map(str, manifest.in_shape))}]"
    if x.ndim < 1 or tuple(x.shape[1:]) != tuple(manifest.in_shape):
        raise UsageError(f"{flag}: {path} array 'x' has shape {x.shape}; the model expects {expect}")
    if y.shape != (x.shape[0],):
        raise UsageError(f"{flag}: {path} array 'y' has shape {y.shape}; expected ({x.shape[0]},), one label per sample")
    y = _integer_labels(y, path, flag, int(manifest.num_classes))
    need = manifest.batch_size if min_samples is None else min_samples
    if x.shape[0] < need:
        what = f"one batch of {need}" if min_samples is None else str(need)
        raise UsageError(f"{flag}: {path} holds {x.shape[0]} samples, fewer than {what}")
    integer = x.dtype.kind in "biu"
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: caught below
        x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise UsageError(f"{flag}: {path} array 'x' contains NaN or Inf (or values beyond float32's range)")
    r = input_range(manifest)
    if check_range and r is not None:
        _check_range(x, r, path, flag, integer)
    return x, y


def split_holdout(x: np.ndarray, y: np.ndarray, fraction: float, seed: int,
                  batch: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_held, y_held)`` from ``x [N, ...]``, ``y [N]``: a seeded random ``fraction``
    held out (at least one sample; ``fraction <= 0``: the whole set as both), each part in sample order."""
    n = x.shape[0]
    if fraction <= 0.0:
        return x, y, x, y
    n_held = max(1, int(round(n * fraction)))
    if n - n_held < batch:
        raise UsageError(f"--holdout {fraction:g}: {n} samples leave {n - n_held} for training, fewer than one batch of {batch}; "
                         f"lower --holdout or pass --eval-data")
    order = np.random.default_rng(10_007 + seed).permutation(n)
    held, train = np.sort(order[:n_held]), np.sort(order[n_held:])
    return x[train], y[train], x[held], y[held]


def data_fingerprint(path: PathLike, x: np.ndarray, y: np.ndarray) -> Dict[str, object]:
    """What ``--resume`` compares about a data file: its samples and a SHA-256 (first 16 hex digits)
    of the arrays as the runner uses them (float32 ``x``, int64 ``y``, shapes included), about
    1 s per GB. ``path`` and ``bytes`` (the file size) are recorded for the message only: a moved
    or re-saved file with the same arrays is the same data."""
    h = hashlib.sha256()
    h.update(repr((tuple(x.shape), tuple(y.shape))).encode())
    h.update(memoryview(np.ascontiguousarray(x, dtype=np.float32)).cast("B"))
    h.update(memoryview(np.ascontiguousarray(y, dtype=np.int64)).cast("B"))
    return {"path": os.path.abspath(path), "bytes": os.path.getsize(path), "samples": int(x.shape[0]),
            "sha256": h.hexdigest()[:16]}
