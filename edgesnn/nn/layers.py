"""Helpers to run ordinary (stateless) layers on multi-step tensors."""

from __future__ import annotations

import re
from typing import Any, Dict, Iterator, List, Tuple, Union

import torch
from torch import nn

__all__ = ["SeqToANN"]

_SJ_KEY = re.compile(r"(\d+)\.(.+)")
_Seq = Union[torch.Tensor, Tuple[torch.Tensor, ...]]


def _stepped_modules(module: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The (name, module) pairs in ``module`` (itself included) whose ``step_mode`` is not ``'s'``."""
    return [(name, m) for name, m in module.named_modules() if getattr(m, "step_mode", "s") != "s"]


class SeqToANN(nn.Module):
    """Apply stateless modules to every time step at once: ``[T, B, ...] -> [T, B, ...']``.

    The time and batch dims are merged (``[T * B, ...]``) for the wrapped modules, so BatchNorm
    statistics are shared over time, as in SpikingJelly's ``SeqToANNContainer``; like it, the
    constructor takes one or several modules, applied in order: ``SeqToANN(conv, bn)``, and
    ``len``, indexing (``seq[0]``) and iteration give the wrapped modules. A tuple of
    ``[T, B, ...]`` tensors is passed to the first module as several arguments, and a tuple output
    (``MaxPool2d(return_indices=True)``) comes back as a tuple of ``[T, B, ...]`` tensors.

    The wrapped modules see ``[T * B, ...]`` as one step, so, as in ``SeqToANNContainer``, a wrapped
    module with a ``step_mode`` (a spiking node, a SpikingJelly layer) must be in step mode ``'s'``:
    another is refused when constructing and when called. SpikingJelly's
    ``functional.set_step_mode(net, ...)``, which leaves a ``SeqToANNContainer``'s modules alone,
    descends into a ``SeqToANN`` (it is not one of SpikingJelly's classes); the step mode it gives
    the wrapped modules is set back to ``'s'`` at the next call, so such a model runs as in
    SpikingJelly. ``step_mode`` reads ``'m'``.

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
            stepped = _stepped_modules(m)
            if stepped:
                raise ValueError(_step_mode_error(f"argument {i}", stepped[0], "when constructing"))
        self._several = len(modules) > 1  # (a single nn.Sequential is one module, as in SeqToANNContainer)
        self.module = modules[0] if len(modules) == 1 else nn.Sequential(*modules)
        self._step_mode_set = False  # set by SpikingJelly's set_step_mode, which then descends into self.module
        self.register_load_state_dict_pre_hook(_accept_spikingjelly_keys)

    # ------------------------------------------------------------------ SpikingJelly's container interface

    @property
    def step_mode(self) -> str:
        """Always ``'m'`` (input ``[T, B, ...]``)."""
        return "m"

    @step_mode.setter
    def step_mode(self, value: str) -> None:
        """Accept ``'s'`` or ``'m'`` (SpikingJelly's ``set_step_mode``); the container still runs ``[T, B, ...]``."""
        # SpikingJelly's functional.set_step_mode: it goes on to set the wrapped modules' step_mode,
        # which it leaves alone in a SeqToANNContainer; the next call sets them back to 's'
        if value not in ("s", "m"):
            raise ValueError(f"step_mode: expected 's' or 'm' (SeqToANN always runs [T, B, ...]), got {value!r}")
        self._step_mode_set = True

    def _modules_list(self) -> List[nn.Module]:
        return list(self.module) if _several(self) else [self.module]

    def __len__(self) -> int:
        return len(self._modules_list())

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self._modules_list())

    def __getitem__(self, idx: Union[int, slice]) -> Union[nn.Module, "SeqToANN"]:
        mods = self._modules_list()
        if isinstance(idx, slice):
            return SeqToANN(*mods[idx])
        return mods[idx]

    # ------------------------------------------------------------------ forward

    def _check_wrapped_step_modes(self) -> None:
        stepped = _stepped_modules(self.module)
        if not stepped:
            return
        if getattr(self, "_step_mode_set", False):  # set_step_mode descended here: undo it, as SpikingJelly does not descend
            for _, m in stepped:
                m.step_mode = "s"
            self._step_mode_set = False
            return
        raise ValueError(_step_mode_error("the wrapped module", stepped[0], "at this call"))

    def forward(self, x_seq: _Seq) -> _Seq:
        """``[T, B, ...]`` -> the wrapped layers on ``[T*B, ...]`` -> ``[T, B, ...out]`` (each of a tuple)."""
        if not torch.compiler.is_compiling():
            self._check_wrapped_step_modes()
        xs = x_seq if isinstance(x_seq, tuple) else (x_seq,)
        for x in xs:
            if x is None or isinstance(x, (list, int, float, str, bytes, dict)) or type(x).__module__ == "numpy":  # (proxies pass)
                raise TypeError(f"SeqToANN: expected a [T, B, ...] tensor or a tuple of them, got {type(x_seq).__name__}")
            if x.dim() < 2:
                raise ValueError(f"SeqToANN: expected a multi-step input [T, B, ...], got shape {tuple(x.shape)}")
        T, B = xs[0].shape[0], xs[0].shape[1]
        if any(tuple(x.shape[:2]) != (T, B) for x in xs[1:]):
            raise ValueError(f"SeqToANN: the tensors of a tuple input must share [T, B], got shapes {[tuple(x.shape) for x in xs]}")
        if isinstance(x_seq, tuple):
            flat = tuple(x.flatten(0, 1) for x in xs)
            mods = self._modules_list()
            y = mods[0](*flat)
            for m in mods[1:]:
                y = m(y)
        else:
            y = self.module(x_seq.flatten(0, 1))
        if isinstance(y, tuple):
            return tuple(item.reshape(T, B, *item.shape[1:]) for item in y)
        return y.reshape(T, B, *y.shape[1:])


def _several(module: SeqToANN) -> bool:
    """Whether ``module.module`` is the ``nn.Sequential`` built from several modules (not a single one the caller gave)."""
    several = module.__dict__.get("_several")
    return isinstance(module.module, nn.Sequential) if several is None else several  # (pickled before _several)


def _step_mode_error(where: str, stepped: Tuple[str, nn.Module], when: str) -> str:
    name, m = stepped
    label = type(m).__name__ + (f" ({name})" if name else "")
    return (f"SeqToANN: {where}, {label}, has step_mode={m.step_mode!r} {when}; the wrapped modules run on [T*B, ...] as "
            "one step, so they need step_mode='s' (as in SpikingJelly's SeqToANNContainer); put spiking nodes after "
            "the SeqToANN, not inside it")


def _accept_spikingjelly_keys(module: SeqToANN, state_dict: Dict[str, Any], prefix: str, *args: Any) -> None:
    """Load hook: rename SpikingJelly's ``<prefix><i>.<name>`` keys to ``<prefix>module[.<i>].<name>``."""
    ours = prefix + "module."
    if any(k.startswith(ours) for k in state_dict):
        return
    several = _several(module)
    for key in [k for k in state_dict if k.startswith(prefix)]:
        m = _SJ_KEY.fullmatch(key[len(prefix):])
        if m is None:
            continue
        if several:
            state_dict[ours + key[len(prefix):]] = state_dict.pop(key)
        elif m.group(1) == "0":
            state_dict[ours + m.group(2)] = state_dict.pop(key)
