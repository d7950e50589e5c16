"""``edgesnn.optimize_memory``: rewrite a multi-step SNN in place to train in near-constant memory in T.

It takes the place of SpikingJelly's ``memopt.optimize_memory`` (same name, same in-place rewrite)
with a simpler call: the model and one example input, instead of module types, a forward callback
and a level. It needs no GPU and no measuring runs: the planner (:mod:`edgesnn.planner.network`)
predicts each block's peak from shapes and picks its chunk size.
"""

from __future__ import annotations

import logging
import math
import numbers
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from ..planner import network as netplan
from .block import Block
from .layers import is_node, node_refusal
from .partition import candidate_sequentials, partition
from .report import as_chunk, check_example_input, check_initialized, is_whole_number, preserved_state, spiking_node, \
    trace_error, user_hooks_suspended, warn_left_as_is
from .sequential import MemoryOptimizedSequential, install
from ..functional.revlif import check_groups
from ..nn import RevLIF
from ..user_state import evaluating

__all__ = ["optimize_memory", "largest_batch"]


def _parse_budget(budget: Union[None, int, float, str]) -> Optional[int]:
    if budget is None:
        return None
    if isinstance(budget, str):
        from ..planner.cli import parse_bytes

        return parse_bytes(budget, name="budget")
    if is_whole_number(budget) and int(budget) >= 1:  # type: ignore[call-overload]
        return int(budget)  # type: ignore[call-overload]
    if (isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget < 1
            or budget != int(budget)):
        raise ValueError(f"budget: expected a positive whole number of bytes or a size like '512MiB', got {budget!r}")
    return int(budget)


def _check_bytes_per_param(v: object) -> None:
    """``optimizer_bytes_per_param`` is a finite number >= 0 (not a bool, not a name like "adam")."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
        raise ValueError(f"optimizer_bytes_per_param: expected a finite number >= 0 (0: none, Adam ~2), got {v!r}")


def _no_candidates_error(model: nn.Module) -> ValueError:
    """Why nothing can be rewritten: a subclass of ``nn.Sequential`` holds the nodes, the nodes are
    not LIF/RevLIF or are refused (:func:`node_refusal`), they sit outside a plain ``nn.Sequential``
    (e.g. attributes of a ResNet block), or there is no node at all."""
    sub = next((m for m in model.modules() if isinstance(m, nn.Sequential) and type(m) is not nn.Sequential
                and any(is_node(c) for c in m)), None)
    if sub is not None:
        return ValueError(f"model: only plain nn.Sequential containers are rewritten, but the LIF/RevLIF nodes are in "
                          f"{type(sub).__name__}, a subclass of it; build that part as an nn.Sequential")
    other = next(((name, m) for name, m in model.named_modules()
                  if spiking_node(m) and node_refusal(m) is None and not is_node(m)), None)
    if other is not None:
        return ValueError(f"model: no nn.Sequential with edgesnn LIF/RevLIF nodes found to optimize: the "
                          f"{type(other[1]).__name__} at {other[0] or 'the top'!r} is not supported (LIF and RevLIF only)")
    refused = next(((name, m) for name, m in model.named_modules() if node_refusal(m) is not None), None)
    if refused is not None:
        name, m = refused
        return ValueError(f"model: no nn.Sequential with edgesnn LIF/RevLIF nodes found to optimize: the "
                          f"{type(m).__name__} at {name or 'the top'!r} {node_refusal(m)}, so it is left as it is")
    placed = next(((name, m) for name, m in model.named_modules() if is_node(m)), None)
    if placed is not None:
        return _outside_sequential_error(model, *placed)
    foreign = next(((name, m) for name, m in model.named_modules() if _spikingjelly_node(m)), None)
    if foreign is not None:
        return ValueError(f"model: no nn.Sequential with edgesnn LIF/RevLIF nodes found to optimize: the "
                          f"{type(foreign[1]).__name__} at {foreign[0] or 'the top'!r} is SpikingJelly's (only edgesnn's "
                          "nodes are rewritten); use edgesnn.nn.LIF, which takes LIFNode's arguments, or RevLIF")
    return ValueError("model: no nn.Sequential with edgesnn LIF/RevLIF nodes found to optimize")


def _spikingjelly_node(m: nn.Module) -> bool:
    """A SpikingJelly neuron (a subclass of its ``BaseNode``), recognised without importing SpikingJelly."""
    return any(c.__name__ == "BaseNode" and c.__module__.startswith("spikingjelly.") for c in type(m).__mro__)


def _outside_sequential_error(model: nn.Module, name: str, node: nn.Module) -> ValueError:
    """A supported node that is not a direct child of a plain ``nn.Sequential`` (only those are rewritten)."""
    where = "is the model itself, not a child of a plain nn.Sequential"
    if name:
        parent = model.get_submodule(name.rpartition(".")[0])
        where = f"is a child of {type(parent).__name__}, not of a plain nn.Sequential"
    return ValueError(f"model: no nn.Sequential with edgesnn LIF/RevLIF nodes found to optimize: the "
                      f"{type(node).__name__} at {name or 'the top'!r} {where} (only those are rewritten; build the "
                      "layers around the nodes as nn.Sequential runs)")


def _node_stand_in(node: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``node``'s forward during the trace: its input's shape, laid out as the node's output is (dense:
    a node fed an input repeated over T as a stride-0 view still emits new spikes at every step, so
    the next block's input is not repeated). A RevLIF checks that its groups divide the input's
    channels, as its forward does (a plan was made for an input the model then refused)."""
    groups = node.groups if isinstance(node, RevLIF) else None
    channel_dim = 1 if getattr(node, "step_mode", "m") == "s" else 2

    def stand_in(x: torch.Tensor) -> torch.Tensor:
        if groups is not None:
            check_groups(x, groups, channel_dim)
        return x.contiguous()

    return stand_in


