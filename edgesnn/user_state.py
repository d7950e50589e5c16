"""Library code that runs a user's model for a moment in eval mode hands every submodule back its mode.

``model.train(was)`` after ``model.eval()`` would set every child to the top module's mode: a
BatchNorm the user had frozen (``bn.eval()`` inside a training model) would train again, its
running statistics moving on the next step. :func:`evaluating` restores each module's own flag.
(The other state such code must leave alone, the global random stream, is kept by drawing probe
inputs from generators of their own: :func:`edgesnn.planner.memory_model.probe_input`.)
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

__all__ = ["evaluating"]


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
