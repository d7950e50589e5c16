"""What a recomputation in backward depends on besides its saved inputs: the modules' train/eval
modes, the versions of the tensors they read and the spiking nodes' settings, captured when the
forward ends.

PyTorch's own saved tensors make a backward refuse a weight changed in place after the forward
(``optimizer.step()``, an EMA or a weight clip run before ``loss.backward()``), and it computes
with what the forward saw whatever ``model.eval()`` was called meanwhile. A backward that
recomputes the forward (:func:`edgesnn.memopt.checkpoint_over_time`, an ``optimize_memory``
block) keeps both promises with :func:`capture` in the forward and :func:`as_in_forward` around
its recomputation.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..nn.neurons import _SpikingNode
from .packing import _version
from .paramgrads import stands_for

__all__ = ["ForwardState", "capture", "check_unchanged", "as_in_forward"]


@dataclass(frozen=True)
class ForwardState:
    """Each submodule with its training flag, and each tensor read in backward (its description,
    the tensor, its version at the forward's end; ``None`` for an inference tensor)."""

    modes: Tuple[Tuple[nn.Module, bool], ...]
    versions: Tuple[Tuple[str, torch.Tensor, Optional[int]], ...]
    recomputed_by: str  # who recomputes, for the error: "checkpoint_over_time recomputes fn in backward"
    #: each spiking node's settings (its frozen ``params`` record): a node's ``v_threshold`` or ``tau``
    #: assigned between forward and backward is not what the forward ran with
    settings: Tuple[Tuple[nn.Module, object], ...] = ()
    #: each parameter slot (module, name, the parameter there at the forward): one
    #: replaced since (``load_state_dict(assign=True)``, a new ``nn.Parameter``, ``torch.func.functional_call``
    #: ending) holds the forward's again while the backward recomputes, as autograd's saved tensors would
    slots: Tuple[Tuple[nn.Module, str, torch.Tensor], ...] = ()


def capture(modules: Sequence[Tuple[str, nn.Module]], recomputed_by: str, *, all_buffers: bool) -> ForwardState:
    """The state of ``modules`` (``(name, module)`` pairs; names prefix the error's tensor names).

    Parameters are always recorded (the recomputation multiplies by them, trainable or frozen).
    Buffers: all of them (``all_buffers``), or only those of modules in eval mode now, whose
    BatchNorm reads its running statistics in the recomputation (in training mode it reads the
    batch's, and the forward itself updated the running ones)."""
    modes: List[Tuple[nn.Module, bool]] = []
    versions: List[Tuple[str, torch.Tensor, Optional[int]]] = []
    settings: List[Tuple[nn.Module, object]] = []
    slots: List[Tuple[nn.Module, str, torch.Tensor]] = []
    seen = set()
    for prefix, module in modules:
        for sub_name, sub in module.named_modules(prefix=prefix):
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            modes.append((sub, sub.training))
            if isinstance(sub, _SpikingNode) and "params" in sub.__dict__:
                settings.append((sub, sub.__dict__["params"]))
            tensors = [("parameter", n, t) for n, t in sub.named_parameters(recurse=False)]
            slots += [(sub, n, t) for _, n, t in tensors]
            if all_buffers or not sub.training:
                tensors += [("buffer", n, t) for n, t in sub.named_buffers(recurse=False) if t is not None]
            for kind, n, t in tensors:
                full = f"{sub_name}.{n}" if sub_name else n
                versions.append((f"{kind} '{full}'", t, _version(t)))
    return ForwardState(tuple(modes), tuple(versions), recomputed_by, tuple(settings), tuple(slots))


def check_unchanged(state: ForwardState, owner: str) -> None:
    """Raise as PyTorch does for a saved tensor when a parameter or buffer of ``state`` was changed
    in place since the forward (the recomputed gradient would mix old activations and new weights)."""
    for what, t, version in state.versions:
        if version is not None and t._version != version:
            raise RuntimeError("one of the variables needed for gradient computation has been modified by an "
                               f"inplace operation: {owner}'s {what} is at version {t._version}; expected version "
                               f"{version} instead ({state.recomputed_by})")


@contextmanager
def as_in_forward(state: ForwardState, owner: str) -> Iterator[None]:
    """Refuse parameters or buffers changed in place since the forward (:func:`check_unchanged`);
    run with every submodule in its forward's train/eval mode, every spiking node with its forward's
    settings and every parameter slot holding the forward's parameter (the gradient then goes to the
    tensor the forward used, as plain autograd's does), then restore all three."""
    check_unchanged(state, owner)
    now = [m.training for m, _ in state.modes]
    now_settings = [m.__dict__["params"] for m, _ in state.settings]
    replaced = [(m, name, m._parameters.get(name), t) for m, name, t in state.slots
                if stands_for(m._parameters.get(name)) is not t]  # (another block's backward: its stand-in)
    try:
        for m, training in state.modes:
            m.training = training
        for m, params in state.settings:
            m.__dict__["params"] = params
        for m, name, _, t in replaced:
            m._parameters[name] = t
        yield
    finally:
        for m, name, current, _ in reversed(replaced):
            m._parameters[name] = current
        for (m, _), training in zip(state.modes, now):
            m.training = training
        for (m, _), params in zip(state.settings, now_settings):
            m.__dict__["params"] = params
