"""Kernel configuration: thread counts (Numba and PyTorch, both explicit) and the JIT cache folder.

Every kernel module calls :func:`configure` before it imports Numba: it checks
``NUMBA_NUM_THREADS``, chooses the cache folder, applies ``EDGESNN_WIDE_VECTORS`` and installs the
fork guard, once per process.

Numba compiles the kernels on first use (seconds on a desktop, much longer on a Jetson) and keeps
the machine code in a cache folder. The folder must be writable: :func:`configure_cache` picks
``$EDGESNN_CACHE_DIR``, else ``$NUMBA_CACHE_DIR``, else ``~/.cache/edgesnn/numba`` (falling back
to a private temporary folder when none of those can be written; a set variable that cannot be
used is warned about once), and exports it as ``NUMBA_CACHE_DIR`` before the kernels are
compiled. The choice is made once per process; ``edgesnn warmup`` fills it ahead of time.

Settings reach an already imported Numba as attributes of ``numba.config`` (its other settings,
e.g. ones made in code, are kept: Numba's configuration is never reloaded here).
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import tempfile
from typing import Optional, Union

from ..errors import UsageError
from ..functional.checks import check_int
from .cache_key import CACHED_KERNEL_MODULES, _sources_key
from .cpu_features import configure_cpu_features
from .fork_guard import forked_child_message, numba_threads_usable, register_fork_hooks
from .numba_env import _export_numba_setting, _warn_once

__all__ = ["configure", "configure_cache", "cache_dir", "set_num_threads", "get_num_threads",
           "configure_threading_layer", "numba_threads_usable", "forked_child_message", "retain_freed_memory", "configure_cpu_features",
           "numba_subfolder"]

_CACHE_DIR: Optional[str] = None  # the folder chosen for this process ("": none writable)

_PACKAGE = __name__.rsplit(".", 1)[0]  # "edgesnn.kernels"


def _check_numba_num_threads() -> None:
    """One-line error when ``NUMBA_NUM_THREADS`` is set but not an integer >= 1 (``import numba``
    would fail with a long traceback on 0, or warn and ignore a non-number)."""
    raw = os.environ.get("NUMBA_NUM_THREADS")
    if raw is None:
        return
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise UsageError(f"NUMBA_NUM_THREADS={raw!r}: expected an integer >= 1 (the size of Numba's thread pool); "
                         "unset it to use every core")


def _import_numba():
    """``import numba`` after checking ``NUMBA_NUM_THREADS``; returns the module."""
    _check_numba_num_threads()
    import numba

    return numba


def configure() -> str:
    """The configuration every kernel module runs before it imports Numba (idempotent).

    Checks ``NUMBA_NUM_THREADS`` (a one-line error unless it is an integer >= 1), chooses the
    cache folder (:func:`configure_cache`), applies ``EDGESNN_WIDE_VECTORS``
    (:func:`configure_cpu_features`; it must come before Numba's CPU target is created, which the
    first ``@njit`` does), then imports Numba and installs the fork guard
    (:func:`configure_threading_layer`). Returns the cache folder.
    """
    _check_numba_num_threads()
    folder = configure_cache()
    configure_cpu_features()
    configure_threading_layer()
    return folder


def _writable(path: str) -> bool:
    """``path`` is (or could be created as) a folder in which this process can create files.

    Probed with a file of its own (a unique name, created exclusively): processes that start
    together on one cache folder (ranks, compile workers) removed each other's probe when it had a
    fixed name, and took the folder for unwritable."""
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".edgesnn-write-test-", dir=path)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
        os.remove(probe)
        return True
    except OSError:
        return False


def numba_subfolder(folder: str) -> str:
    """Where Numba writes this installation's kernels inside the cache ``folder``: a sub-folder named
    after the kernels' source folder and a SHA-1 of its path (Numba's
    ``_CacheLocator.get_suitable_cache_subpath``, computed without importing Numba, which must not
    start before the folder is chosen)."""
    src = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(folder, f"{os.path.basename(src)}_{hashlib.sha1(src.encode()).hexdigest()}")


def _usable(folder: str) -> bool:
    """``folder`` and Numba's sub-folder in it (:func:`numba_subfolder`) can be written: where Numba
    cannot create its sub-folder, it writes the kernels into the package's ``__pycache__`` instead,
    without a word (the notices would then look in an empty folder on every run)."""
    return _writable(folder) and _writable(numba_subfolder(folder))


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


def _key_folder(base: str, key: str) -> str:
    """``base/<key>`` (``base`` itself when it already ends in the key), ``~`` expanded, absolute."""
    base = os.path.expanduser(base)
    folder = base if os.path.basename(os.path.normpath(base)) == key else os.path.join(base, key)
    return os.path.abspath(folder)


def _kernels_loaded() -> bool:
    """A kernel module was imported: its ``cache=True`` functions already hold the cache folder."""
    names = CACHED_KERNEL_MODULES + ("numba_prefetch", "numba_rows", "cuda_kernels")
    return any(f"{_PACKAGE}.{n}" in sys.modules for n in names)


def _adopt(folder: str) -> str:
    """Record ``folder`` as this process's cache folder and hand it to Numba; returns it."""
    global _CACHE_DIR
    _CACHE_DIR = folder
    if folder:
        _export_numba_setting("NUMBA_CACHE_DIR", "CACHE_DIR", folder)
    return folder


