"""What ``optimize_memory`` says about its arguments and about the parts of a model it leaves as they are.

Every message is one line naming the argument (or the module) and what was expected, so a user
switching from SpikingJelly's ``memopt.optimize_memory`` (whose call takes module types, an
example-forward callback and a level) is told what differs, and never gets a model that is only
partly optimized without being told.
"""

from __future__ import annotations

import contextlib
import numbers
import warnings
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from ..nn.layers import SeqToANN
from .layers import block_steps, child_steps, hooked, is_node, node_refusal

__all__ = ["check_example_input", "as_chunk", "is_whole_number", "preserved_state", "trace_error",
           "spiking_node", "warn_left_as_is"]


def _is_types(v: object) -> bool:
    return isinstance(v, type) or (isinstance(v, (tuple, list)) and len(v) > 0
                                   and all(isinstance(t, type) for t in v))


def check_example_input(example_input: object) -> None:
    """A tensor ``[T, B, ...]`` (at least one dim); module types (SpikingJelly's ``targets``) get their own message."""
    if _is_types(example_input):
        raise TypeError("example_input: expected a tensor [T, B, ...], got module types: edgesnn.optimize_memory "
                        "finds the blocks itself (no targets argument, unlike SpikingJelly's memopt); call "
                        "optimize_memory(model, example_input)")
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input: expected a tensor [T, B, ...], got {type(example_input).__name__}")
    if example_input.dim() == 0:
        raise ValueError("example_input: expected a tensor [T, B, ...], got a 0-d tensor")


def is_whole_number(v: object) -> bool:
    """An integer of any integral type (``int``, ``numpy.int64``...), not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and type(v).__name__ != "bool_"


def as_chunk(chunk: object) -> Optional[int]:
    """``chunk``: ``None`` or an integer >= 1 (numpy integers too)."""
    if chunk is None:
        return None
    if not is_whole_number(chunk) or int(chunk) < 1:  # type: ignore[call-overload]
        raise ValueError(f"chunk: expected an integer >= 1, got {chunk!r}")
    return int(chunk)  # type: ignore[call-overload]


def trace_error(example_input: torch.Tensor, err: BaseException) -> ValueError:
    """The model's forward failed on ``example_input``: one line with its shape and dtype and the cause."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return ValueError(f"example_input: the model's forward failed on it (shape {tuple(example_input.shape)}, "
                      f"dtype {example_input.dtype}, device {example_input.device.type}); pass one input batch "
                      f"[T, B, ...] as the model takes it: {type(err).__name__}: {first}")


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Leave ``model`` as it was after a trace: its buffers' values, SpikingJelly memories (a
    ``Dropout`` mask, a node's ``v``), tensors set as plain attributes, and the CPU RNG state.
    (A trace on fake tensors would otherwise leave fake tensors there, which the next real forward
    reads.)"""
    buffers = [(buf, buf.detach().clone()) for buf in model.buffers()]
    memories: List[Tuple[dict, dict]] = []
    attrs: List[Tuple[nn.Module, Dict[str, object]]] = []
    for m in model.modules():
        mem = m.__dict__.get("_memories")
        if isinstance(mem, dict):
            memories.append((mem, dict(mem)))
        attrs.append((m, {k: v for k, v in m.__dict__.items() if isinstance(v, torch.Tensor)}))
    rng = torch.get_rng_state()
    try:
        yield
    finally:
        torch.set_rng_state(rng)
        with torch.no_grad():
            for buf, val in buffers:
                buf.copy_(val)
        for mem, old in memories:
            mem.clear()
            mem.update(old)
        for m, old in attrs:
            for k, v in list(m.__dict__.items()):
                if isinstance(v, torch.Tensor) and k not in old:
                    del m.__dict__[k]  # set by the trace
            m.__dict__.update(old)


def spiking_node(m: nn.Module) -> bool:
    """An edgesnn spiking node of any kind (LIF, RevLIF, ParametricLIF, subclasses)."""
    from ..nn.neurons import _SpikingNode

    return isinstance(m, _SpikingNode)


def _reason(m: nn.Module) -> str:
    if spiking_node(m) and node_refusal(m) is None and not is_node(m):
        return "not supported: LIF and RevLIF nodes only"
    if node_refusal(m) is not None:
        return str(node_refusal(m))
    if child_steps(m) is None:
        if "Dropout" in type(m).__name__:
            return "not supported: a recomputation would draw a new mask"
        if isinstance(m, SeqToANN) and type(m) is not SeqToANN and not hooked(m):
            return "a SeqToANN subclass: its own methods would be bypassed"
        return "not a supported layer, or has hooks"
    if block_steps(m) is None:
        return "a layer subclass with its own forward: a recomputation would run it again"
    return "no LIF/RevLIF node follows it in its run"


def warn_left_as_is(model: nn.Module, seqs: List[nn.Sequential], blocks: Dict[int, list]) -> List[str]:
    """Warn (one line) about the spiking parts of ``model`` that stay plain modules: children of a
    rewritten ``nn.Sequential`` before its last block that no block holds, and spiking nodes outside
    every block. Layers after a container's last block (a classifier head) are not listed: they
    keep nothing over T that a block could save. Returns the entries."""
    names = {id(m): n for n, m in model.named_modules()}
    seq_ids = {id(s) for s in seqs}
    in_block = set()
    entries: List[str] = []
    for s in seqs:
        bl = blocks[id(s)]
        children = list(s)
        covered = {i for b in bl for i in range(b.start, b.stop)}
        in_block.update(id(children[i]) for i in covered)
        last = max((b.stop for b in bl), default=0)
        for i, c in enumerate(children[:last]):
            if i not in covered and not any(id(x) in seq_ids for x in c.modules()):
                entries.append(f"{type(c).__name__} at {names.get(id(c)) or str(i)!r} ({_reason(c)})")
                in_block.add(id(c))
    for n, m in model.named_modules():
        if spiking_node(m) and id(m) not in in_block:
            why = _reason(m) if not is_node(m) else "not a direct child of a plain nn.Sequential"
            entries.append(f"{type(m).__name__} at {n or 'the top'!r} ({why})")
    if entries:
        shown = "; ".join(entries[:6]) + (f"; and {len(entries) - 6} more" if len(entries) > 6 else "")
        warnings.warn(f"optimize_memory: left as plain modules (no memory saving there): {shown}", stacklevel=3)
    return entries