def _record_hooks(model: nn.Module, blocks: Dict[int, List[Block]], seqs, records: Dict, input_grad: bool) -> list:
    """The trace's hooks: each block's input shape, stride-0-over-T flag, dtype and device, its node's
    input shape, its pre-BatchNorm layer output shape and its output shape, into ``records[id(block)]``;
    and ``grad_in``: whether its input needs a gradient (the model input does, ``input_grad``, or a
    module with a trainable parameter ran before the block: ``records["grad"]``)."""
    hooks = []
    for seq in seqs:
        children = list(seq)
        for b in blocks[id(seq)]:
            def pre_hook(mod, args, b=b):
                x = args[0]
                records.setdefault(id(b), {})["in"] = (tuple(x.shape), x.stride(0) == 0 and x.shape[0] > 1, x.dtype)
                records[id(b)]["device"] = x.device.type
                records[id(b)]["grad_in"] = records.get("grad", input_grad)

            def node_hook(mod, args, out, b=b):
                records.setdefault(id(b), {})["node_in"] = tuple(args[0].shape)

            def out_hook(mod, args, out, b=b):
                records.setdefault(id(b), {})["out"] = tuple(out.shape)

            hooks.append(children[b.start].register_forward_pre_hook(pre_hook))
            hooks.append(b.node.register_forward_hook(node_hook))
            hooks.append(children[b.stop - 1].register_forward_hook(out_hook))
            for s in b.steps:
                if s.kind in ("param", "bn"):
                    def pre_bn(mod, args, out, b=b):
                        records.setdefault(id(b), {})["pre_out"] = tuple(out.shape)
                    hooks.append(s.module.register_forward_hook(pre_bn))

    def param_hook(mod, args):
        records["grad"] = True

    # (registered after the blocks' hooks: a block's first child that holds parameters itself, such
    # as SpikingJelly's layer.Conv2d, reports the state before them)
    for m in model.modules():
        if any(p.requires_grad for p in m.parameters(recurse=False)):
            hooks.append(m.register_forward_pre_hook(param_hook))
    return hooks