def _search_cache() -> str:
    """The first usable of ``$EDGESNN_CACHE_DIR``, ``$NUMBA_CACHE_DIR``, ``~/.cache/edgesnn/numba``
    and a private temporary folder (``""``: none); warns once for each set variable that cannot be used."""
    key = _sources_key()
    default = os.path.join(os.path.expanduser("~"), ".cache", "edgesnn", "numba")
    candidates = [(name, os.environ.get(name)) for name in ("EDGESNN_CACHE_DIR", "NUMBA_CACHE_DIR")]
    candidates += [(None, default), (None, _private_tmp_base)]
    unusable, chosen = [], ""
    for name, base in candidates:
        if callable(base):  # the temporary fallback: created only when it is reached
            base = base()
        if not base:
            continue
        folder = _key_folder(base, key)
        if _usable(folder):
            chosen = folder
            break
        if name is not None:
            unusable.append(f"{name}={base}")
    for setting in unusable:
        _warn_once(("cache", setting), f"{setting}: not a writable folder; the Numba kernel cache goes to "
                                       f"{chosen or 'no folder (every run compiles the kernels)'}")
    return chosen


def _choose_cache(path: Union[str, "os.PathLike[str]"], name: str) -> str:
    """Use the folder ``path`` (``<path>/<key>``); a one-line error naming ``name`` when it cannot be
    used, or when the kernels were already loaded with another folder."""
    try:
        raw = os.fspath(path)
    except TypeError:
        raise UsageError(f"{name}: expected a folder path, got {path!r}") from None
    if not raw.strip():  # ("" would be the current folder)
        raise UsageError(f"{name}: expected a folder path, got {raw!r}")
    folder = _key_folder(raw, _sources_key())
    if _CACHE_DIR and os.path.realpath(folder) == os.path.realpath(_CACHE_DIR):
        return _CACHE_DIR
    if _CACHE_DIR is not None and _kernels_loaded():
        raise UsageError(f"{name}: the kernels are already loaded with the cache folder {_CACHE_DIR or '(none)'}; "
                         f"choose {raw} before the first kernel is used (or in a new process)")
    expanded = os.path.expanduser(raw)
    if os.path.exists(expanded) and not os.path.isdir(expanded):
        raise UsageError(f"{name}: {raw} is a file; expected a folder")
    if not _usable(folder):
        raise UsageError(f"{name}: {raw} is not a writable folder (it, or the sub-folder {numba_subfolder(folder)} "
                         "Numba writes the kernels into, cannot be created or written here)")
    return _adopt(folder)


