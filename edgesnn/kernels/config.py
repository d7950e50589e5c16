"""Kernel configuration: thread counts (Numba and PyTorch, both explicit) and the JIT cache folder.

Numba compiles the kernels on first use (seconds on a desktop, much longer on a Jetson) and keeps
the machine code in a cache folder. The folder must be writable: :func:`configure_cache` picks
``$EDGESNN_CACHE_DIR``, else ``$NUMBA_CACHE_DIR``, else ``~/.cache/edgesnn/numba`` (falling back
to a private temporary folder when none of those can be written), and exports it as
``NUMBA_CACHE_DIR`` before the kernels are compiled. ``edgesnn warmup`` fills it ahead of time.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
import warnings
from typing import Optional

__all__ = ["configure_cache", "cache_dir", "set_num_threads", "get_num_threads", "configure_threading_layer",
           "numba_threads_usable", "retain_freed_memory", "configure_cpu_features"]

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


_KERNEL_SOURCES = ("neuron_math.py", "numba_cpu.py", "numba_revlif.py", "numba_lif_pool.py", "numba_bits.py",
                   "numba_bn.py", "numba_prefetch.py")


def _sources_key() -> str:
    """Hash of the kernel sources. Numba's cache checks only the stamp of the file that defines a
    kernel, not the per-neuron math it inlines from other files, so each version of the sources
    gets its own sub-folder (no stale machine code after an edit or an upgrade)."""
    import hashlib

    h = hashlib.sha256()
    here = os.path.dirname(os.path.abspath(__file__))
    for name in _KERNEL_SOURCES:
        try:
            with open(os.path.join(here, name), "rb") as fh:
                h.update(fh.read())
        except OSError:
            h.update(name.encode())
    return h.hexdigest()[:16]


def _private_tmp_base() -> str:
    """The temporary cache base: ``$TMPDIR/edgesnn-numba-<uid>``, created with mode 0700, and used
    only when it is a real folder (not a link) owned by this user and not writable by group or
    others (Numba loads pickled index files from the cache: another user's folder could run code
    here). Otherwise a fresh private ``tempfile.mkdtemp`` folder (no reuse between processes)."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    path = os.path.join(tempfile.gettempdir(), f"edgesnn-numba-{uid if uid is not None else 0}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        path = ""
    if path and uid is not None:
        try:
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o022:
                return path
        except OSError:
            pass
    elif path:  # pragma: no cover - no uids (Windows): the per-user temporary folder
        return path
    try:
        return tempfile.mkdtemp(prefix="edgesnn-numba-")
    except OSError:  # pragma: no cover
        return ""


def configure_cache(path: Optional[str] = None) -> str:
    """Choose (and create) the Numba cache folder; returns it. Call before the kernels compile.

    The folder is ``<base>/<hash of the kernel sources>`` (see :func:`_sources_key`).

    Args:
        path: folder to use; ``None`` picks ``$EDGESNN_CACHE_DIR``, ``$NUMBA_CACHE_DIR`` or
            ``~/.cache/edgesnn/numba``.
    """
    global _CACHE_DIR
    candidates = [path, os.environ.get("EDGESNN_CACHE_DIR"), os.environ.get("NUMBA_CACHE_DIR"),
                  os.path.join(os.path.expanduser("~"), ".cache", "edgesnn", "numba"), _private_tmp_base]
    key = _sources_key()
    for i, cand in enumerate(candidates):
        if callable(cand):  # the temporary fallback: created only when it is reached
            cand = cand()
        if not cand:
            continue
        folder = cand if os.path.basename(os.path.normpath(cand)) == key else os.path.join(cand, key)
        if _writable(folder):
            chosen = os.path.abspath(folder)
            break
        if i == 1:  # the user set EDGESNN_CACHE_DIR to a folder we cannot use: say so, then fall back
            warnings.warn(f"EDGESNN_CACHE_DIR={cand}: not a writable folder; the Numba kernel cache goes to the "
                          "next candidate ($NUMBA_CACHE_DIR, ~/.cache/edgesnn/numba or a private temporary folder)",
                          RuntimeWarning, stacklevel=2)
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
    """Leave Numba's threading layer to Numba (``NUMBA_THREADING_LAYER``, else its default order
    tbb, omp, workqueue) and guard forked children; returns the configured layer name.

    Measured on the 2-core test VM (PyTorch 2.13, Numba 0.68): after a PyTorch parallel op its
    OpenMP worker keeps spinning for a while; a kernel on Numba's ``workqueue`` layer, whose own
    worker threads must wake and share the cores with that spinner, ran 1.7-2x longer (RevLIF
    forward 3.4 ms instead of 1.8 ms; the public-form RevLIF step 12.5 ms instead of 7 ms; a
    memory-optimized VGG-11 step 12-17% slower). On the OpenMP layer the calling thread takes a share
    of the work at once and the kernel time does not change; PyTorch ops right after a kernel were
    not slowed on either layer (``tools/bench_kernels.py`` section (p) prints which layer ran).

    GNU OpenMP (libgomp, shared by PyTorch and Numba's ``omp`` layer) is not fork-safe: a child
    forked after its threads started dies or hangs forever when it runs a parallel kernel on that
    layer, whether Numba's kernels or a PyTorch op (e.g. a matmul in the parent, before a DataLoader
    forks its workers) started them. :func:`numba_threads_usable` is ``False`` in such a child, so
    ``backend="auto"`` and the memory-optimized blocks take their PyTorch paths there (a forked
    DataLoader worker can run a node, slower) and ``backend="numba"`` raises a one-line error.
    """
    import numba

    _register_fork_hooks()
    return str(numba.config.THREADING_LAYER)


