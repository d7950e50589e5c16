"""The rewritten container: an ``nn.Sequential`` whose blocks run chunked, children untouched."""

from __future__ import annotations

from typing import List

import torch
from torch import nn

from .block import Block, run_block

__all__ = ["MemoryOptimizedSequential", "install", "uninstall"]


class MemoryOptimizedSequential(nn.Sequential):
    """An ``nn.Sequential`` that runs some runs of children as chunked blocks (:mod:`edgesnn.memopt.block`).

    The children, their names and the ``state_dict`` are those of the original container, so
    checkpoints load either way; only ``forward`` differs.
    """

    _memopt_blocks: List[Block]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        starts = {b.start: b for b in self._memopt_blocks}
        children = list(self)
        i = 0
        while i < len(children):
            b = starts.get(i)
            if b is not None:
                x = run_block(b, x)
                i = b.stop
            else:
                x = children[i](x)
                i += 1
        return x


def install(seq: nn.Sequential, blocks: List[Block]) -> None:
    """Turn ``seq`` into a :class:`MemoryOptimizedSequential` running ``blocks`` (in place)."""
    if type(seq) not in (nn.Sequential, MemoryOptimizedSequential):
        raise TypeError(f"model: can only rewrite a plain nn.Sequential, got {type(seq).__name__}")
    seq.__class__ = MemoryOptimizedSequential
    seq._memopt_blocks = list(blocks)


def uninstall(model: nn.Module) -> None:
    """Undo :func:`install` everywhere in ``model``: plain ``nn.Sequential`` forward again."""
    for m in model.modules():
        if isinstance(m, MemoryOptimizedSequential):
            m.__class__ = nn.Sequential
            del m._memopt_blocks
