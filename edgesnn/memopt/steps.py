"""Per-chunk building blocks of a chunked block: apply per-step layers, run the node, back-propagate one chunk.

Shapes: a chunk is ``[k, B, ...]`` (time-major); per-step layers see it merged to ``[k * B, ...]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..functional.lif import initial_state as lif_initial_state
from ..kernels import dispatch
from ..nn import LIF
from .batchnorm import batch_stats_mode, bn_static
from .layers import Step, pair, runs_plain_forward
from .linear_post import linear_post, post_input_grad

if TYPE_CHECKING:  # pragma: no cover
    from .block import Block

__all__ = ["apply_steps", "apply_over_time", "merge_time", "split_time", "run_node", "run_node_post", "apply_static", "apply_recompute",
           "node_chunk_backward", "node_backward_time_sum", "fused_kind"]


def apply_steps(steps: List[Step], x: torch.Tensor) -> torch.Tensor:
    """Run a block's stateless layers in order on ``x [k*B, ...]`` (time merged into the batch)."""
    for s in steps:
        x = s.run(x)
    return x


def merge_time(x: torch.Tensor) -> torch.Tensor:
    """``[k, B, ...] -> [k*B, ...]`` (a view when ``x`` is contiguous)."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def split_time(x: torch.Tensor, k: int) -> torch.Tensor:
    """``[k*B, ...] -> [k, B, ...]``, the inverse of :func:`merge_time`."""
    return x.reshape(k, x.shape[0] // k, *x.shape[1:])


def apply_over_time(steps: List[Step], x: torch.Tensor) -> torch.Tensor:
    """A block's stateless layers on ``x [k, B, ...]``, time merged into the batch and split again:
    ``[k, B, ...]`` out. With no layers (the node reads the block's input) ``x`` itself: an input
    repeated over time (stride 0) is not copied by the merge, and the node's kernels read it as it is."""
    if not steps:
        return x
    return split_time(apply_steps(steps, merge_time(x)), x.shape[0])


def run_node(node: nn.Module, z: torch.Tensor, v0: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The node (LIF or RevLIF) over ``z [k, B, ...]`` from state ``v0 [B, ...]`` (``None``: fresh):
    ``(spikes or outputs [k, B, ...], v_k [B, ...])``."""
    if isinstance(node, LIF):
        return dispatch.lif_multistep(z, node.params, v0, node.backend)
    return dispatch.revlif_multistep(z, node.params, v0, node.backend)


def _pool2(post: List[Step]) -> bool:
    """``post`` is one 2x2, stride-2 max-pool without padding (what the fused kernels implement)."""
    if len(post) != 1 or not isinstance(post[0].module, nn.MaxPool2d):
        return False
    m = post[0].module
    if not runs_plain_forward(post[0], nn.MaxPool2d):
        return False  # its own forward, or hooks: run it as it is
    return (pair(m.kernel_size) == (2, 2) and pair(m.stride if m.stride is not None else m.kernel_size) == (2, 2)
            and pair(m.padding) == (0, 0) and pair(m.dilation) == (1, 1) and not m.ceil_mode and not m.return_indices)


def fused_kind(node: nn.Module, post: List[Step], z: torch.Tensor) -> Optional[str]:
    """Which fused CPU kernel runs node + post on ``z [k, B, ...]``: ``"pool2"`` (LIF then a 2x2
    max-pool), ``"lif"`` (LIF alone: its Numba kernels called directly), ``"lif_linear"`` (LIF
    kernels, then layers that are linear maps, such as an average pool: their backward needs no
    spikes, :mod:`edgesnn.memopt.linear_post`), or ``None`` (the node's own path + the layers)."""
    if type(node) is not LIF or z.dtype != torch.float32 or z.device.type != "cpu":
        return None
    if dispatch.resolve_backend(node.backend, z, node.params) != "numba" or not dispatch.numba_available():
        return None
    if not post:
        return "lif"
    if _pool2(post) and z.dim() == 5 and z.shape[-1] >= 2 and z.shape[-2] >= 2:
        return "pool2"
    if linear_post(post):
        return "lif_linear"
    return None


def run_node_post(
    node: nn.Module, post: List[Step], z: torch.Tensor, v0: Optional[torch.Tensor]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Node then the layers after it on ``z [k, B, ...]`` (no autograd): ``(output, v_T)``; a LIF
    followed by a 2x2 max-pool runs as one fused kernel (bit-identical, no full-size spikes), a LIF
    alone or before linear layers as its Numba kernel (no custom-op dispatch).

    As the node's own forward: inside ``torch.autocast`` ``z`` is cast to float32, ``check_finite``
    scans it, and a membrane state that overflowed the dtype raises a one-line
    :class:`~edgesnn.functional.checks.NonFiniteInputError` (else its spikes would silently stop)."""
    z = node._node_input(z)
    o, v_T = _node_post(node, post, z, v0)
    node._check_state_finite(v_T, z)
    return o, v_T


def _node_post(
    node: nn.Module, post: List[Step], z: torch.Tensor, v0: Optional[torch.Tensor]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`run_node_post` on an input already prepared by the node."""
    k = z.shape[0]
    kind = fused_kind(node, post, z) if not torch.is_grad_enabled() else None
    if kind is not None:
        # the kernels read an input expanded over time (a repeated-input block) without a copy
        from ..kernels.numba_cpu import lif_forward
        from ..kernels.numba_lif_pool import lif_pool2_forward

        v = v0 if v0 is not None else lif_initial_state(z[0], node.params)
        fin: list = []
        o, v_T = (lif_pool2_forward if kind == "pool2" else lif_forward)(z, v, node.params, finite=fin)
        if fin == [True]:
            if kind == "lif_linear":
                o = split_time(apply_steps(post, merge_time(o)), k)
            return o, v_T
    s, v_T = run_node(node, z, v0)
    return (split_time(apply_steps(post, merge_time(s)), k) if post else s), v_T


def apply_static(steps: List[Step], x0: torch.Tensor, T: int, update: bool) -> torch.Tensor:
    """A block's layers on one copy ``x0 [B, ...]`` of an input repeated ``T`` times; a BatchNorm
    with batch statistics uses the statistics of the ``T`` copies (``update``: and updates its
    running statistics as a ``[T*B, ...]`` batch would)."""
    for s in steps:
        x0 = bn_static(s.module, x0, T, update) if s.kind == "bn" and batch_stats_mode(s.module) else s.run(x0)
    return x0


def apply_recompute(steps: List[Step], x: torch.Tensor) -> torch.Tensor:
    """The layers as in forward on ``x [k*B, ...]`` (time merged into the batch), but BatchNorm from the
    batch itself without touching running stats."""
    for s in steps:
        if s.kind == "bn" and batch_stats_mode(s.module):
            bn = s.module
            x = F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
        else:
            x = s.run(x)
    return x


def node_chunk_backward(
    block: "Block", z: torch.Tensor, v0: Optional[torch.Tensor], g_out: torch.Tensor,
    g_v: Optional[torch.Tensor], post_needed: bool = True,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Back-propagate one chunk through node and post layers; returns ``(dz, dv0)``.

    A LIF alone, or followed by a 2x2 max-pool or by linear layers (average pooling, flatten), runs
    its fused backward kernel, which recomputes the membrane potential itself (no forward under
    autograd, no spikes; before linear layers their input gradient is made from the pooled one)."""
    k = z.shape[0]
    kind = fused_kind(block.node, block.post, z)
    if kind is not None:
        out = _fused_backward(kind, block.node, block.post, z, v0, g_out, g_v)
        if out is not None:
            return out
    zl = z.detach().requires_grad_(True)
    v0l = v0.detach().requires_grad_(True) if v0 is not None else None
    with torch.enable_grad():
        s, v_T = run_node(block.node, zl, v0l)
        o = split_time(apply_steps(block.post, merge_time(s)), k) if block.post else s
        outs, grads = [o], [g_out]
        if g_v is not None:
            outs.append(v_T)
            grads.append(g_v)
        torch.autograd.backward(outs, grads)
    return zl.grad, (v0l.grad if v0l is not None else None)


def node_backward_time_sum(
    block: "Block", z0: torch.Tensor, k: int, v0: Optional[torch.Tensor], g_out: torch.Tensor,
    g_v: Optional[torch.Tensor], dz0: torch.Tensor,
) -> Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """Node and post layers back-propagated over ``k`` steps of one input ``z0 [B, ...]`` repeated
    at every step; the node input gradient summed over the ``k`` steps is added to ``dz0`` in place
    (the kernel sums as it goes: no ``[k, ...]`` input gradient is made; before linear layers the
    spikes' gradient ``[k, ...]`` is). Returns ``(dz0, dv0)``, or ``None``
    where no fused kernel applies (``dz0`` unchanged) or a gradient is not finite (the caller then
    runs :func:`node_chunk_backward`, whose node backward raises on it, as the node does)."""
    z = z0.unsqueeze(0).expand(k, *z0.shape)
    kind = fused_kind(block.node, block.post, z)
    if kind is None:
        return None
    return _fused_backward(kind, block.node, block.post, z, v0, g_out, g_v, sum_into=dz0)


def _fused_backward(kind: str, node: nn.Module, post: List[Step], z: torch.Tensor, v0: Optional[torch.Tensor],
                    g_out: torch.Tensor, g_v: Optional[torch.Tensor], sum_into: Optional[torch.Tensor] = None):
    """``(dz, dv0)`` from a fused kernel (``dz`` summed over time into ``sum_into`` when given), or
    ``None`` when a value is not finite (the caller's unfused path then reports it as the node does)."""
    from ..kernels import numba_cpu
    from ..kernels.numba_lif_pool import lif_pool2_backward

    zc = z.detach()  # may be expanded over time: the kernels read it without a copy
    v = v0.detach().contiguous() if v0 is not None else lif_initial_state(zc[0], node.params)
    gv = g_v.contiguous() if g_v is not None else torch.zeros_like(v)
    fin: list = []
    if kind == "pool2":
        gx, gv0 = lif_pool2_backward(zc, v, g_out.contiguous(), gv, node.params, finite=fin, sum_into=sum_into)
    else:
        if kind == "lif_linear":  # the spikes' gradient from the pooled one (no spikes needed)
            k = zc.shape[0]
            g_out = split_time(post_input_grad(post, merge_time(g_out), (k * zc.shape[1],) + tuple(zc.shape[2:])), k)
        gx, gv0 = numba_cpu.lif_backward(zc, v, g_out.contiguous(), gv, node.params, finite=fin, sum_into=sum_into)
    if fin != [True]:
        return None
    return gx, (gv0 if v0 is not None else None)
