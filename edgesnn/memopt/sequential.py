"""The rewritten container: an ``nn.Sequential`` whose blocks run chunked, children untouched."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Dict, List, Union

import torch
from torch import nn

from .batchnorm import batch_stats_mode
from .block import Block, Route, run_block
from .layers import child_steps
from .steps import apply_over_time, run_node_post

__all__ = ["MemoryOptimizedSequential", "install", "uninstall", "EVAL_CHUNK_STEPS"]

#: time steps per chunk of a streamed inference forward (``no_grad``; see ``MemoryOptimizedSequential``)
EVAL_CHUNK_STEPS = 8


class MemoryOptimizedSequential(nn.Sequential):
    """An ``nn.Sequential`` that runs some runs of children as chunked blocks (:mod:`edgesnn.memopt.block`).

    The children, their names and the ``state_dict`` are those of the original container, so
    checkpoints load either way; only ``forward`` differs. A slice (``model[:2]``) is a plain
    ``nn.Sequential`` of the same child modules (not optimized). A block whose children changed
    after ``optimize_memory`` (a hook registered, ``stateful=True`` set on its node, a child
    replaced) runs as plain modules: the plain model's results without the memory saving, with a
    warning once per container. A block switched to single-step (``step_mode='s'``) runs as plain
    modules without a warning, and as a block again once switched back to ``'m'``.
    """

    _memopt_blocks: List[Block]

    def __setstate__(self, state: dict) -> None:
        """Unpickling (``torch.load`` of a whole model): blocks pickled by an edgesnn that kept no
        ``owners`` get them from this container (its children ``[start, stop)``), as planned then."""
        super().__setstate__(state)
        children = list(self._modules.values())
        for b in self.__dict__.get("_memopt_blocks", []):
            if "owners" not in b.__dict__:
                b.owners = children[b.start:b.stop]

    def __getitem__(self, idx: Union[int, slice]) -> nn.Module:
        """A child, or for a slice a plain ``nn.Sequential`` of those children (the blocks are this
        container's)."""
        if isinstance(idx, slice):
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``x [T, B, ...]``. Without autograd (evaluation), and when nothing needs all T at once
        (BatchNorm with running statistics, stateless layers between blocks), the whole container
        runs ``EVAL_CHUNK_STEPS`` steps at a time with every node's state carried: an evaluation
        batch then needs one chunk's memory, not T's. An empty batch (``B = 0``) runs the children
        as they are (nothing to save; PyTorch's layers define what it does, e.g. BatchNorm counts
        the batch and leaves its running statistics)."""
        if isinstance(x, torch.Tensor) and x.dim() >= 1 and x.shape[0] == 0:
            raise ValueError(f"x_seq: the number of time steps T (dim 0) must be >= 1, got shape {tuple(x.shape)}")
        if x.dim() >= 2 and x.shape[1] == 0:
            return super().forward(x)
        children = list(self)
        live = self._live_blocks(children)
        if (not torch.is_grad_enabled() and x.dim() >= 2 and x.shape[0] > EVAL_CHUNK_STEPS
                and len(live) == len(self._memopt_blocks) and self._streamable()):
            return self._forward_streamed(x)
        routes = _routes(live)
        starts = {b.start: b for b in live}
        i = 0
        while i < len(children):
            b = starts.get(i)
            if b is not None:
                x = run_block(b, x, routes[id(b)])
                i = b.stop
            else:
                x = children[i](x)
                i += 1
        return x

    def _live_blocks(self, children: List[nn.Module]) -> List[Block]:
        """The blocks still as planned (:meth:`Block.unchanged`); warns once about the others, except
        blocks switched to single-step (``functional.set_step_mode(model, 's')``): one step per call
        has no T to chunk, and they run as blocks again once set back to ``'m'``. A block whose node
        holds a state from single-step calls runs as plain modules once, without a warning: the
        node's own forward starts from that state and drops it, as in the plain model."""
        planned = [b for b in self._memopt_blocks if b.unchanged(children)]
        live = [b for b in planned if not _holds_state(b)]
        kept = {id(b) for b in planned}
        changed = [b for b in self._memopt_blocks if id(b) not in kept and not _single_step(b, children)]
        if changed and not self.__dict__.get("_memopt_warned", False):
            self._memopt_warned = True
            b = changed[0]
            warnings.warn(
                f"optimize_memory: the {type(b.node).__name__} block (children {b.start}-{b.stop - 1}) changed after "
                "optimize_memory (a hook, stateful=True or a replaced child); it runs as plain modules, without "
                "the memory saving (call optimize_memory again after edgesnn.memopt.uninstall(model))", stacklevel=2)
        return live

    def _streamable(self) -> bool:
        in_block = {i for b in self._memopt_blocks for i in range(b.start, b.stop)}
        for i, child in enumerate(self):
            if i in in_block:
                continue
            steps = child_steps(child)
            if steps is None or any(st.kind == "node" for st in steps):
                return False  # a stateful or unknown child sees all T at once
            if any(st.kind == "bn" and batch_stats_mode(st.module) for st in steps):
                return False
        return not any(st.kind == "bn" and batch_stats_mode(st.module) for b in self._memopt_blocks for st in b.steps)

    def _forward_streamed(self, x: torch.Tensor) -> torch.Tensor:
        starts = {b.start: b for b in self._memopt_blocks}
        children = list(self)
        states: dict = {}
        outs = []
        for t0 in range(0, x.shape[0], EVAL_CHUNK_STEPS):
            y = x[t0:t0 + EVAL_CHUNK_STEPS]
            i = 0
            while i < len(children):
                b = starts.get(i)
                if b is None:
                    y = children[i](y)
                    i += 1
                    continue
                y, states[i] = run_node_post(b.node, b.post, apply_over_time(b.steps, y), states.get(i))
                i = b.stop
            outs.append(y)
        return torch.cat(outs)


def _single_step(b: Block, children: List[nn.Module]) -> bool:
    """Whether block ``b`` still holds its planned children and its node is now single-step (``step_mode='s'``)."""
    return list(children[b.start:b.stop]) == list(b.owners) and getattr(b.node, "step_mode", "m") == "s"


def _holds_state(b: Block) -> bool:
    """Whether block ``b``'s node holds a state carried from single-step calls (a block's chunks
    start from a fresh state; the node's own forward starts from the held one)."""
    return getattr(b.node, "_v", None) is not None


def _routes(live: List[Block]) -> Dict[int, Route]:
    """Each live block's :class:`Route`: linked to its neighbour blocks where those run as blocks."""
    ids = {id(b) for b in live}
    fed = {id(b.next_block) for b in live if b.next_block is not None}
    return {id(b): Route(from_prev=id(b) in fed, to_next=b.next_block is not None and id(b.next_block) in ids)
            for b in live}


def install(seq: nn.Sequential, blocks: List[Block]) -> None:
    """Turn ``seq`` into a :class:`MemoryOptimizedSequential` running ``blocks`` (in place)."""
    if type(seq) not in (nn.Sequential, MemoryOptimizedSequential):
        raise TypeError(f"model: can only rewrite a plain nn.Sequential, got {type(seq).__name__}")
    seq.__class__ = MemoryOptimizedSequential
    seq._memopt_blocks = list(blocks)


def uninstall(model: nn.Module) -> None:
    """Undo :func:`edgesnn.optimize_memory` everywhere in ``model``: plain ``nn.Sequential`` forwards again
    (the parameters and buffers are untouched)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    for m in model.modules():
        if isinstance(m, MemoryOptimizedSequential):
            m.__class__ = nn.Sequential
            del m._memopt_blocks
            m.__dict__.pop("_memopt_warned", None)