def configure_cache(path: Optional[Union[str, "os.PathLike[str]"]] = None) -> str:
    """Choose (and create) the Numba cache folder; returns it (``""``: none could be written).

    The folder is ``<base>/<hash of the kernel sources and of the Numba settings that change their
    machine code>`` (see :func:`_sources_key`). The choice is made once per process: a later call
    without ``path`` returns it without searching again.

    Args:
        path: folder to use (``~`` expanded); a one-line ``ValueError`` when it cannot be created or
            written, or when the kernels were already loaded with another folder (their cache
            cannot move). ``None`` picks ``$EDGESNN_CACHE_DIR``, ``$NUMBA_CACHE_DIR`` or
            ``~/.cache/edgesnn/numba`` (the variables ``~``-expanded; one that is set but cannot be
            used is warned about once), then a private temporary folder.
    """
    if path is not None:
        return _choose_cache(path, "path")
    if _CACHE_DIR is not None:
        return _CACHE_DIR
    return _adopt(_search_cache())


def configure_threading_layer() -> str:
    """Leave Numba's threading layer to Numba (``NUMBA_THREADING_LAYER``, else its default order
    tbb, omp, workqueue) and guard forked children; returns the configured layer name.

    Measured on the 2-core test VM (PyTorch 2.13, Numba 0.68): after a PyTorch parallel op its
    OpenMP worker keeps spinning for a while; a kernel on Numba's ``workqueue`` layer, whose own
    worker threads must wake and share the cores with that spinner, ran 1.7-2x longer (RevLIF
    forward 3.4 ms instead of 1.8 ms; the public-form RevLIF step 12.5 ms instead of 7 ms; a
    memory-optimized VGG-11 step 12-17% slower). On the OpenMP layer the calling thread takes a share
    of the work at once and the kernel time does not change (``tools/bench_kernels.py`` section (p)
    prints which layer ran). The other way round costs little: a small PyTorch op right after a RevLIF
    kernel (``full_like`` / ``sum`` of a ``[16, 4096]`` state) took 46-72 us instead of 6-12 us on a
    quiet 2-core Zen 3 VM (OpenMP layer); a RevLIF training step runs a few such ops (the initial state,
    the state check, the reconstruction check) beside its ~10 ms of kernels.

    GNU OpenMP is not fork-safe (:mod:`edgesnn.kernels.fork_guard`): in a child forked after its
    threads started, :func:`numba_threads_usable` is ``False``, so ``backend="auto"`` and the
    memory-optimized blocks take their PyTorch paths there and ``backend="numba"`` raises one line.
    """
    numba = _import_numba()
    register_fork_hooks()
    _keep_torch_threads_at_launch()
    return str(numba.config.THREADING_LAYER)


def _keep_torch_threads_at_launch() -> None:
    """Keep PyTorch's intra-op thread count when Numba starts its threading layer (idempotent).

    Numba's OpenMP layer calls ``omp_set_num_threads(<its pool size>)`` when it starts (the first
    kernel call or ``numba.get_num_threads()``), and PyTorch, on the same GNU OpenMP runtime, reads
    its intra-op count there: ``OMP_NUM_THREADS=1`` or an earlier ``torch.set_num_threads(k)`` became
    Numba's pool size (every core by default) from the first kernel on. Numba's start is wrapped
    to put PyTorch's count back; Numba's own count is unchanged (its kernels pass it explicitly).
    The wrapper removes itself after the start. Nothing is done once Numba's layer has started.
    A layer Numba cannot start (``NUMBA_THREADING_LAYER=tbb`` without the tbb package, an unknown
    name) is a one-line :class:`UsageError` naming the setting (:func:`_threading_layer_error`).
    """
    try:
        from numba.np.ufunc import parallel
    except ImportError:  # pragma: no cover - Numba without its parallel backend
        return
    launch = getattr(parallel, "_launch_threads", None)
    if launch is None or getattr(parallel, "_is_initialized", True) or getattr(launch, "_keeps_torch_threads", False):
        return

    def launch_keeping_torch_threads() -> None:
        torch = sys.modules.get("torch")
        before = torch.get_num_threads() if torch is not None else None
        try:
            launch()
        except ValueError as exc:  # a layer Numba cannot start: its error is several lines
            raise _threading_layer_error(exc) from None
        if getattr(parallel, "_is_initialized", False) and parallel._launch_threads is launch_keeping_torch_threads:
            parallel._launch_threads = launch
        if before is not None and torch.get_num_threads() != before:
            torch.set_num_threads(before)

    launch_keeping_torch_threads._keeps_torch_threads = True  # type: ignore[attr-defined]
    parallel._launch_threads = launch_keeping_torch_threads


