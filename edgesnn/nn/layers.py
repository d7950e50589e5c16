"""Helpers to run ordinary (stateless) layers on multi-step tensors."""

from __future__ import annotations

import re
from typing import Any, Dict

import torch
from torch import nn

__all__ = ["SeqToANN"]

_SJ_KEY = re.compile(r"(\d+)\.(.+)")


class SeqToANN(nn.Module):
    """Apply stateless modules to every time step at once: ``[T, B, ...] -> [T, B, ...']``.

    The time and batch dims are merged (``[T * B, ...]``) for the wrapped modules, so BatchNorm
    statistics are shared over time, as in SpikingJelly's ``SeqToANNContainer``; like it, the
    constructor takes one or several modules, applied in order: ``SeqToANN(conv, bn)``.

    The wrapped module is ``self.module``: the module itself, or ``nn.Sequential(*modules)`` for
    several (``state_dict`` keys ``module.weight`` / ``module.0.weight``). State dicts of
    SpikingJelly's ``SeqToANNContainer`` (an ``nn.Sequential``: keys ``0.weight``, ``1.running_mean``)
    load as well, ``strict=True`` included.

    Args:
        *modules: the modules to apply in order (at least one).

    Shape: ``[T, B, ...] -> [T, B, ...']``.
    """

    def __init__(self, *modules: nn.Module) -> None:
        super().__init__()
        if not modules:
            raise TypeError("SeqToANN: expected at least one module, e.g. SeqToANN(conv, bn)")
        for i, m in enumerate(modules):
            if not isinstance(m, nn.Module):
                raise TypeError(f"SeqToANN: argument {i} must be an nn.Module, got {type(m).__name__}")
        self.module = modules[0] if len(modules) == 1 else nn.Sequential(*modules)
        self.register_load_state_dict_pre_hook(_accept_spikingjelly_keys)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        """``[T, B, ...]`` -> the wrapped layers on ``[T*B, ...]`` -> ``[T, B, ...out]``."""
        if x_seq.dim() < 2:
            raise ValueError(f"SeqToANN: expected a multi-step input [T, B, ...], got shape {tuple(x_seq.shape)}")
        T, B = x_seq.shape[0], x_seq.shape[1]
        y = self.module(x_seq.flatten(0, 1))
        return y.reshape(T, B, *y.shape[1:])


def _accept_spikingjelly_keys(module: SeqToANN, state_dict: Dict[str, Any], prefix: str, *args: Any) -> None:
    """Load hook: rename SpikingJelly's ``<prefix><i>.<name>`` keys to ``<prefix>module[.<i>].<name>``."""
    ours = prefix + "module."
    if any(k.startswith(ours) for k in state_dict):
        return
    several = isinstance(module.module, nn.Sequential)
    for key in [k for k in state_dict if k.startswith(prefix)]:
        m = _SJ_KEY.fullmatch(key[len(prefix):])
        if m is None:
            continue
        if several:
            state_dict[ours + key[len(prefix):]] = state_dict.pop(key)
        elif m.group(1) == "0":
            state_dict[ours + m.group(2)] = state_dict.pop(key)
