"""The fork guard: GNU OpenMP (libgomp, shared by PyTorch and Numba's ``omp`` threading layer)
is not fork-safe, so a child forked while OpenMP threads may have been running in its parent must
not run Numba's kernels on that layer (they would hang or end the process).

The guard is an ``os.register_at_fork`` pair, installed when this module is imported (by
:mod:`edgesnn.kernels.config`, before any fork edgesnn can see): before a fork it notes whether
the parent runs more than one thread, in the child it decides :func:`numba_threads_usable`.
See :func:`edgesnn.kernels.config.configure_threading_layer` for the measurements behind the
choice of layer.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

__all__ = ["numba_threads_usable", "forked_child_message", "register_fork_hooks"]

_FORK_HOOKED = False
_PARENT_THREADED = False  # set in the parent just before a fork: it ran more than one thread
_THREADS_FORKED = False  # True in a child forked while OpenMP threads may have been running


def register_fork_hooks() -> None:
    """Install the fork guard once (at import of this module, before any fork edgesnn can see)."""
    global _FORK_HOOKED
    if not _FORK_HOOKED and hasattr(os, "register_at_fork"):
        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
        _FORK_HOOKED = True


def _thread_count() -> int:
    """Threads of this process (native ones too, e.g. OpenMP workers); a large number when unknown."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # pragma: no cover - no /proc: assume threads may be running
        return 1 << 30


def _before_fork() -> None:
    global _PARENT_THREADED
    # libgomp's pool threads, once started, live until the process ends. Threads cannot be told
    # apart, so any second thread counts (conservative: with torch imported, NumPy's OpenBLAS thread
    # alone makes the parent threaded, and its children take the PyTorch paths). Only a truly
    # single-threaded parent's children start their own pool and run the kernels.
    _PARENT_THREADED = _thread_count() > 1


def _numba_layer_in_use() -> Optional[str]:
    """The threading layer Numba's threads run on, or ``None`` when none has started yet."""
    try:
        from numba.np.ufunc import parallel
    except ImportError:
        return None
    if not getattr(parallel, "_is_initialized", False):
        return None
    return getattr(parallel, "_threading_layer", None)


def _layer_may_be_omp() -> bool:
    """Numba's threads run, or may start, on the ``omp`` layer (only an explicit ``tbb`` or
    ``workqueue`` choice, or a layer already started, rules it out)."""
    layer = _numba_layer_in_use()
    if layer is not None:
        return layer == "omp"
    nb = sys.modules.get("numba")  # no import inside a fork hook
    choice = str(nb.config.THREADING_LAYER) if hasattr(nb, "config") else os.environ.get("NUMBA_THREADING_LAYER", "")
    return choice.strip().lower() not in ("tbb", "workqueue")


def _after_fork_in_child() -> None:
    global _THREADS_FORKED
    # OpenMP threads in the parent: Numba's own (omp layer started) or any other (PyTorch's libgomp
    # pool, conservatively any thread) while Numba's kernels here would run on libgomp too
    if _numba_layer_in_use() == "omp" or (_PARENT_THREADED and _layer_may_be_omp()):
        _THREADS_FORKED = True


def numba_threads_usable() -> bool:
    """``False`` in a process forked while OpenMP (libgomp) threads may have been running in its
    parent, when Numba's kernels would run on libgomp too (they would hang or terminate the
    process), else ``True``."""
    return not _THREADS_FORKED


def forked_child_message(what: str) -> str:
    """The one-line error for ``what`` (e.g. ``"backend='numba'"``) in such a forked child."""
    return (f"{what}: this process was forked after OpenMP threads (PyTorch's or Numba's) started, and GNU "
            f"OpenMP cannot run in a forked child; use backend='auto' or 'torch' here, the 'spawn' start "
            f"method, or NUMBA_THREADING_LAYER=workqueue")


register_fork_hooks()
