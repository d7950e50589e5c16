"""One dispatch for the neuron time loops: ``backend="auto"|"torch"|"numba"|"cuda"|"reference"``.

``reference`` is the store-everything plain-autograd loop (the oracle, and what the exporters
trace: only standard ops). ``torch`` is the memory-lean hand-written backward in PyTorch ops.
``numba`` runs the fused CPU kernels (:mod:`edgesnn.kernels.numba_cpu`) and ``cuda`` the fused
CUDA kernels (:mod:`edgesnn.kernels.cuda_kernels`), both as ``torch.library`` custom ops
(:mod:`edgesnn.kernels.custom_ops`) so that ``torch.compile(fullgraph=True)`` works (eager calls
run the same functions without the op dispatch).

``auto`` picks ``numba`` for float32 CPU tensors and ``cuda`` for float32 CUDA tensors, and falls
back to ``torch`` where no kernel applies (other dtypes, any surrogate other than exactly
``Sigmoid`` / ``ATan`` (subclasses included: they may override ``grad``), Numba or numba-cuda
missing). Every backend computes the same values as the reference (spikes, outputs and states bit
for bit for the fused kernels) and the same gradients up to float rounding.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Optional, Tuple, Union

import torch

from ..functional import lif as _lif
from ..functional import revlif_autograd as _rev
from ..functional.checks import all_finite, check_finite_input, check_params, check_sequence, check_state, eager
from ..functional.grid import straight_through, to_grid
from ..functional.lif import LIFParams, ResetRule
from ..functional.second_order import forward_ad_refused, under_forward_ad, under_vmap, vmap_refused
from ..functional.revlif import RevLIFParams, from_groups, revlif_initial_state, revlif_multistep_reference, to_groups
from ..functional.surrogate import ATan, Sigmoid
from . import custom_ops as _ops
from .config import forked_child_message, numba_threads_usable

__all__ = ["BACKENDS", "resolve_backend", "lif_multistep", "revlif_multistep", "numba_available", "cuda_available",
           "refuse_transforms"]

BACKENDS = ("auto", "torch", "numba", "cuda", "reference")
#: The surrogates the fused kernels implement, by exact type: a subclass (which may override
#: ``grad``) or any other surrogate runs the torch path, which calls its own ``grad``.
_KERNEL_SURROGATES = (Sigmoid, ATan)


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _has_subpackage(package: str, name: str) -> bool:
    """``package.name`` is installed, found without importing ``package`` (``find_spec`` of a
    submodule imports its parent: Numba, ~0.5 s and its environment parsing, before
    :func:`~edgesnn.kernels.config.configure` has checked the settings)."""
    if not _has_module(package):
        return False
    roots = importlib.util.find_spec(package).submodule_search_locations or ()
    return any(os.path.isfile(os.path.join(root, name, "__init__.py")) for root in roots)


_NUMBA = _has_module("numba")
# numba-cuda, else the CUDA target older Numba releases carry in-tree.
_NUMBA_CUDA = _has_module("numba_cuda") or (_NUMBA and _has_subpackage("numba", "cuda"))


def numba_available() -> bool:
    """Numba is importable and its threads can run here (the CPU kernels can run; ``False`` in a
    child forked after Numba's OpenMP threads started, see
    :func:`edgesnn.kernels.config.configure_threading_layer`)."""
    return _NUMBA and numba_threads_usable()


def cuda_available() -> bool:
    """numba-cuda is importable (the CUDA kernels can be compiled)."""
    return _NUMBA_CUDA


def _kernel_surrogate(lif) -> bool:
    return lif is None or type(lif.surrogate) in _KERNEL_SURROGATES


def _kernel_applies(x: torch.Tensor, p) -> bool:
    lif = p.lif if isinstance(p, RevLIFParams) else p
    return x.dtype == torch.float32 and _kernel_surrogate(lif)


def resolve_backend(backend: str, x: torch.Tensor, p: Optional[Union[LIFParams, RevLIFParams]] = None) -> str:
    """The concrete backend (``"reference"``, ``"torch"``, ``"numba"`` or ``"cuda"``) that ``backend`` names for
    ``x``: ``"auto"`` resolved, any other name returned as it is (whether it can run ``x`` is checked when it
    runs: a fused kernel refuses other dtypes or surrogates in one line).

    Args:
        backend: one of :data:`BACKENDS`.
        x: the input, any shape (its device and dtype decide ``auto``).
        p: optional :class:`LIFParams` / :class:`RevLIFParams` (for ``auto``, a custom surrogate rules the
            kernels out).
    """
    if backend not in BACKENDS:
        hint = "; SpikingJelly's GPU backends map to 'cuda' (or 'auto')" if backend in ("cupy", "triton") else ""
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}{hint}")
    if backend != "auto":
        return backend
    if not _kernel_applies(x, p):
        return "torch"
    if x.device.type == "cpu" and numba_available():
        return "numba"
    if x.device.type == "cuda" and cuda_available():
        return "cuda"
    return "torch"


def _check_kernel_input(name: str, x: torch.Tensor, p) -> None:
    if not _kernel_applies(x, p):
        lif = p.lif if isinstance(p, RevLIFParams) else p
        raise TypeError(
            f"backend={name!r}: the fused kernels run float32 tensors with exactly the built-in Sigmoid or ATan surrogate "
            f"(not a subclass), got {str(x.dtype).replace('torch.', '')} with surrogate {type(lif.surrogate).__name__}"
            f"({lif.surrogate.name!r}); use backend='torch' or 'auto'"
        )
    if name == "numba" and x.device.type != "cpu":
        raise TypeError(f"backend='numba' runs CPU tensors, got a tensor on {x.device}; use backend='cuda' or 'auto'")
    if name == "numba" and not _NUMBA:
        raise RuntimeError("backend='numba' needs the numba package (pip install numba)")
    if name == "numba" and not numba_threads_usable():
        raise RuntimeError(forked_child_message("backend='numba'"))
    if name == "cuda" and not cuda_available():
        raise RuntimeError("backend='cuda' needs numba-cuda (pip install 'edgesnn[cuda]')")


def _lif_kernel(name: str, x_seq: torch.Tensor, p: LIFParams, v0: Optional[torch.Tensor]):
    check_sequence(x_seq)
    check_state(v0, x_seq)
    _check_kernel_input(name, x_seq, p)
    if v0 is None:
        v0 = _lif.initial_state(x_seq[0], p)
    s, v_T = _ops.lif_apply(_kernel_input(x_seq), v0.contiguous(), *_ops.lif_params_args(p), name)
    return s, v_T


def _kernel_input(x_seq: torch.Tensor) -> torch.Tensor:
    """``x_seq [T, B, ...]`` as the LIF and RevLIF ops take it (the Numba and CUDA kernels): contiguous,
    except an eager input that is the same at every step (stride 0 along T,
    ``x.unsqueeze(0).expand(T, ...)``), which goes in as it is, with or without a gradient: the
    kernels read its first step at every step. With a gradient, the LIF op's autograd keeps the
    expanded view (one step's bytes) instead of a ``[T, B, ...]`` copy until the backward; RevLIF saves
    its output, not its input, so there, as for both without a gradient (a model whose first layer
    is the node: ``evaluate()``, a frozen encoder), the copy was the forward's transient. RevLIF's
    grouped view keeps the stride 0 when the step reshapes without a copy (else
    :func:`~edgesnn.functional.revlif.to_groups` copies as before). Same outputs and gradients, bit
    for bit."""
    if x_seq.stride(0) == 0 and x_seq.shape[0] > 1 and eager():  # the cheap layout test first: this runs on every call
        return x_seq
    return x_seq.contiguous()


def _revlif_kernel(name: str, x_seq: torch.Tensor, p: RevLIFParams, v0: Optional[torch.Tensor]):
    check_sequence(x_seq, dtypes=(torch.float32, torch.float64))
    check_state(v0, x_seq)
    _check_kernel_input(name, x_seq, p)
    xg = to_groups(_kernel_input(x_seq), p.groups)
    # the backward always verifies the reconstructed initial state: against the fresh state (1) or
    # against the given one (2: kept by the op, on the grid in exact mode, bit for bit)
    if v0 is None:
        v0g = revlif_initial_state(xg[0], p)
        verify = 1
    else:
        v0g = to_groups(v0.contiguous(), p.groups, 1, "v0")
        if p.exact:
            _check_finite_state(x_seq, v0)  # before the straight-through step turns +-Inf into NaN
            v0g = straight_through(to_grid(v0g), v0g)
        verify = 2
    y, v_T, _, _ = _ops.revlif_apply(xg, v0g.contiguous(), verify, *_ops.revlif_params_args(p), name)
    return from_groups(y, x_seq.shape), from_groups(v_T, x_seq.shape[1:])


def _check_finite_state(x_seq: torch.Tensor, v0: torch.Tensor) -> None:
    """Eager: a non-finite ``v0 [B, ...]`` raises the NaN / +-Inf counts of the value the caller gave
    (one ``aminmax`` over ``v0``; a non-finite ``x_seq`` is named first, as the ops do). Skipped
    inside a CUDA graph capture, like the ops' checks."""
    if eager() and not _ops._capturing(v0) and not all_finite(v0):
        check_finite_input(x_seq, "x_seq", "RevLIF")
        check_finite_input(v0, "v0", "RevLIF")


def refuse_transforms(x_seq: torch.Tensor, layer: str, backend: str, v0: Optional[torch.Tensor] = None,
                      params: Tuple[object, ...] = ()) -> None:
    """One line for ``torch.func.vmap`` over a node and for forward-mode AD through it (``x_seq``,
    ``v0`` or a tensor among ``params``, e.g. a learnable decay, carrying a tangent), on every
    backend: the kernels run whole batches and the PyTorch loops check values with Python branches,
    which vmap cannot batch; a spike's surrogate has no tangent rule (the reference backend's step
    function would give a silently zero one)."""
    if not isinstance(x_seq, torch.Tensor) or torch.compiler.is_compiling():  # (the compiler traces no wrappers)
        return
    tensors = [t for t in (x_seq, v0, *params) if isinstance(t, torch.Tensor)]
    batched = any(under_vmap(t) for t in tensors)  # (a learnable decay batched by model ensembling, too)
    dual = not batched and any(under_forward_ad(t) for t in tensors)
    if (batched or dual) and eager():  # (eager(): the dearer check, only once one of them holds)
        raise vmap_refused(layer, backend) if batched else forward_ad_refused(layer, backend)


def lif_multistep(
    x_seq: torch.Tensor, p: LIFParams, v0: Optional[torch.Tensor] = None, backend: str = "auto"
) -> Tuple[torch.Tensor, torch.Tensor]:
    """LIF over ``x_seq [T, B, ...]`` on the chosen backend; returns ``(s_seq, v_T)``."""
    check_params(p, ResetRule, "LIFParams")  # (a surrogate name here was an AttributeError)
    name = resolve_backend(backend, x_seq, p)
    refuse_transforms(x_seq, "LIF", name, v0)
    if name == "reference":
        return _lif.lif_multistep_reference(x_seq, p, v0)
    if name == "torch":
        return _lif.lif_multistep(x_seq, p, v0)
    return _lif_kernel(name, x_seq, p, v0)


def revlif_multistep(
    x_seq: torch.Tensor, p: RevLIFParams, v0: Optional[torch.Tensor] = None, backend: str = "auto"
) -> Tuple[torch.Tensor, torch.Tensor]:
    """RevLIF over ``x_seq [T, B, C, ...]`` on the chosen backend; returns ``(y_seq, v_T)``."""
    check_params(p, RevLIFParams, "RevLIFParams")
    name = resolve_backend(backend, x_seq, p)
    refuse_transforms(x_seq, "RevLIF", name, v0)
    if name == "reference":
        return revlif_multistep_reference(x_seq, p, v0)
    if name == "torch":
        return _rev.revlif_multistep(x_seq, p, v0)
    return _revlif_kernel(name, x_seq, p, v0)