def _forward_once(model: nn.Module, example_input: torch.Tensor, fake: bool) -> None:
    """``model(example_input)`` without autograd, on fake tensors (shapes only, no memory) or for real."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with torch.no_grad():
        if not fake:
            model(example_input)
            return
        # a layer the fake tensors cannot run (or a wrong input) is logged by PyTorch's fake-tensor
        # module as a ~20-line traceback before it raises; the caller retries on the real input and
        # reports its error in one line, so the log is silenced for this call
        log = logging.getLogger("torch._subclasses.fake_tensor")
        level = log.level
        log.setLevel(logging.CRITICAL)
        try:
            with FakeTensorMode(allow_non_fake_inputs=True) as mode:
                model(mode.from_tensor(example_input))
        finally:
            log.setLevel(level)


def _forward_without_hooks(model: nn.Module, example_input: torch.Tensor, records: Dict) -> Optional[Exception]:
    """The trace's forward, called while the user's forward hooks are suspended: on fake tensors,
    else (a layer fake tensors cannot run) on the real input; the real input's error if both fail."""
    try:
        _forward_once(model, example_input, fake=True)
        return None
    except Exception:
        records.clear()
    try:
        _forward_once(model, example_input, fake=False)
        return None
    except Exception as err:
        records.clear()
        return err


def _check_input_dtype(model: nn.Module, example_input: torch.Tensor) -> None:
    """An ``example_input`` of a dtype none of the model's floating parameters has (int64, bool or float16
    into float32 layers) must run on the model for real (in eval mode, without autograd, the model's
    state kept; side effects outside the model, such as a counter its forward bumps, happen): the
    trace's fake tensors check no dtypes, and the plan would be made for a tensor the model cannot take
    (another plan and predicted peak than the real input's). Its first step (dim 0 cut to 1) runs
    first, the whole input only if that fails (a model that reshapes by a fixed T). One line naming the
    whole input's error when neither runs; a model that takes it (an ``nn.Embedding`` of token ids) is
    planned."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if not dtypes or example_input.dtype in dtypes:
        return
    err: Optional[Exception] = None
    for sample in (example_input[:1], example_input):
        try:
            with preserved_state(model), evaluating(model), user_hooks_suspended(model), torch.no_grad():
                model(sample)
            return
        except Exception as e:  # noqa: BLE001 - the model's own error, reported in one line
            err = e
    raise trace_error(example_input, err) from None


def _trace_shapes(model: nn.Module, example_input: torch.Tensor, blocks: Dict[int, List[Block]], seqs) -> None:
    """Record every block's input/output shapes with one forward on fake tensors (no memory, no stats update).

    The model's own forward hooks are not called (they would receive the trace's call: fake tensors
    in a spike monitor's records), unless the forward fails without them: then it runs once more on
    the real input with them (a model whose forward needs its hooks), and its error is the one reported.
    A model without hooks whose forward fails reports the real input's error."""
    records: Dict = {}
    # Spiking nodes keep their input's shape: during the trace they pass it through (dense, as
    # their spikes are: _node_stand_in), so only the stateless layers run, on fake tensors (no
    # memory, no data-dependent checks). (Listed before the trace's own hooks are registered: a
    # hooked node is not one the optimizer runs.)
    nodes = [m for m in model.modules() if is_node(m)]
    try:
        with preserved_state(model):
            hooks: list = []
            for n in nodes:
                n.forward = _node_stand_in(n)
            try:
                with user_hooks_suspended(model) as suspended:
                    hooks = _record_hooks(model, blocks, seqs, records, example_input.requires_grad)
                    failed = _forward_without_hooks(model, example_input, records)
                if failed is not None and not suspended:
                    raise failed
                if failed is not None:
                    _forward_once(model, example_input, fake=False)
            finally:
                for n in nodes:
                    del n.forward
                for h in hooks:
                    h.remove()
    except Exception as err:
        raise trace_error(example_input, err) from err
    for seq in seqs:
        for b in blocks[id(seq)]:
            r = records.get(id(b))
            if r is None or "in" not in r or "out" not in r:
                raise RuntimeError("example_input: the model's forward did not run every block once")
            if r["in"][0][0] == 0:
                raise ValueError(f"example_input: the number of time steps T (dim 0) must be >= 1, got shape "
                                 f"{r['in'][0]} at the input of an nn.Sequential to optimize")
            b.trace = r


