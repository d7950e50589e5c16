"""Kernel configuration: thread counts (Numba and PyTorch, both explicit) and the JIT cache folder.

Numba compiles the kernels on first use (seconds on a desktop, much longer on a Jetson) and keeps
the machine code in a cache folder. The folder must be writable: :func:`configure_cache` picks
``$EDGESNN_CACHE_DIR``, else ``$NUMBA_CACHE_DIR``, else ``~/.cache/edgesnn/numba`` (falling back
to a temporary folder when none of those can be written), and exports it as ``NUMBA_CACHE_DIR``
before the kernels are compiled. ``edgesnn warmup`` fills it ahead of time.
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional

__all__ = ["configure_cache", "cache_dir", "set_num_threads", "get_num_threads", "configure_threading_layer"]

_CACHE_DIR: Optional[str] = None


def _writable(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".edgesnn-write-test")
        with open(probe, "w") as fh:
            fh.write("ok")
        os.remove(probe)
        return True
    except OSError:
        return False


def configure_cache(path: Optional[str] = None) -> str:
    """Choose (and create) the Numba cache folder; returns it. Call before the kernels compile.

    Args:
        path: folder to use; ``None`` picks ``$EDGESNN_CACHE_DIR``, ``$NUMBA_CACHE_DIR`` or
            ``~/.cache/edgesnn/numba``.
    """
    global _CACHE_DIR
    candidates = [path, os.environ.get("EDGESNN_CACHE_DIR"), os.environ.get("NUMBA_CACHE_DIR"),
                  os.path.join(os.path.expanduser("~"), ".cache", "edgesnn", "numba"),
                  os.path.join(tempfile.gettempdir(), f"edgesnn-numba-{os.getuid() if hasattr(os, 'getuid') else 0}")]
    for cand in candidates:
        if cand and _writable(cand):
            chosen = os.path.abspath(cand)
            break
    else:  # pragma: no cover - nothing writable at all: numba then skips caching
        return ""
    if os.environ.get("NUMBA_CACHE_DIR") != chosen:
        os.environ["NUMBA_CACHE_DIR"] = chosen
        try:  # numba already imported: make it read the variable again
            import numba.core.config as _nc

            _nc.reload_config()
        except Exception:  # pragma: no cover
            pass
    _CACHE_DIR = chosen
    return chosen


def configure_threading_layer() -> str:
    """Use Numba's ``workqueue`` threading layer unless ``NUMBA_THREADING_LAYER`` says otherwise.

    Numba's default on Linux is OpenMP, a second OpenMP runtime next to PyTorch's: the two thread
    pools spin against each other and, on 2 cores, turned 256 KB fills into 10 ms stalls (the
    LIF layer benchmark ran 2x slower). ``workqueue`` threads sleep when idle. It does not allow
    calling the kernels from several Python threads at once; set ``NUMBA_THREADING_LAYER=tbb``
    (with the tbb package) for that. Must run before the first parallel kernel executes.
    """
    import numba

    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "workqueue"
    return numba.config.THREADING_LAYER


def cache_dir() -> str:
    """The Numba cache folder in use (configuring the default on first call)."""
    return _CACHE_DIR if _CACHE_DIR is not None else configure_cache()


def set_num_threads(n: int) -> None:
    """Set the thread count of both the Numba kernels and PyTorch's intra-op pool to ``n``.

    ``n`` is capped at Numba's pool size (``NUMBA_NUM_THREADS``, the core count by default).
    """
    import numba
    import torch

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_threads: expected an integer >= 1, got {n!r}")
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(n)


def get_num_threads() -> dict:
    """``{"numba": n, "torch": n}``: the thread counts in use."""
    import numba
    import torch

    return {"numba": numba.get_num_threads(), "torch": torch.get_num_threads()}