_FORK_HOOKED = False
_PARENT_THREADED = False  # set in the parent just before a fork: it ran more than one thread
_THREADS_FORKED = False  # True in a child forked while OpenMP threads may have been running


def _register_fork_hooks() -> None:
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


_register_fork_hooks()


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
    configure_threading_layer()  # the fork guard is in place before Numba starts its threads
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(n)


def get_num_threads() -> dict:
    """``{"numba": n, "torch": n}``: the thread counts in use."""
    import numba
    import torch

    return {"numba": numba.get_num_threads(), "torch": torch.get_num_threads()}


def retain_freed_memory(enable: bool = True) -> bool:
    """Opt-in: keep freed heap memory in the process instead of handing it back to the OS (glibc only).

    A training step allocates several large tensors (``[T, B, N]`` outputs and gradients) and frees
    them again. By default glibc serves blocks above its mmap threshold with fresh ``mmap`` s or
    trims the heap on ``free``, so every step touches new pages: on the 2-core test VM (docs/design.md
    §3) the page faults cost more than the fused kernels (16.8 MB of fresh output ~5 ms,
    kernel ~1-2 ms). This sets ``M_MMAP_MAX = 0`` (no mmap-served blocks) and a huge
    ``M_TRIM_THRESHOLD`` through ``mallopt``, so freed blocks are reused: the process keeps its
    peak heap size (RSS does not shrink after a large step). ``enable=False`` restores glibc's
    defaults (mmap for blocks >= 128 KiB, trim above 128 KiB).

    Process-wide; the library never calls it by itself. Same effect as starting Python with
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>``. Returns ``False`` where ``mallopt`` is
    unavailable (not glibc): nothing changes then.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    m_trim_threshold, m_mmap_threshold, m_mmap_max = -1, -3, -4
    if enable:
        ok = mallopt(m_mmap_max, 0) and mallopt(m_trim_threshold, 2**31 - 1)
    else:
        ok = mallopt(m_mmap_max, 65536) and mallopt(m_trim_threshold, 128 * 1024) and mallopt(m_mmap_threshold, 128 * 1024)
    return bool(ok)


def configure_cpu_features() -> str:
    """Opt-in 512-bit vectors for the Numba kernels: ``EDGESNN_WIDE_VECTORS=1``.

    LLVM tunes some AVX-512 cores (Intel server cores) for 256-bit vectors (a flag meant for CPUs
    that clock down under 512-bit load) and others (AMD Zen 4 / 5) for 512-bit ones. On a Xeon
    (Emerald Rapids) test VM the opt-in made the kernels 1.2-1.6x faster; on the AMD EPYC VM Numba
    already emits 512-bit vectors and it changes nothing (docs/design.md §3). With
    ``EDGESNN_WIDE_VECTORS=1`` in the environment, on an AVX-512 host, and with
    ``NUMBA_CPU_FEATURES`` unset, this sets ``NUMBA_CPU_FEATURES`` to the host's features plus
    ``-prefer-256-bit``. Process-wide (every Numba function compiled afterwards); must run before
    the first compilation. Returns the feature string in effect (``""``: Numba's default).
    """
    if os.environ.get("NUMBA_CPU_FEATURES"):
        return os.environ["NUMBA_CPU_FEATURES"]
    if os.environ.get("EDGESNN_WIDE_VECTORS", "0") not in ("1", "true", "yes"):
        return ""
    try:
        import llvmlite.binding as ll

        feats = ll.get_host_cpu_features().flatten()
    except Exception:  # pragma: no cover - llvmlite without host feature detection
        return ""
    if "+avx512f" not in feats.split(","):
        return ""
    feats += ",-prefer-256-bit"
    os.environ["NUMBA_CPU_FEATURES"] = feats
    try:
        import numba.core.config as _nc

        _nc.reload_config()
    except Exception:  # pragma: no cover
        pass
    return feats
