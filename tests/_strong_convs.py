"""Test models for the memory optimiser's comparisons with plain autograd."""

from __future__ import annotations

import torch
from torch import nn


def strong_convs(net: nn.Module, factor: float = 3.0) -> nn.Module:
    """``net`` in float64 with its convolution weights scaled by ``factor``: the nodes spike often
    enough to test something, and no potential lands within rounding of its threshold (so plain
    autograd and a recomputation give the same spikes)."""
    net = net.double()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(factor)
    return net
