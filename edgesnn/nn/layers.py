"""Helpers to run ordinary (stateless) layers on multi-step tensors."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SeqToANN"]


class SeqToANN(nn.Module):
    """Apply a stateless module to every time step at once: ``[T, B, ...] -> [T, B, ...']``.

    The time and batch dims are merged (``[T * B, ...]``) for the wrapped module, so BatchNorm
    statistics are shared over time, as in SpikingJelly's ``SeqToANNContainer``.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        T, B = x_seq.shape[0], x_seq.shape[1]
        y = self.module(x_seq.flatten(0, 1))
        return y.reshape(T, B, *y.shape[1:])