def optimize_memory(
    model: nn.Module,
    example_input: torch.Tensor,
    budget: Union[None, int, float, str] = None,
    *,
    chunk: Optional[int] = None,
    optimizer_bytes_per_param: float = 0,
) -> "netplan.NetworkPlan":
    """Rewrite ``model`` in place so that its training peak memory is nearly constant in T.

    Every plain ``nn.Sequential`` in ``model`` that holds spiking nodes (edgesnn ``LIF``/``RevLIF``)
    among standard torch or SpikingJelly multi-step layers is split into blocks (layers -> node ->
    pooling); each block keeps its input compactly (1 bit per spike; once if repeated over T) and
    recomputes its interior in backward, ``K`` time steps at a time, with exact BatchNorm.
    Gradients equal the unoptimized model's up to float rounding; running statistics are updated
    once per step. The state_dict is unchanged.

    Args:
        model: the network (modified in place).
        example_input: one input batch as the model takes it (shapes only are used: it is run on
            fake tensors, without calling the model's forward hooks). Pass inputs repeated over T as
            ``x.unsqueeze(0).expand(T, ...)`` (or use a model that does, like edgesnn's classifiers)
            so they are stored once; such a view's own gradient is per step only where the forward can
            see it is read (a leaf, a hook or ``retain_grad()`` set before it), else its mean over T
            at every step (its sum over T, the gradient of ``x``, is exact). Its ``requires_grad``
            says whether training inputs will need a gradient: where they do not, the blocks before
            the first trainable parameter (a node fed the input) record nothing and are planned as
            plain modules (strategy ``plain``).
        budget: peak training bytes to fit (a whole number, or a size such as ``"120MiB"``); ``None``
            picks the smallest peak that costs little time.
        chunk: force one chunk size ``K`` for every block instead of planning (not with a budget).
        optimizer_bytes_per_param: optimizer state per parameter byte to count, a finite number
            >= 0 (0: forward and backward only; Adam ~2).

    Returns:
        the :class:`~edgesnn.planner.network.NetworkPlan`: per block strategy and chunk, predicted peak.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    check_example_input(example_input)
    check_initialized(model)
    chunk = as_chunk(chunk)
    _check_bytes_per_param(optimizer_bytes_per_param)
    budget_bytes = _parse_budget(budget)
    if chunk is not None and budget_bytes is not None:
        raise ValueError("budget, chunk: give one of them (a forced chunk is not planned against a budget)")
    if any(isinstance(m, MemoryOptimizedSequential) for m in model.modules()):
        raise ValueError("model: already rewritten by optimize_memory; call edgesnn.memopt.uninstall(model) first "
                         "to plan it again")
    seqs = candidate_sequentials(model)
    if not seqs:
        raise _no_candidates_error(model)
    blocks = {id(s): partition(s) for s in seqs}
    _check_input_dtype(model, example_input)
    _trace_shapes(model, example_input, blocks, seqs)
    all_blocks = [b for s in seqs for b in blocks[id(s)]]
    plan = netplan.plan_blocks(all_blocks, model, budget_bytes, chunk=chunk,
                               optimizer_bytes_per_param=optimizer_bytes_per_param)
    for s in seqs:
        install(s, blocks[id(s)])
    warn_left_as_is(model, seqs, blocks)
    return plan


def largest_batch(
    model: nn.Module, make_input: Callable[[int], torch.Tensor], budget: int, max_batch: int = 1024
) -> Tuple[int, Optional["netplan.NetworkPlan"]]:
    """The largest batch whose :func:`optimize_memory` plan fits ``budget`` bytes (activations above
    the step's baseline), by bisection over predictions only (fake tensors: nothing is run).

    Args:
        model: the network (not modified: each trial plans a copy).
        make_input: ``batch -> example input`` of ``batch`` samples, as the model takes it (e.g.
            ``[T, batch, ...]``: ``lambda b: x0.expand(T, b, ...)``).
        budget: bytes for the step's activations and temporaries.
        max_batch: upper end of the search.

    Returns:
        ``(batch, plan)``, or ``(0, None)`` if batch 1 does not fit.
    """
    import copy

    def plan_at(b: int):
        try:
            return optimize_memory(copy.deepcopy(model), make_input(b), budget=budget)
        except netplan.PlanningError:
            return None

    lo, hi, best = 1, max(1, int(max_batch)), (0, None)
    while lo <= hi:
        mid = (lo + hi) // 2
        p = plan_at(mid)
        if p is not None:
            best, lo = (mid, p), mid + 1
        else:
            hi = mid - 1
    return best
