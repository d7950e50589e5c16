"""What the two device runners (:mod:`edgesnn.export.runner`, :mod:`edgesnn.export.step_runner`)
share: fixed-batch evaluation batches, and the process measurements they report (peak and current
RSS from procfs, steady-state step times). NumPy only: no torch, no onnxruntime."""

from __future__ import annotations

import resource
import zipfile
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Tuple

import numpy as np

from edgesnn.errors import first_line

if TYPE_CHECKING:  # pragma: no cover
    from .artifacts import PathLike

__all__ = ["padded_batches", "proc_status_mib", "peak_rss_mb", "step_time_metrics", "epoch_metrics", "read_npz"]


#: What reading a damaged or foreign file with ``np.load`` raises (a zip that is not one, a pickle
#: refused by ``allow_pickle=False``, a truncated member).
_UNREADABLE = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile)


def read_npz(path: PathLike, flag: str) -> Dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, read into memory; a file that is missing or not a readable
    ``.npz`` is a one-line ``ValueError`` naming ``flag``."""
    try:
        npz = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{flag}: no such file: {path}") from None
    except _UNREADABLE as exc:
        raise ValueError(f"{flag}: {path} is not a readable .npz file ({_first_line(exc)})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{flag}: {path} is a single .npy array; expected an .npz archive of named arrays")
    out: Dict[str, np.ndarray] = {}
    with npz:
        for name in npz.files:
            try:
                out[name] = np.array(npz[name])
            except _UNREADABLE as exc:
                if "allow_pickle" in str(exc):  # numpy refuses to unpickle an object array
                    raise ValueError(f"{flag}: {path} array {name!r} holds Python objects (dtype object, stored as a "
                                     "pickle, which is not loaded); expected numeric arrays") from None
                raise ValueError(f"{flag}: {path} array {name!r} is not readable ({_first_line(exc)})") from None
    return out


def _first_line(exc: BaseException) -> str:
    if "pickle" in str(exc):  # numpy's advice to load it unsafely
        return "not an .npz archive"
    return first_line(exc)


def padded_batches(x: np.ndarray, batch: int) -> Iterator[Tuple[int, np.ndarray, int]]:
    """``(start, x_batch [batch, ...], n)`` over ``x [N, ...]`` in batches of exactly ``batch`` rows
    (fixed-batch graphs): the last one zero-padded, ``n`` its real rows."""
    for i in range(0, x.shape[0], batch):
        xb = x[i:i + batch]
        n = xb.shape[0]
        if n < batch:
            xb = np.concatenate([xb, np.zeros((batch - n, *xb.shape[1:]), np.float32)])
        yield i, xb, n


def proc_status_mib(field: str) -> Optional[float]:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``...) in MiB; ``None`` without procfs."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def step_time_metrics(step_times: List[float], step_cpu: List[float]) -> Dict[str, Optional[float]]:
    """Mean/median wall and median CPU milliseconds per step from per-step ``step_times`` / ``step_cpu`` in
    seconds, the first step (graph set-up) left out."""
    steady = step_times[1:] if len(step_times) > 1 else step_times
    steady_cpu = step_cpu[1:] if len(step_cpu) > 1 else step_cpu
    return {
        "step_ms_mean": 1000.0 * float(np.mean(steady)) if steady else None,
        "step_ms_median": 1000.0 * float(np.median(steady)) if steady else None,
        "step_cpu_ms_median": 1000.0 * float(np.median(steady_cpu)) if steady_cpu else None,
    }


def epoch_metrics(epochs: int, done: int, steps: int, resumed_steps: int, resumed_epochs: int, samples: int,
                  steps_per_epoch: int, padded: int) -> Dict[str, object]:
    """The progress part of ``metrics.json``, written after every epoch.

    ``epochs``: asked for in this run; ``done``: finished in this run (``complete`` when equal);
    ``steps``: taken in this run; ``total_*``: including the runs it resumed; ``samples``: training
    samples, each trained on once per epoch; ``padded``: how many of them the last batch of every
    epoch repeats to fill the fixed batch size (``steps_per_epoch x batch = samples + padded``; with
    ``--accumulate N`` a step takes N batches, the epoch's last step those left).
    """
    return {"epochs": epochs, "epochs_done": done, "complete": done == epochs, "steps": steps,
            "total_steps": resumed_steps + steps, "total_epochs": resumed_epochs + done, "train_samples": samples,
            "samples_per_epoch": samples, "steps_per_epoch": steps_per_epoch, "padded_per_epoch": padded}


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB.

    Reads ``VmHWM`` from ``/proc/self/status`` (the high-water mark of this address space; unlike
    ``ru_maxrss`` it does not carry over the peak of a parent that forked and exec'd us), falling
    back to ``ru_maxrss`` where there is no procfs.
    """
    hwm = proc_status_mib("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
