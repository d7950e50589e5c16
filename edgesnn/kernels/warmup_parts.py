"""What ``edgesnn warmup`` compiles, in parts that share no cached kernel.

Each part calls the host wrappers of one or two ``cache=True`` kernels on tiny inputs, with the
argument types a training step passes (every specialisation used at run time). No two parts compile
the same kernel, so ``edgesnn warmup --jobs N`` can run them in separate processes writing into one
cache folder: Numba keeps one index file per kernel, which two processes saving at once could each
overwrite with their own entry. ``tests/test_warmup.py`` checks that every cached kernel is
compiled by exactly one part and that a training step after the warm-up compiles nothing.

Measured cold compile on the 2-core x86-64 VM (default optimisation level): RevLIF backward 27 s,
BatchNorm 15 s, LIF + 2x2 pool 12 s, LIF 11 s, RevLIF forward 10 s, bit packing 5 s.
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np
import torch

__all__ = ["PARTS", "run_part", "run_all"]


def _lif_params():
    """The two flag sets whose argument types cover every LIF node (the flags are run-time arguments)."""
    from ..functional.lif import LIFParams
    from ..functional.surrogate import ATan

    return (LIFParams(), LIFParams(v_reset=None, surrogate=ATan(), detach_reset=True, decay_input=False))


def _revlif_params():
    from ..functional.revlif import RevLIFParams

    return [RevLIFParams(lif=lp, mode=mode, **({} if mode == "exact" else {"beta": 0.75}))
            for lp in _lif_params() for mode in ("exact", "float")]


def _lif() -> None:
    from .numba_cpu import lif_backward, lif_forward

    x = torch.randn(9, 2, 2, 3)
    for lp in _lif_params():
        s, vT = lif_forward(x, torch.zeros(2, 2, 3), lp)
        lif_backward(x, torch.zeros(2, 2, 3), torch.ones_like(s), torch.zeros_like(vT), lp)


def _revlif_forward() -> None:
    from .numba_revlif import revlif_forward

    for rp in _revlif_params():
        revlif_forward(torch.randn(9, 2, 2, 3), torch.zeros(2, 2, 3), rp)


def _revlif_backward() -> None:
    """From stand-ins of the forward's outputs (its values do not matter to the compiler, and calling
    the forward here would compile it in this part too)."""
    from .numba_revlif import revlif_backward

    y = torch.randn(9, 2, 2, 3)
    for rp in _revlif_params():
        bits = torch.zeros(2, 2, 2, 3, dtype=torch.uint8) if rp.exact else None  # ceil(9 / 8) bytes per neuron
        revlif_backward(y, torch.zeros(2, 2, 3), bits, torch.ones_like(y), torch.zeros(2, 2, 3), rp)


def _lif_pool() -> None:
    from .numba_lif_pool import lif_pool2_backward, lif_pool2_forward

    z = torch.randn(3, 2, 4, 4)
    for lp in _lif_params():
        o, vT = lif_pool2_forward(z, torch.zeros(2, 4, 4), lp)
        lif_pool2_backward(z, torch.zeros(2, 4, 4), torch.ones_like(o), torch.zeros_like(vT), lp)


def _bits() -> None:
    from .numba_bits import pack_rows, unpack_rows

    for dt in (torch.float32, torch.float64):
        unpack_rows(pack_rows(torch.ones(2, 11, dtype=dt), torch.empty(2, 2, dtype=torch.uint8)), 11, dt)


def _batchnorm() -> None:
    """The exact BatchNorm statistics and gradients of :func:`edgesnn.optimize_memory`."""
    from .launch import launch
    from .numba_bn import grad_sums, input_grad_, seq_sqdev, seq_sum

    for dt in (np.float32, np.float64):
        a = np.ones((2, 3, 4), dtype=dt)
        c = np.ones(3, dtype=dt)
        grad_sums(a, a, np.zeros(3), np.zeros(3))
        input_grad_(a, a, c, c, c)
        launch(seq_sum)(a, np.zeros(3), 1)
        launch(seq_sqdev)(a, c, np.zeros(3), 1)


#: name -> part, longest cold compile first (the order a pool of workers should take them in)
PARTS: Dict[str, Callable[[], None]] = {
    "revlif-backward": _revlif_backward,
    "batchnorm": _batchnorm,
    "lif-pool": _lif_pool,
    "lif": _lif,
    "revlif-forward": _revlif_forward,
    "bits": _bits,
}


def run_part(name: str) -> str:
    """Compile (or load from the cache) the kernels of the part ``name``; returns ``name``."""
    PARTS[name]()
    return name


def run_all() -> Tuple[str, ...]:
    """Every part, in this process."""
    return tuple(run_part(name) for name in PARTS)
