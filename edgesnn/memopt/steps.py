"""Per-chunk building blocks of a chunked block: apply per-step layers, run the node, back-propagate one chunk.

Shapes: a chunk is ``[k, B, ...]`` (time-major); per-step layers see it merged to ``[k * B, ...]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import dispatch
from ..nn import LIF
from .batchnorm import batch_stats_mode, bn_static
from .layers import Step

if TYPE_CHECKING:  # pragma: no cover
    from .block import Block

__all__ = ["apply_steps", "merge_time", "split_time", "run_node", "apply_static", "apply_recompute",
           "node_chunk_backward"]


def apply_steps(steps: List[Step], x: torch.Tensor) -> torch.Tensor:
    for s in steps:
        x = s.fn(x)
    return x


def merge_time(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def split_time(x: torch.Tensor, k: int) -> torch.Tensor:
    return x.reshape(k, x.shape[0] // k, *x.shape[1:])


def run_node(node: nn.Module, z: torch.Tensor, v0: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    if isinstance(node, LIF):
        return dispatch.lif_multistep(z, node.params, v0, node.backend)
    return dispatch.revlif_multistep(z, node.params, v0, node.backend)


def apply_static(steps: List[Step], x0: torch.Tensor, T: int, update: bool) -> torch.Tensor:
    for s in steps:
        x0 = bn_static(s.module, x0, T, update) if s.kind == "bn" and batch_stats_mode(s.module) else s.fn(x0)
    return x0


def apply_recompute(steps: List[Step], x: torch.Tensor) -> torch.Tensor:
    """The layers as in forward, but BatchNorm from the batch itself without touching running stats."""
    for s in steps:
        if s.kind == "bn" and batch_stats_mode(s.module):
            bn = s.module
            x = F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
        else:
            x = s.fn(x)
    return x


def node_chunk_backward(block: "Block", z: torch.Tensor, v0: Optional[torch.Tensor], g_out: torch.Tensor,
                         g_v: Optional[torch.Tensor], post_needed: bool = True):
    """Back-propagate one chunk through node and post layers; returns ``(dz, dv0)``."""
    k = z.shape[0]
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
