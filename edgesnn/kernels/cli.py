"""``edgesnn warmup``: compile the fused kernels ahead of time into the Numba cache folder.

First-run JIT compilation takes seconds on a desktop and much longer on a Jetson; run this once
after installing (or in the image build) so that training starts at full speed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional, Union

__all__ = ["register", "warmup", "compile_notice"]


def compile_notice(backend: str = "auto") -> Optional[str]:
    """A one-line notice when the CPU kernels are about to be JIT-compiled (cold cache), else ``None``.

    Cheap: looks for Numba's index files of :mod:`edgesnn.kernels.numba_cpu` in the cache folder
    (see :func:`edgesnn.kernels.config.cache_dir`); compiles nothing.
    """
    if backend not in ("auto", "numba"):
        return None
    from .config import cache_dir
    from .dispatch import numba_available

    if not numba_available():
        return None
    folder = cache_dir()
    if not folder:
        return "compiling Numba kernels (~15 s; no writable cache folder, so every run compiles them)"
    if any(_own_cache(Path(folder)).glob("numba_cpu.*.nbi")):
        return None
    return f"compiling Numba kernels once (~15 s; cached in {folder}; `edgesnn warmup` does it ahead)"


def _own_cache(folder: Path) -> Path:
    """Where Numba keeps this installation's kernels inside ``folder``: a sub-folder named after the
    kernels' source folder and a hash of its path, so another checkout's or install's kernels (which
    it does not load) sit beside it (looking through all of ``folder`` hid a cold cache's notice)."""
    from numba.core.caching import _CacheLocator

    return folder / _CacheLocator.get_suitable_cache_subpath(str(Path(__file__).with_name("numba_cpu.py")))


def warmup(
    cache_dir: Optional[Union[str, Path]] = None,
    threads: Optional[int] = None,
    cuda: bool = False,
    verbose: bool = True,
) -> dict:
    """Compile (or load) every CPU kernel, and with ``cuda=True`` the CUDA kernels for this GPU.

    ``cache_dir``: the cache folder (``~`` expanded; ``None``: the folder
    :func:`edgesnn.kernels.config.configure_cache` picks); a one-line error when it cannot be
    written, or when this process already loaded the kernels with another folder. ``threads``: an
    integer >= 1 (NumPy integers too), capped at Numba's pool size like
    :func:`edgesnn.kernels.config.set_num_threads`.

    Returns ``{"cache_dir", "threads", "cpu_seconds", "cuda_seconds"}``.
    """
    from ..errors import UsageError, refuse_empty
    from ..functional.checks import check_int
    from . import config

    refuse_empty(cache_dir, "--cache-dir", "a folder path", " (drop the flag for the default folder)")
    if threads is not None:
        threads = check_int(threads, "--threads", error=UsageError)
    if cuda:  # before minutes of CPU compilation
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--cuda: no CUDA device visible to PyTorch on this machine; drop --cuda")
    config._check_numba_num_threads()
    path = config.configure_cache() if cache_dir is None else config._choose_cache(cache_dir, "--cache-dir")
    if threads is not None:
        config.set_num_threads(threads)
    t0 = time.perf_counter()
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
    info = {"cache_dir": path, "threads": config.get_num_threads(), "cpu_seconds": round(cpu_s, 2),
            "cuda_seconds": None if cuda_s is None else round(cuda_s, 2)}
    if verbose:
        print(json.dumps(info))
    return info


def _run(args: argparse.Namespace) -> int:
    warmup(args.cache_dir, args.threads, args.cuda)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``warmup`` subcommand to the ``edgesnn`` command line's ``subparsers``."""
    p = subparsers.add_parser("warmup", help="precompile the fused Numba (and CUDA) kernels into the JIT cache",
                              description=__doc__)
    p.add_argument("--cache-dir", default=None, help="Numba cache folder (default: $EDGESNN_CACHE_DIR, $NUMBA_CACHE_DIR or ~/.cache/edgesnn/numba)")
    p.add_argument("--threads", type=int, default=None, help="thread count for Numba and PyTorch")
    p.add_argument("--cuda", action="store_true", help="also compile the CUDA kernels (needs a GPU)")
    p.set_defaults(func=_run)
