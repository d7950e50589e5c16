"""One dispatch for the neuron time loops: ``backend="auto"|"torch"|"numba"|"cuda"|"reference"``.

``reference`` is the store-everything plain-autograd loop (the oracle, and what the exporters
trace: only standard ops). ``torch`` is the memory-lean hand-written backward in PyTorch ops.
``auto`` picks the fused Numba kernel for CPU tensors and the CUDA kernel for CUDA tensors, and
falls back to the PyTorch reference where no kernel applies. Every backend computes the same
values as the reference (spikes bit for bit) and the same gradients up to float rounding.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..functional import lif as _lif
from ..functional import revlif_autograd as _rev
from ..functional.lif import LIFParams
from ..functional.revlif import RevLIFParams, revlif_multistep_reference

__all__ = ["BACKENDS", "resolve_backend", "lif_multistep", "revlif_multistep"]

BACKENDS = ("auto", "torch", "numba", "cuda", "reference")


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    """The concrete backend (``"reference"``, ``"torch"``, ``"numba"`` or ``"cuda"``) that runs ``x``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "torch"
    return backend


def lif_multistep(
    x_seq: torch.Tensor, p: LIFParams, v0: Optional[torch.Tensor] = None, backend: str = "auto"
) -> Tuple[torch.Tensor, torch.Tensor]:
    """LIF over ``x_seq [T, B, ...]`` on the chosen backend; returns ``(s_seq, v_T)``."""
    name = resolve_backend(backend, x_seq)
    if name == "reference":
        return _lif.lif_multistep_reference(x_seq, p, v0)
    if name == "torch":
        return _lif.lif_multistep(x_seq, p, v0)
    raise NotImplementedError(f"backend {name!r} is not available")


def revlif_multistep(
    x_seq: torch.Tensor, p: RevLIFParams, v0: Optional[torch.Tensor] = None, backend: str = "auto"
) -> Tuple[torch.Tensor, torch.Tensor]:
    """RevLIF over ``x_seq [T, B, C, ...]`` on the chosen backend; returns ``(y_seq, v_T)``."""
    name = resolve_backend(backend, x_seq)
    if name == "reference":
        return revlif_multistep_reference(x_seq, p, v0)
    if name == "torch":
        return _rev.revlif_multistep(x_seq, p, v0)
    raise NotImplementedError(f"backend {name!r} is not available")
