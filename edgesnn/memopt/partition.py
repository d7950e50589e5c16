"""Split a multi-step ``nn.Sequential`` into blocks: layers -> spiking node -> parameter-free tail.

A block ends after its node and the parameter-free layers that follow it (pooling, flatten), so
the gradient that crosses a block boundary is the pooled one (4x smaller after a 2x2 pool). What
each block's input holds (spikes, pooled spikes, or real values) follows from the layers that
produced it, which decides how the block stores it.
"""

from __future__ import annotations

from typing import List

from torch import nn

from .block import Block
from .layers import Step, block_steps, is_node, output_codec
from .paramgrads import trainable_params
from .sequential import MemoryOptimizedSequential

__all__ = ["partition"]


def partition(seq: nn.Sequential, chunk: int = 8) -> List[Block]:
    """Blocks of ``seq`` (children ``[start, stop)``), each with exactly one spiking node.

    Children that are not supported (see :func:`edgesnn.memopt.layers.block_steps`), layers after
    the last node, and runs without a node stay as they are.
    """
    children = list(seq)
    blocks: List[Block] = []
    codec = "dense"
    pending: List[Step] = []
    pending_start = 0
    i = 0
    while i < len(children):
        steps = block_steps(children[i])
        if steps is None:
            pending, pending_start, codec = [], i + 1, "dense"
            i += 1
            continue
        if steps[0].kind != "node":
            pending.extend(steps)
            i += 1
            continue
        node = steps[0].module
        in_codec = codec
        for s in pending:
            codec = output_codec(s, codec)
        j = i + 1
        post: List[Step] = []
        codec = output_codec(steps[0], codec)
        while j < len(children):
            nxt = block_steps(children[j])
            if nxt is None or any(s.kind != "free" for s in nxt):
                break
            for s in nxt:
                codec = output_codec(s, codec)
            post.extend(nxt)
            j += 1
        owners = children[pending_start:j]
        blocks.append(Block(pending_start, j, list(pending), node, post, in_codec, chunk, trainable_params(owners),
                            out_codec=codec, owners=owners))
        pending, pending_start = [], j
        i = j
    for prev, nxt in zip(blocks, blocks[1:]):
        if prev.stop == nxt.start and prev.out_codec != "dense" and nxt.in_codec == prev.out_codec:
            prev.next_block = nxt
    return blocks


def candidate_sequentials(model: nn.Module) -> List[nn.Sequential]:
    """Plain ``nn.Sequential`` containers in ``model`` with at least one spiking node as a direct child."""
    out = []
    for m in model.modules():
        if type(m) in (nn.Sequential, MemoryOptimizedSequential) and any(is_node(c) for c in m):
            out.append(m)
    return out
