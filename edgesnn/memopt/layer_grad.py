"""Backward of one convolution or linear layer from its input and output gradient, without autograd.

A block that holds its layer output from the forward to the backward (``Block.hold``) has no
autograd graph for the layer (the output was computed once, under ``no_grad``); its backward calls
the same kernels autograd would: ``aten.convolution_backward`` for ``nn.Conv1d/2d/3d`` (zero
padding given as integers), ``x @ W`` products for ``nn.Linear``. Parameter gradients accumulate
into ``.grad`` of the layer's ``weight`` / ``bias`` as autograd's would (inside a block's backward:
the stand-ins of :mod:`edgesnn.memopt.paramgrads`).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

from .layers import Step, runs_plain_forward

__all__ = ["layer_backward_supported", "layer_backward", "accumulate_grad"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def layer_backward_supported(step: Step) -> bool:
    """Whether :func:`layer_backward` handles the per-step layer ``step`` (a
    :class:`~edgesnn.memopt.layers.Step`): a convolution with integer zero padding or a linear
    layer, run by the torch base class's own forward (as SpikingJelly's multi-step layers are),
    without hooks and without parametrizations (its ``weight`` would not be a leaf)."""
    m = step.module
    base = next((c for c in (*_CONVS, nn.Linear) if isinstance(m, c)), None)
    if base is None or not runs_plain_forward(step, base) or parametrize.is_parametrized(m):
        return False
    if base is nn.Linear:
        return True
    return m.padding_mode == "zeros" and not isinstance(m.padding, str) and type(m)._conv_forward is base._conv_forward


def accumulate_grad(p: Optional[torch.Tensor], g: Optional[torch.Tensor]) -> None:
    """Add ``g`` (``p``'s shape) to ``p.grad`` as autograd would (set it when there is none), in ``p``'s dtype;
    nothing for a missing ``p``/``g`` or a ``p`` that needs no gradient. ``g`` is handed over, not
    copied: the caller must not use it afterwards. In a block's backward ``p`` is the stand-in of a
    parameter (:mod:`edgesnn.memopt.paramgrads`), whose ``.grad`` the block returns to autograd."""
    if p is None or g is None or not p.requires_grad:
        return
    g = g.to(p.dtype)
    if p.grad is None:
        p.grad = g
    else:
        p.grad.add_(g)


def layer_backward(m: nn.Module, x: torch.Tensor, grad_out: torch.Tensor, input_grad: bool) -> Optional[torch.Tensor]:
    """Back-propagate ``grad_out [N, ...]`` through ``m`` applied to ``x [N, ...]``.

    Accumulates the parameter gradients into ``m.weight.grad`` / ``m.bias.grad``; returns the input
    gradient ``[N, ...]`` when ``input_grad``, else ``None``.
    """
    w = m.weight
    b = m.bias
    if isinstance(m, nn.Linear):
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        x2 = x.reshape(-1, x.shape[-1])
        if w.requires_grad:
            accumulate_grad(w, g2.t().mm(x2))
        if b is not None and b.requires_grad:
            accumulate_grad(b, g2.sum(0))
        return g2.mm(w.detach()).view(x.shape) if input_grad else None
    nd = len(m.kernel_size)
    mask = [bool(input_grad), bool(w.requires_grad), b is not None and b.requires_grad]
    gx, gw, gb = torch.ops.aten.convolution_backward(
        grad_out, x, w.detach(), [w.shape[0]] if b is not None else None, list(m.stride), list(m.padding),
        list(m.dilation), False, [0] * nd, m.groups, mask)
    accumulate_grad(w, gw)
    accumulate_grad(b, gb)
    return gx
