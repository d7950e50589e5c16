"""Library code that runs a user's model for a moment in eval mode hands every submodule back its mode.

``model.train(was)`` after ``model.eval()`` would set every child to the top module's mode: a
BatchNorm the user had frozen (``bn.eval()`` inside a training model) would train again, its
running statistics moving on the next step. :func:`evaluating` restores each module's own flag.
The other state such code must leave alone is the global random stream. Probe inputs come from
generators of their own (:func:`edgesnn.planner.memory_model.probe_input`); a module that draws
numbers itself while it is measured (``Dropout`` in training mode) runs inside
:func:`random_stream_kept`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

__all__ = ["evaluating", "random_stream_kept"]

#: Layers that draw from the global random stream in training mode.
_DRAWING_LAYERS = (nn.modules.dropout._DropoutNd, nn.RReLU)


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """``with evaluating(model):`` ``model`` and all its submodules in eval mode inside; on exit
    (also after an error) each module's ``training`` flag is the one it had before. Modules are
    restored parents first through their own ``train()``, then every flag a later parent's ``train()``
    changed (a module shared by two parents, listed once) is set back."""
    modes = [(m, m.training) for m in module.modules()]  # (pre-order: every parent before its children)
    module.eval()
    try:
        yield module
    finally:
        for m, was in modes:
            m.train(was)
        for m, was in modes:
            m.training = was


@contextlib.contextmanager
def random_stream_kept(module: nn.Module) -> Iterator[None]:
    """``with random_stream_kept(layer): layer(x)``: when ``layer`` (or a submodule) is one of PyTorch's
    ``Dropout`` / ``RReLU`` layers in training mode, it draws from a copy of the CPU random state, and
    the caller's stream is where it was on exit (a seeded script draws the same numbers after planning
    as without it). Any other module runs as it is, so one of another library that draws numbers (a
    Poisson encoder, SpikingJelly's ``Dropout``) still moves the stream: restoring the stream around
    every module would rewind the numbers another thread drew meanwhile."""
    if not any(isinstance(m, _DRAWING_LAYERS) and m.training for m in module.modules()):
        yield
        return
    with torch.random.fork_rng(devices=[]):
        yield
