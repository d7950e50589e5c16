"""Run a model in eval mode for a moment and hand every submodule back the mode it had.

``model.train(was)`` after ``model.eval()`` sets every child to the top module's mode: a
BatchNorm the user had frozen (``bn.eval()`` inside a training model) would train again, its
running statistics moving on the next step. :func:`evaluating` restores each module's own flag.
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
    restored parents first through their own ``train()``, so a child's flag is set last."""
    modes = [(m, m.training) for m in module.modules()]  # (pre-order: every parent before its children)
    module.eval()
    try:
        yield module
    finally:
        for m, was in modes:
            m.train(was)
