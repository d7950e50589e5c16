"""Input gradient of the layers after a node when they are linear maps: average pooling, flatten.

The gradient of a linear layer does not depend on its input, so a block's backward can send the
output gradient through them without the spikes that went in: PyTorch's own backward kernels are
called with a zero-memory stand-in for the input (a zero expanded to its shape: only the shape is
read). The result is bit-identical to autograd's, which calls the same kernels. With it, a LIF
followed by an average pool runs its fused Numba backward (no forward under autograd, no spikes
kept, the repeated-input gradient summed over time as it goes) instead of the node's autograd path.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
from torch import nn

from .layers import Step, pair, runs_plain_forward

__all__ = ["linear_post", "post_input_grad"]


def _avg_pool2d_grad(m: nn.AvgPool2d, g: torch.Tensor, in_shape: Sequence[int]) -> torch.Tensor:
    stand_in = torch.zeros((), dtype=g.dtype, device=g.device).expand(*in_shape)
    k = list(pair(m.kernel_size))
    s = list(pair(m.stride)) if m.stride not in (None, [], ()) else k
    return torch.ops.aten.avg_pool2d_backward(g.contiguous(), stand_in, k, s, list(pair(m.padding)), bool(m.ceil_mode),
                                              bool(m.count_include_pad), m.divisor_override)


def _reshape_grad(m: nn.Module, g: torch.Tensor, in_shape: Sequence[int]) -> torch.Tensor:
    return g.reshape(in_shape)


#: Layer types whose forward is a linear map with a known backward, and that backward. (Not the
#: adaptive pools: PyTorch runs some output sizes as a ``mean``, whose backward rounds differently.)
_GRADS = {
    nn.AvgPool2d: _avg_pool2d_grad,
    nn.Flatten: _reshape_grad,
    nn.Identity: _reshape_grad,
}


def _grad_of(step: Step) -> Optional[Callable]:
    """The backward of ``step`` if it is one of the linear layers above running torch's own forward
    (a subclass with its own forward, or a module with hooks, is run as it is)."""
    for cls, grad in _GRADS.items():
        if isinstance(step.module, cls):
            return grad if runs_plain_forward(step, cls) else None
    return None


def linear_post(post: List[Step]) -> bool:
    """``post`` is non-empty and every layer in it is a linear map handled by :func:`post_input_grad`."""
    return bool(post) and all(_grad_of(s) is not None for s in post)


def post_input_grad(post: List[Step], g_out: torch.Tensor, in_shape: Sequence[int]) -> torch.Tensor:
    """Gradient w.r.t. the input ``[N, ...]`` (shape ``in_shape``) of the linear layers ``post``,
    given the gradient ``g_out [N, ...']`` of their output (time merged into the batch)."""
    shapes = []
    t = torch.empty(tuple(in_shape), dtype=g_out.dtype, device="meta")
    for s in post:
        shapes.append(tuple(t.shape))
        t = s.run(t)
    g = g_out
    for s, shape in zip(reversed(post), reversed(shapes)):
        g = _grad_of(s)(s.module, g, shape)
    return g
