"""``edgesnn warmup``: compile the fused kernels ahead of time into the Numba cache folder.

First-run JIT compilation takes seconds on a desktop and much longer on a Jetson; run this once
after installing (or in the image build) so that training starts at full speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, List, Optional, Sequence, Tuple, Union

if TYPE_CHECKING:
    import concurrent.futures

__all__ = ["register", "warmup", "compile_notice", "neuron_kernel_modules", "memopt_kernel_modules", "default_jobs"]

#: memory set aside per compile worker (each imports PyTorch and runs LLVM: ~0.5 GB measured)
_WORKER_BYTES = 2**30


#: the cached kernel module each neuron kind of ``edgesnn train --neuron`` runs on the Numba backend
_NEURON_KERNEL_MODULES = {"lif": "numba_cpu", "revlif": "numba_revlif"}


def _neuron_kind(spec: object) -> str:
    """A ``--neuron`` spec's kind, unchecked: ``"RevLIF:4"`` -> ``"revlif"`` (an unknown kind is
    returned as it is, for the callers to skip; ``models.parse_neuron_spec`` is the validating parse)."""
    return str(spec).strip().lower().partition(":")[0]


def neuron_kernel_modules(neuron: Union[str, Sequence[str]] = "lif") -> Tuple[str, ...]:
    """The cached kernel modules (:data:`~edgesnn.kernels.cache_key.CACHED_KERNEL_MODULES`) that the
    nodes of a ``--neuron`` spec compile: ``"lif"`` -> ``("numba_cpu",)``, ``"revlif:4"`` ->
    ``("numba_revlif",)``; a list (one spec per spiking layer) gives each kind once, in that order."""
    specs = [neuron] if isinstance(neuron, str) else list(neuron)
    kinds = [_neuron_kind(spec) for spec in specs]
    return tuple(dict.fromkeys(_NEURON_KERNEL_MODULES[k] for k in kinds if k in _NEURON_KERNEL_MODULES))


def memopt_kernel_modules(model: str, neuron: Union[str, Sequence[str]], widths: Sequence[int] = (),
                          batchnorm: bool = True, pool: str = "avg", backend: str = "auto") -> Tuple[str, ...]:
    """The cached kernel modules that ``edgesnn train --memopt`` (:func:`edgesnn.optimize_memory`)
    can compile on the CPU for a built-in model, beside its neurons' (:func:`neuron_kernel_modules`).

    ``model``: ``"mlp"``, ``"convnet"`` or ``"vgg11"``; ``neuron``: one spec or one per spiking
    layer; ``widths``: the mlp's hidden widths or the convnet's channels (one spiking layer each;
    vgg11 has its fixed 8); ``batchnorm``, ``pool`` (``"avg"`` / ``"max"``), ``backend``: the run's.
    The rule: a module the model's layers can use, checked against the kernels that hold compiled
    code after one optimized training step of every built-in model (LIF / RevLIF / mixed, with and
    without BatchNorm, both pools):

    * ``numba_bn``: the model has BatchNorm, whatever the neuron or ``backend``;
    * ``numba_bits``: a LIF layer that is not the last spiking layer (its spikes are the next block's
      input, stored bit-packed), whatever ``backend``; RevLIF outputs are not packed;
    * ``numba_lif_pool``: ``pool`` ``"max"``, ``backend`` ``auto`` / ``numba``, and a LIF layer right
      before a 2x2 pool that more conv layers follow (vgg11's first four pools; the convnet's one pool
      is followed by the classifier, so that block is not fused).

    "Can use", not "will": whether a block calls the BatchNorm kernels also depends on the memory
    plan's strategy and the layer's shape (a one-layer mlp's BatchNorm1d block compiled none of
    them), so such a run may see the notice when nothing compiles; ``edgesnn warmup`` compiles
    every module and ends that. The modules are imported more widely (an mlp's memopt imports
    ``numba_lif_pool`` without calling it), but only a called kernel leaves index files.
    """
    from ..models import layer_layout

    layout = layer_layout(model, widths)
    convs = [i for i, item in enumerate(layout) if item != "M"]  # the spiking layers' positions
    specs = [neuron] * len(convs) if isinstance(neuron, str) else list(neuron)
    lif = [_neuron_kind(spec) == "lif" for spec in specs]
    out = ["numba_bn"] if batchnorm else []
    if any(lif[:-1]):
        out.append("numba_bits")
    fused = [k for k, i in enumerate(convs) if i + 2 < len(layout) and layout[i + 1] == "M"]
    if pool == "max" and backend in ("auto", "numba") and any(lif[k] for k in fused if k < len(lif)):
        out.append("numba_lif_pool")
    return tuple(out)


def compile_notice(backend: str = "auto", neuron: Union[str, Sequence[str]] = "lif",
                   memopt_modules: Sequence[str] = ()) -> Optional[str]:
    """A one-line notice when the CPU kernels are about to be JIT-compiled (cold cache), else ``None``.

    Cheap: looks for Numba's index files of the kernel modules that ``neuron``'s nodes run (see
    :func:`neuron_kernel_modules`; only for ``backend`` ``auto`` / ``numba``) and of
    ``memopt_modules`` (a ``--memopt`` run's, :func:`memopt_kernel_modules`, which compile whatever
    the backend) in the cache folder (see :func:`edgesnn.kernels.config.cache_dir`); compiles
    nothing. Each module has its own files: a LIF run fills only ``numba_cpu``'s and a plain run none
    of memopt's, so one run's warm cache says nothing about another's modules.
    """
    modules = (neuron_kernel_modules(neuron) if backend in ("auto", "numba") else ()) + tuple(memopt_modules)
    if not modules:
        return None
    from .config import cache_dir
    from .dispatch import numba_available

    if not numba_available():
        return None
    folder = cache_dir()
    if not folder:
        return "compiling Numba kernels (~5-40 s; no writable cache folder, so every run compiles them)"
    own = _own_cache(Path(folder))
    if all(any(own.glob(f"{module}.*.nbi")) for module in modules):
        return None
    return f"compiling Numba kernels once (~5-40 s; cached in {folder}; `edgesnn warmup` does it ahead)"


def _own_cache(folder: Path) -> Path:
    """Where Numba keeps this installation's kernels inside ``folder``: a sub-folder named after the
    kernels' source folder and a hash of its path, so another checkout's or install's kernels (which
    it does not load) sit beside it (looking through all of ``folder`` hid a cold cache's notice).
    Imports Numba after checking ``NUMBA_NUM_THREADS`` (one line naming it, not Numba's own error)."""
    from .config import _import_numba

    _import_numba()
    from numba.core.caching import _CacheLocator

    return folder / _CacheLocator.get_suitable_cache_subpath(str(Path(__file__).with_name("numba_cpu.py")))


def default_jobs() -> int:
    """Compile processes ``edgesnn warmup`` starts by default: one per core this process may use, at
    most one per GiB of physical memory and one per part (:data:`~edgesnn.kernels.warmup_parts.PARTS`)."""
    from ..memory_guard import physical_memory
    from .warmup_parts import PARTS

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    memory = physical_memory()
    return max(1, min(cores, len(PARTS), cores if memory is None else memory // _WORKER_BYTES))


def _cache_filled(folder: str) -> bool:
    """Every kernel module has compiled code in ``folder`` (a warm cache: loading it takes a second
    or two, less than starting compile processes would)."""
    from .cache_key import CACHED_KERNEL_MODULES

    own = _own_cache(Path(folder))
    return all(any(own.glob(f"{module}.*.nbi")) for module in CACHED_KERNEL_MODULES)


def _compile_part(name: str, folder: str) -> str:
    """In a compile process: use the parent's cache ``folder`` and one thread, compile part ``name``."""
    from . import config
    from .warmup_parts import run_part

    config._choose_cache(folder, "--cache-dir")
    config.set_num_threads(1)
    return run_part(name)


def _compile_in_processes(folder: str, jobs: int) -> int:
    """Compile the parts into ``folder`` in ``jobs`` spawned processes (fresh interpreters: no forked
    OpenMP or PyTorch threads), longest first; returns the processes started (at most one per part).
    A process that dies (e.g. killed for memory) leaves its part to this process, which compiles
    whatever is still missing next.

    The compile processes end with this one: they never see Ctrl-C themselves (no tracebacks of
    theirs), Ctrl-C here stops them at once (``KeyboardInterrupt``, instead of waiting for the parts
    handed out), and on Linux they are killed when this process dies (``kill PID``, the
    out-of-memory killer), where they would otherwise wait forever for more work, ~0.5 GB each."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from .warmup_parts import PARTS

    workers = min(jobs, len(PARTS))
    interrupted: List[int] = []  # the SIGINTs received while the compile processes ran
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_compile_worker_start, initargs=(os.getpid(),)) as pool:
            with _ctrl_c_stops(pool, interrupted):
                with _sigint_blocked():  # the processes start in map() and keep this thread's signal mask
                    results = pool.map(_compile_part, PARTS, [folder] * len(PARTS))
                list(results)
    except BrokenProcessPool:
        if not interrupted:
            warnings.warn("edgesnn warmup: a compile process died (out of memory?); compiling the rest in this "
                          "process (--jobs 1 does it all here)", RuntimeWarning, stacklevel=3)
    if interrupted:
        raise KeyboardInterrupt
    return workers


@contextlib.contextmanager
def _ctrl_c_stops(pool: "concurrent.futures.ProcessPoolExecutor", interrupted: List[int]) -> Iterator[None]:
    """In the block, Ctrl-C (SIGINT) terminates ``pool``'s processes and appends to ``interrupted``:
    the pool then breaks, which the caller turns into ``KeyboardInterrupt``. Only where SIGINT has
    Python's default handler, in the main thread (elsewhere nothing changes)."""
    import threading

    in_main = threading.current_thread() is threading.main_thread()
    if not in_main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def stop(signum: int, frame: object) -> None:
        interrupted.append(signum)
        _stop_workers(pool)

    signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread for the block (where signal masks exist): processes started in it
    inherit the mask and never get Ctrl-C; one that reaches this process meanwhile is delivered after."""
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - Windows
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _compile_worker_start(parent: int) -> None:
    """First thing in a compile process: on Linux, have the kernel kill it when the warm-up process
    ``parent`` (its pid) ends (``prctl(PR_SET_PDEATHSIG, SIGKILL)``), and end at once if it already has."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - no prctl in this C library
        return
    if os.getppid() != parent:
        os._exit(1)


def _stop_workers(pool: "concurrent.futures.ProcessPoolExecutor") -> None:
    """Terminate ``pool``'s processes (SIGTERM) without waiting for their work: the pool breaks, and
    its pending and running calls fail with ``BrokenProcessPool``."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()


def warmup(
    cache_dir: Optional[Union[str, Path]] = None,
    threads: Optional[int] = None,
    cuda: bool = False,
    verbose: bool = True,
    jobs: Optional[int] = None,
) -> dict:
    """Compile (or load) every CPU kernel, and with ``cuda=True`` the CUDA kernels for this GPU.

    ``cache_dir``: the cache folder (``~`` expanded; ``None``: the folder
    :func:`edgesnn.kernels.config.configure_cache` picks); a one-line error when it cannot be
    written, or when this process already loaded the kernels with another folder. ``threads``: an
    integer >= 1 (NumPy integers too), capped at Numba's pool size like
    :func:`edgesnn.kernels.config.set_num_threads`. ``jobs``: compile processes for a cold cache
    (an integer >= 1; ``None``: :func:`default_jobs`); the parts of
    :mod:`edgesnn.kernels.warmup_parts` are spread over them, then this process loads every kernel
    (with ``jobs=1``, or a warm cache, or no cache folder, it compiles or loads them itself).

    Returns ``{"cache_dir", "threads", "jobs", "cpu_seconds", "cuda_seconds"}`` (``jobs``: the
    compile processes started, 0 when none was).
    """
    from ..errors import UsageError, refuse_empty
    from ..functional.checks import check_int
    from . import config

    refuse_empty(cache_dir, "--cache-dir", "a folder path", " (drop the flag for the default folder)")
    if threads is not None:
        threads = check_int(threads, "--threads", error=UsageError)
    jobs = default_jobs() if jobs is None else check_int(jobs, "--jobs", error=UsageError)
    if cuda:  # before minutes of CPU compilation
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--cuda: no CUDA device visible to PyTorch on this machine; drop --cuda")
    config._check_numba_num_threads()
    path = config.configure_cache() if cache_dir is None else config._choose_cache(cache_dir, "--cache-dir")
    if threads is not None:
        config.set_num_threads(threads)
    t0 = time.perf_counter()
    started = 0
    if jobs > 1 and path and not _cache_filled(path):
        started = _compile_in_processes(path, jobs)
    from . import numba_cpu

    numba_cpu.warmup()
    cpu_s = time.perf_counter() - t0
    cuda_s = None
    if cuda:
        import torch

        from .dispatch import lif_multistep, revlif_multistep
        from ..functional.lif import LIFParams
        from ..functional.revlif import RevLIFParams

        t1 = time.perf_counter()
        x = torch.randn(9, 2, 8, device="cuda", requires_grad=True)
        s, _ = lif_multistep(x, LIFParams(), backend="cuda")
        y, _ = revlif_multistep(x, RevLIFParams(), backend="cuda")
        (s.sum() + y.sum()).backward()
        torch.cuda.synchronize()
        cuda_s = time.perf_counter() - t1
    info = {"cache_dir": path, "threads": config.get_num_threads(), "jobs": started, "cpu_seconds": round(cpu_s, 2),
            "cuda_seconds": None if cuda_s is None else round(cuda_s, 2)}
    if verbose:
        print(json.dumps(info))
    return info


def _run(args: argparse.Namespace) -> int:
    warmup(args.cache_dir, args.threads, args.cuda, jobs=args.jobs)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``warmup`` subcommand to the ``edgesnn`` command line's ``subparsers``."""
    p = subparsers.add_parser("warmup", help="precompile the fused Numba (and CUDA) kernels into the JIT cache",
                              description=__doc__.replace("``", ""))
    p.add_argument("--cache-dir", default=None,
                   help="Numba cache folder; the kernels go in a sub-folder per version of their sources (default: "
                        "$EDGESNN_CACHE_DIR, $NUMBA_CACHE_DIR or ~/.cache/edgesnn/numba)")
    p.add_argument("--threads", type=int, default=None,
                   help="thread count for Numba and PyTorch, >= 1, capped at Numba's pool size (default: Numba's and "
                        "PyTorch's own counts)")
    p.add_argument("--cuda", action="store_true", help="also compile the CUDA kernels (needs a GPU)")
    p.add_argument("--jobs", type=int, default=None,
                   help="compile processes for a cold cache, >= 1 (default: one per core, at most one per GiB of memory "
                        "and one per kernel part, 6)")
    p.set_defaults(func=_run)
