"""What the two device runners (:mod:`edgesnn.export.runner`, :mod:`edgesnn.export.step_runner`)
share: fixed-batch evaluation batches, and the process measurements they report (peak and current
RSS from procfs, steady-state step times). NumPy only: no torch, no onnxruntime."""

from __future__ import annotations

import resource
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

__all__ = ["padded_batches", "proc_status_mib", "peak_rss_mb", "step_time_metrics"]


def padded_batches(x: np.ndarray, batch: int) -> Iterator[Tuple[int, np.ndarray, int]]:
    """``(start, x_batch, n)`` over ``x`` in batches of exactly ``batch`` rows (fixed-batch graphs):
    the last one zero-padded, ``n`` its real rows."""
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
    """Mean/median wall and median CPU milliseconds per step, the first step (graph set-up) left out."""
    steady = step_times[1:] if len(step_times) > 1 else step_times
    steady_cpu = step_cpu[1:] if len(step_cpu) > 1 else step_cpu
    return {
        "step_ms_mean": 1000.0 * float(np.mean(steady)) if steady else None,
        "step_ms_median": 1000.0 * float(np.median(steady)) if steady else None,
        "step_cpu_ms_median": 1000.0 * float(np.median(steady_cpu)) if steady_cpu else None,
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB.

    Reads ``VmHWM`` from ``/proc/self/status`` (the high-water mark of this address space; unlike
    ``ru_maxrss`` it does not carry over the peak of a parent that forked and exec'd us), falling
    back to ``ru_maxrss`` where there is no procfs.
    """
    hwm = proc_status_mib("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
