"""Library code that runs a user's model for a moment leaves what the user owns as it was.

* :func:`evaluating`: eval mode for a moment, then every submodule's own mode back.
  ``model.train(was)`` after ``model.eval()`` would set every child to the top module's mode: a
  BatchNorm the user had frozen (``bn.eval()`` inside a training model) would train again, its
  running statistics moving on the next step.
* :data:`keeping_rng`: a decorator that saves and restores the global CPU random stream around a
  probe that draws random inputs or runs the user's modules (a Dropout draws too), so a seeded
  script draws the same numbers after planning as without it.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

__all__ = ["evaluating", "keeping_rng"]

#: decorator: the global CPU random stream saved before the call and restored after it (each call
#: its own save; CUDA streams are not touched, the probes run on the CPU)
keeping_rng = torch.random.fork_rng(devices=[])


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
