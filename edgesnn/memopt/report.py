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
from .layers import block_steps, child_steps, hooked, is_node, leaf_step, node_refusal, recomputable_parametrizations

__all__ = ["check_example_input", "check_initialized", "as_chunk", "is_whole_number", "preserved_state",
           "user_hooks_suspended", "trace_error", "spiking_node", "warn_left_as_is"]


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


def check_initialized(model: nn.Module) -> None:
    """No lazy module (``nn.LazyLinear``, ``nn.LazyConv2d``...) with parameters still uninitialized: the
    shape trace runs on fake tensors, which cannot initialize them (it used to fail with 'Cannot copy
    out of meta tensor', blamed on ``example_input``)."""
    from torch.nn.modules.lazy import LazyModuleMixin

    for name, m in model.named_modules():
        if isinstance(m, LazyModuleMixin) and m.has_uninitialized_params():
            raise ValueError(f"model: the {type(m).__name__} at {name or 'the top'!r} has uninitialized (lazy) "
                             "parameters; run the model once (model(example_input)) before optimize_memory, as "
                             "before building an optimizer")


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
    ``Dropout`` mask, a node's ``v``), every module's plain attributes (tensors set by a forward,
    an edgesnn node's carried state ``.v``, which a stateful node used to lose: it was deleted as
    'set by the trace'), and the CPU RNG state. (A trace on fake tensors would otherwise leave
    fake tensors there, which the next real forward reads.)"""
    buffers = [(buf, buf.detach().clone()) for buf in model.buffers()]
    memories: List[Tuple[dict, dict]] = []
    attrs: List[Tuple[nn.Module, Dict[str, object]]] = []
    for m in model.modules():
        mem = m.__dict__.get("_memories")
        if isinstance(mem, dict):
            memories.append((mem, dict(mem)))
        attrs.append((m, dict(m.__dict__)))
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
            for k in [k for k in m.__dict__ if k not in old]:
                del m.__dict__[k]  # set by the trace
            m.__dict__.update(old)


@contextlib.contextmanager
def user_hooks_suspended(model: nn.Module) -> Iterator[bool]:
    """Inside, the forward and forward-pre hooks that ``model``'s modules hold on entry are not
    called; hooks registered inside (the trace's own) are. Yields whether there were any. On exit
    the suspended hooks are put back, in their order, after any registered inside. (Global module
    hooks never meet a trace: with one registered no node is optimized, see
    :func:`~edgesnn.memopt.layers.hooked`.)

    ``optimize_memory``'s shape trace runs the model on fake tensors: a user's hook (a spike
    monitor, a call counter) used to receive that call, and kept FakeTensors in its records."""
    dicts = [getattr(m, n, None) for m in model.modules() for n in ("_forward_pre_hooks", "_forward_hooks")]
    taken = [(d, list(d.items())) for d in dicts if isinstance(d, dict) and d]
    for d, items in taken:
        for k, _ in items:
            del d[k]
    try:
        yield bool(taken)
    finally:
        for d, items in taken:
            d.update(items)


def spiking_node(m: nn.Module) -> bool:
    """An edgesnn spiking node of any kind (LIF, RevLIF, ParametricLIF, subclasses)."""
    from ..nn.neurons import _SpikingNode

    return isinstance(m, _SpikingNode)


def _wrapped_layers(m: nn.Module) -> List[nn.Module]:
    """The per-step layers a multi-step wrapper holds (``SeqToANN``, SpikingJelly's
    ``SeqToANNContainer``; an inner plain ``nn.Sequential`` unrolled), else ``[]``."""
    if isinstance(m, SeqToANN):
        inner = m.module
        return list(inner) if type(inner) is nn.Sequential else [inner]
    if type(m).__name__ == "SeqToANNContainer" and isinstance(m, nn.Sequential):
        return list(m)
    return []


def _unsupported_reason(m: nn.Module) -> str:
    """Why the child ``m`` that :func:`child_steps` refuses is left as it is, naming the layer
    inside a wrapper that is the cause (``"its GroupNorm is not a supported layer"``)."""
    inner = _wrapped_layers(m)
    drop = next((x for x in [m] + inner if "Dropout" in type(x).__name__), None)
    if drop is not None:
        its = "" if drop is m else f"its {type(drop).__name__}: "
        return its + "not supported: a recomputation would draw a new mask"
    if isinstance(m, SeqToANN) and type(m) is not SeqToANN and not hooked(m):
        return "a SeqToANN subclass: its own methods would be bypassed"
    if not all(recomputable_parametrizations(x) for x in m.modules()):
        return "a parametrization other than weight_norm: a recomputation would compute it again"
    if hooked(m):
        return "has hooks"
    for x in inner:
        if any(hooked(y) for y in x.modules()):
            return f"its {type(x).__name__} has hooks"
        if isinstance(x, nn.Sequential) or leaf_step(x) is None:
            return f"its {type(x).__name__} is not a supported layer"
    return "not a supported layer"


def _reason(m: nn.Module) -> str:
    if spiking_node(m) and node_refusal(m) is None and not is_node(m):
        return "not supported: LIF and RevLIF nodes only"
    if node_refusal(m) is not None:
        return str(node_refusal(m))
    if child_steps(m) is None:
        return _unsupported_reason(m)
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