def _threading_layer_error(exc: ValueError) -> UsageError:
    """Numba's error for a threading layer it cannot start (several lines: ``No threading layer could
    be loaded.`` and a hint) as one line naming the setting: ``NUMBA_THREADING_LAYER`` (or
    ``NUMBA_THREADING_LAYER_PRIORITY``), or the ``numba.config`` attribute when it was set in code."""
    reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    attr, expected = "THREADING_LAYER", ("; expected omp, workqueue or default (tbb and safe need the tbb package), "
                                         "or leave it unset")
    if "THREADING_LAYER_PRIORITY" in reason:
        attr, expected = "THREADING_LAYER_PRIORITY", ""
    value = getattr(sys.modules["numba"].config, attr, None)
    raw = os.environ.get(f"NUMBA_{attr}")
    from_env = raw is not None and (raw.split() == value if isinstance(value, list) else raw == str(value))
    setting = f"NUMBA_{attr}={raw!r}" if from_env else f"numba.config.{attr}={value!r}"
    return UsageError(f"{setting}: Numba cannot start its threading layer ({reason}){expected}")


def cache_dir() -> str:
    """The Numba cache folder in use (configuring the default on first call)."""
    return _CACHE_DIR if _CACHE_DIR is not None else configure_cache()


def set_num_threads(n: int) -> int:
    """Set the thread count of both the Numba kernels and PyTorch's intra-op pool; returns the count used.

    ``n`` (an ``int`` or NumPy integer >= 1) is capped at Numba's pool size (``NUMBA_NUM_THREADS``,
    the number of available cores by default; fixed when Numba is imported), and PyTorch gets the
    same capped count; capping is warned about once per count. Numba's count applies to the calling thread
    (``numba.set_num_threads`` is per thread: call this in each thread that runs kernels), PyTorch's
    to the whole process.
    """
    n = check_int(n, "set_num_threads(n)", error=UsageError)
    configure_threading_layer()  # the fork guard is in place before Numba starts its threads
    numba = _import_numba()
    pool = int(numba.config.NUMBA_NUM_THREADS)
    used = min(n, pool)
    if used < n:
        _warn_once(("threads", n, pool), f"set_num_threads({n}): {_pool_origin(pool)}; "
                                         f"Numba and PyTorch use {used} threads")
    numba.set_num_threads(used)
    _import_torch().set_num_threads(used)
    return used


def _pool_origin(pool: int) -> str:
    """Why Numba's pool has ``pool`` threads, for the capping warning."""
    raw = os.environ.get("NUMBA_NUM_THREADS")
    if raw is not None:
        return f"NUMBA_NUM_THREADS={raw} limits Numba's pool to {pool} threads"
    return (f"Numba's pool has {pool} threads (the {pool} cores available here; NUMBA_NUM_THREADS, set before "
            "Numba is imported, changes it)")


def _import_torch():
    import torch

    return torch


def get_num_threads() -> dict:
    """``{"numba": n, "torch": n}``: the thread counts in use (Numba's: the calling thread's)."""
    return {"numba": _import_numba().get_num_threads(), "torch": _import_torch().get_num_threads()}


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
