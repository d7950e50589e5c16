"""Exact BatchNorm over time chunks: statistics combined across chunks, one normalisation formula.

A block that recomputes its interior in chunks of ``K`` steps cannot let BatchNorm see one chunk
at a time (training mode normalises over all ``T x B`` samples). These helpers compute the batch
statistics chunk by chunk (combined in float64), update the running statistics once, and apply
the normalisation with one formula everywhere, so a recomputed chunk is bit-identical to its
forward.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["batch_stats_mode", "channel_view", "reduce_dims", "update_running", "ChunkStats", "bn_static",
           "bn_normalize", "bn_affine"]


def batch_stats_mode(bn: nn.modules.batchnorm._BatchNorm) -> bool:
    return bn.training or not bn.track_running_stats


def channel_view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, *([1] * (like.dim() - 2)))


def reduce_dims(x: torch.Tensor) -> List[int]:
    return [0] + list(range(2, x.dim()))


def update_running(bn: nn.modules.batchnorm._BatchNorm, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """BatchNorm's running-statistics update for one batch of ``count`` samples per channel."""
    if not (bn.training and bn.track_running_stats):
        return
    bn.num_batches_tracked.add_(1)
    m = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    unbiased = var * (count / max(count - 1, 1))
    with torch.no_grad():
        bn.running_mean.mul_(1 - m).add_(mean.to(bn.running_mean.dtype), alpha=m)
        bn.running_var.mul_(1 - m).add_(unbiased.to(bn.running_var.dtype), alpha=m)


class ChunkStats:
    """Per-channel mean/variance over many chunks, combined exactly (Chan et al.) in float64."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: Optional[torch.Tensor] = None
        self.m2: Optional[torch.Tensor] = None

    def add(self, a: torch.Tensor) -> None:
        dims = reduce_dims(a)
        n = a.numel() // a.shape[1]
        var, mean = torch.var_mean(a, dim=dims, unbiased=False)
        mean, m2 = mean.double(), var.double() * n
        if self.mean is None:
            self.n, self.mean, self.m2 = n, mean, m2
            return
        tot = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / tot)
        self.m2 = self.m2 + m2 + delta * delta * (self.n * n / tot)
        self.n = tot

    def mean_var(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.mean, self.m2 / self.n


def bn_static(bn: nn.modules.batchnorm._BatchNorm, a: torch.Tensor, T: int, update: bool) -> torch.Tensor:
    """BatchNorm (batch statistics) of ``T`` identical copies of ``a [B, C, ...]``, computed on one copy."""
    if update:
        with torch.no_grad():
            var, mean = torch.var_mean(a.detach(), dim=reduce_dims(a), unbiased=False)
        update_running(bn, mean, var, T * (a.numel() // a.shape[1]))
    return F.batch_norm(a, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)


def bn_normalize(bn, a: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor,
                  inplace: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(z, xhat)``: BatchNorm of ``a`` with given statistics; one formula (same rounding) for the
    forward and every recomputation. ``inplace`` overwrites ``a`` with ``xhat`` (no autograd)."""
    xhat = a.sub_(channel_view(mean, a)) if inplace else a - channel_view(mean, a)
    xhat.mul_(channel_view(invstd, a))
    return bn_affine(bn, xhat), xhat


def bn_affine(bn, xhat: torch.Tensor) -> torch.Tensor:
    w = bn.weight.detach() if bn.weight is not None else None
    b = bn.bias.detach() if bn.bias is not None else None
    if w is None:
        return xhat.clone() if b is None else xhat + channel_view(b, xhat)
    y = xhat * channel_view(w, xhat)
    return y if b is None else y.add_(channel_view(b, xhat))
