"""What the memory optimizer knows about a layer: its kind, its per-step function, what it outputs.

A multi-step model applies stateless layers to every time step at once (``[T, B, ...]`` merged
to ``[T * B, ...]``), as edgesnn's :class:`~edgesnn.nn.SeqToANN` and SpikingJelly's multi-step
layers and ``SeqToANNContainer`` do. Here each such layer is reduced to a :class:`Step`: a
function on merged ``[N, ...]`` tensors plus its kind. Spiking nodes stay multi-step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch
from torch import nn

from ..nn import LIF, RevLIF
from ..nn.layers import SeqToANN

__all__ = ["Step", "child_steps", "output_codec", "is_node", "hooked", "runs_plain_forward", "pair"]

# Kinds: "node" (LIF/RevLIF), "bn" (BatchNorm), "param" (a layer with parameters: conv, linear),
# "free" (no parameters, deterministic: pooling, flatten, activations without state).
_FREE_TYPES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Identity,
)
_PARAM_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class Step:
    """One per-step layer: ``fn`` maps ``[N, ...]`` to ``[N, ...']``; ``module`` owns its parameters."""

    kind: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    module: nn.Module


def is_node(m: nn.Module) -> bool:
    """An edgesnn LIF/RevLIF node the optimizer can chunk: multi-step, fresh state every call.

    A node that carries its state across calls (``step_mode='s'`` or ``stateful=True``) is left
    as it is: recomputing it from a fresh state would be wrong; so is a node with hooks
    (:func:`hooked`), which the kernels would bypass.
    """
    return (isinstance(m, (LIF, RevLIF)) and getattr(m, "step_mode", "m") == "m" and not getattr(m, "stateful", False)
            and not hooked(m))


def hooked(m: nn.Module) -> bool:
    """``m`` has forward or forward-pre hooks, or a ``forward`` set on the instance: calling it may
    compute something its class does not say. The optimizer runs nodes through their kernels and
    SpikingJelly layers through their base forward, without calling the module, so such modules
    (and wrappers) are left as they are; a hooked plain layer inside a wrapper is called as it is
    but nothing is assumed about its output (no packed codec, no kernel in its place)."""
    return bool(m._forward_hooks or m._forward_pre_hooks) or "forward" in m.__dict__


def runs_plain_forward(step: Step, cls: type) -> bool:
    """``step`` computes exactly ``cls.forward`` (so a kernel may stand in for it): either its
    function is that forward bound to the module (SpikingJelly's multi-step layers; no hooks run
    then), or it calls the module itself, whose class forward is ``cls.forward``, with no forward
    or forward-pre hook (its own or a global one) and no ``forward`` set on the instance."""
    m, fn = step.module, step.fn
    if getattr(fn, "__func__", None) is cls.forward:
        return True
    if fn is not m or type(m).forward is not cls.forward or hooked(m):
        return False
    from torch.nn.modules import module as torch_module

    return not (getattr(torch_module, "_global_forward_hooks", None) or getattr(torch_module, "_global_forward_pre_hooks", None))


def _torch_base_forward(m: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The single-step forward of a SpikingJelly multi-step layer: its torch.nn base class's forward."""
    if getattr(m, "step_mode", None) is None:
        return m
    for cls in type(m).__mro__:
        if cls.__module__.startswith("torch.nn") and "forward" in cls.__dict__:
            return cls.forward.__get__(m)
    return m


def _is_seq_container(m: nn.Module) -> bool:
    return type(m).__name__ == "SeqToANNContainer" and isinstance(m, nn.Sequential)


def _leaf_step(m: nn.Module) -> Optional[Step]:
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return Step("bn", _torch_base_forward(m), m)
    if isinstance(m, _PARAM_TYPES):
        return Step("param", _torch_base_forward(m), m)
    if isinstance(m, _FREE_TYPES):
        return Step("free", _torch_base_forward(m), m)
    return None


def child_steps(m: nn.Module) -> Optional[List[Step]]:
    """The per-step layers of one child of a multi-step ``nn.Sequential``, or ``None`` if unsupported.

    Supported: edgesnn ``SeqToANN`` and SpikingJelly ``SeqToANNContainer`` around conv, linear,
    BatchNorm, pooling and flatten layers (or an ``nn.Sequential`` of them); SpikingJelly's
    multi-step ``layer.Conv2d`` / ``BatchNorm2d`` / ``MaxPool2d`` / ``AvgPool2d`` / ``Linear`` /
    ``Flatten`` (``step_mode='m'``); edgesnn ``LIF`` / ``RevLIF`` nodes (kind ``node``).
    Dropout is not supported (its recomputation would draw a new mask).
    """
    if is_node(m):
        return [Step("node", m, m)]
    if hooked(m):
        return None  # a wrapper's or SpikingJelly layer's hooks would be bypassed
    inner: List[nn.Module]
    if isinstance(m, SeqToANN):
        inner = list(m.module) if isinstance(m.module, nn.Sequential) else [m.module]
        steps = [_leaf_step(x) if not isinstance(x, nn.Sequential) else None for x in inner]
        return None if any(s is None for s in steps) else steps  # type: ignore[return-value]
    if _is_seq_container(m):
        steps = [_leaf_step(x) for x in m]
        return None if any(s is None for s in steps) else steps  # type: ignore[return-value]
    if getattr(m, "step_mode", None) == "m":
        s = _leaf_step(m)
        return None if s is None else [s]
    return None


def pair(v) -> Tuple[int, ...]:
    """A 2-d layer's size argument as a tuple: ``2 -> (2, 2)``, ``(2, 3)`` and ``[2, 3]`` as they are."""
    return tuple(int(e) for e in v) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _pool_count(m: nn.Module) -> Optional[int]:
    """Window size of an average pool without padding (its output of spikes is count / size)."""
    if getattr(m, "divisor_override", None) is not None:
        return None
    if isinstance(m, nn.AvgPool2d) and m.padding in (0, (0, 0)) and not m.ceil_mode:
        k = pair(m.kernel_size)
        return int(k[0] * k[1])
    if isinstance(m, nn.AvgPool1d) and m.padding in (0, (0,)) and not m.ceil_mode:
        k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,)
        return int(k[0])
    return None


def output_codec(step: Step, codec: str) -> str:
    """What ``step`` outputs when its input holds ``codec`` values (``bits``, ``levels:n``, ``dense``)."""
    m = step.module
    if step.kind == "node":
        return "bits" if isinstance(m, LIF) else "dense"
    if step.fn is m and hooked(m):
        return "dense"  # its hooks may change the values
    if isinstance(m, (nn.Flatten, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool2d)):
        return codec
    n = _pool_count(m)
    if n is not None and codec in ("bits",) or (n is not None and codec.startswith("levels:")):
        have = 1 if codec == "bits" else int(codec.split(":")[1])
        total = have * n
        if total <= 128 and total & (total - 1) == 0:
            return f"levels:{total}"
    return "dense"
