"""Peak memory of one training step of a multi-step model trained *without* edgesnn's optimizer.

:mod:`edgesnn.planner.network` predicts the peak of a model rewritten by
:func:`edgesnn.optimize_memory`; this module predicts the peak of the baselines it is compared
with, from shapes only (no measuring runs of the model):

* ``Strategy("bptt")``: plain autograd backpropagation through time over an ``nn.Sequential`` of
  multi-step layers (SpikingJelly ``layer.*`` with ``step_mode="m"``, edgesnn ``LIF``/``RevLIF``,
  SpikingJelly neurons; nested ``nn.Sequential`` blocks are flattened; edgesnn's ``SeqToANN`` counts
  as its wrapped layers on ``[T * B, ...]``, and a ``build_model`` classifier as its ``body``).
* ``Strategy("sj_memopt")``: SpikingJelly ``memopt.optimize_memory(level=1, compress=True)``:
  every top-level ``nn.Sequential`` child is a non-reentrant gradient checkpoint whose first input
  is packed to 1 bit per element when it is strictly binary (spikes, or max-pooled spikes).

The step is replayed storage by storage (:mod:`edgesnn.planner.step_replay`), phase by phase, like
:mod:`edgesnn.planner.peak`:
forward (each layer's output, what autograd saves, its transients), the loss, then backward in
reverse (input gradient, transients, then the saved storages and the incoming gradient freed).
What each layer saves comes from :mod:`edgesnn.planner.memory_model` (``_classify`` for the
stateless layers, ``option_cost`` for edgesnn's nodes); other spiking nodes (SpikingJelly's) are
probed once on a deep copy with a ``[2|4, 1, *shape]`` input under saved-tensor hooks.

The result is what the benchmark measures (``tools/bench_network_memory.py``): ``VmHWM`` during
the measured steps (``--steps``, default 3) after a warm-up step, minus the RSS before them, with
glibc's mmap threshold pinned to 128 KiB. Two process effects are replayed, not fitted:

* edgesnn's CPU buffer pool (:mod:`edgesnn.kernels.buffers`) keeps the storages of kernel outputs
  and input gradients (>= 1 MiB, up to its limit) for reuse. Its idle buffers are memory the
  process holds, so the benchmark empties the pool once, before the first measured step, and the
  steps' own pooled buffers count. The pool's policy (reuse within a step, idle buffers kept up to
  its limit) is simulated over the warm-up and every measured step: from the second measured step
  on, the step starts with the buffers the pool kept idle at the end of the previous one, which are
  above the baseline. That matters when the pool does not fill up: RevLIF on VGG-11 at T = 8 keeps
  ~58 MiB idle after a step, and the second step's peak is ~20 MiB above the first's; at T = 32 the
  pool is at its limit anyway and both steps peak alike.
* a spiking node's state (SpikingJelly ``MemoryModule``) stays allocated after the forward and is
  freed by ``reset_net`` at the start of the next step.

Transients (bytes on top of what is live), from the code they come from, checked against
interval peaks of VmHWM between module and autograd-node hooks on VGG-11 (not fitted to the
benchmark's peaks):

* oneDNN convolution: forward ``output + weight`` (blocked-layout copies), backward
  ``grad_output + 2 x weight`` (a reordered ``grad_output``, the new weight gradient and its
  reorder; the new gradient is added into ``.grad`` and freed). ``memory_model`` counts
  ``2 x output`` in backward, measured on small-weight layers; VGG's 512x512 kernels (9 MiB) decide
  the T = 8 peak, so the weight terms are needed here.
* SpikingJelly LIF (its torch backend's reference forward, the per-step autograd loop on the
  CPU): the per-step spike list before ``torch.stack`` and the stacked ``h`` sequence the caller
  drops (2 x output) plus one ``[B, N]`` step temporary in forward; three ``[B, N]``
  temporaries at the start of its backward, whose input gradient then grows as the per-step saved
  tensors are freed.
* SpikingJelly's ``BitSpikeCompressor``: ``x.to(uint8)``, the shifted copy and the int16 sums
  when packing (2.25 bytes per element); unpacking ends in ``restored = token + (restored -
  token).detach()`` (3 dense copies at once).

Small (< 128 KiB) allocations come from glibc's heap, which keeps freed chunks resident; they are
counted like the others (a few MiB of over-prediction at most on VGG-11).
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..memory import SavedTensorCounter, _storage_key
from ..models import SpikingClassifier
from ..user_state import random_stream_kept
from ..nn import LIF, RevLIF, SeqToANN
from ..nn.neurons import _SpikingNode
from .layer_types import CONV_TYPES, MAX_POOL_TYPES
from .memory_model import ZERO, Cost, Layer, _classify, option_cost, probe_input, resolved_backend
from .step_replay import Chain, Pool, Replay, replay_bptt, replay_sj_memopt

__all__ = ["Strategy", "OpCost", "PeakPrediction", "describe_ops", "saved_bytes", "predict_peak"]

_PASS_BINARY = MAX_POOL_TYPES + (nn.Flatten, nn.Identity, nn.Unflatten, nn.Dropout)


@dataclass(frozen=True)
class Strategy:
    """How the model is trained.

    Attributes:
        kind: ``"bptt"`` (plain autograd over the whole sequence) or ``"sj_memopt"`` (SpikingJelly
            memopt level 1: each top-level ``nn.Sequential`` child is a checkpointed block).
        compress: ``sj_memopt`` only: a block's first input is kept packed (1 bit per element)
            when it is strictly binary (SpikingJelly's ``compress=True``); otherwise it is kept as is.
    """

    kind: str = "bptt"
    compress: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("bptt", "sj_memopt"):
            raise ValueError(f"strategy kind: expected 'bptt' or 'sj_memopt', got {self.kind!r}")


@dataclass
class OpCost:
    """One leaf layer as the replay sees it. Element counts are per sample and time step.

    Attributes:
        saves_input / saves_output: autograd keeps the layer's input / output storage.
        private: other saved bytes (``Cost``: linear in T and B); ``private_pooled`` the part of
            them served by edgesnn's buffer pool (RevLIF's packed bits).
        per_step: the layer is a per-step autograd loop (its saved tensors are one storage per
            step; its input gradient is built step by step, see the module docstring).
        work / bwork: forward / backward transient bytes on top of the output / input gradient.
        state: bytes the layer keeps as module state after the forward (until the next reset).
        pooled: the output and the input gradient come from edgesnn's buffer pool.
        binary_out: the output is strictly 0/1 (spikes): SpikingJelly memopt packs such inputs.
        reads_repeated: the layer reads an input repeated over T (a zero-stride view) as it is, no
            ``[T, B, ...]`` copy: a spiking node (edgesnn's kernels read its one step, the PyTorch
            step loops one step at a time).
        trains: the layer has trainable parameters (the first such layer is the first that records
            a graph on the model input, which needs no gradient).
    """

    name: str
    kind: str
    in_elems: int
    out_elems: int
    view: bool = False
    saves_input: bool = False
    saves_output: bool = False
    private: Cost = ZERO
    private_pooled: Cost = ZERO
    per_step: bool = False
    work: Cost = ZERO
    bwork: Cost = ZERO
    state: Cost = ZERO
    pooled: bool = False
    binary_out: bool = False
    out_shape: Tuple[int, ...] = ()
    module: Optional[nn.Module] = field(default=None, repr=False)
    reads_repeated: bool = False
    trains: bool = False


@dataclass(frozen=True)
class PeakPrediction:
    """Predicted peak of one training step (bytes above the RSS before it).

    Attributes:
        peak_bytes: VmHWM during the measured steps minus the RSS before the first of them
            (parameters, their gradients and the buffer pool's resident storages are in that
            baseline; the pool is emptied just before it).
        phase: where the peak happens (``"forward <layer>"``, ``"backward <layer>"``...; with
            ``" (measured step k)"`` appended when a later measured step reaches it).
        forward_bytes: live at the loss (the end of the forward) above the RSS before the step:
            what autograd keeps (checkpointed blocks: their kept inputs) and the nodes' states, less
            what the buffer pool serves from storages it already holds.
        pool_bytes: what edgesnn's buffer pool holds resident at the start of the step.
    """

    peak_bytes: int
    phase: str
    forward_bytes: int
    pool_bytes: int
    events: Tuple[Tuple[str, int], ...] = ()


# ----------------------------------------------------------------------------------- layers


@contextlib.contextmanager
def _single_step(module: nn.Module) -> Iterator[None]:
    """Run a SpikingJelly multi-step stateless layer on one step (``[N, ...]``) while classifying it."""
    mode = getattr(module, "step_mode", None)
    if mode is None or isinstance(module, (LIF, RevLIF)):
        yield
        return
    try:
        module.step_mode = "s"
        yield
    finally:
        module.step_mode = mode


def _probe_node(module: nn.Module, shape: Tuple[int, ...], dtype: torch.dtype) -> Tuple[bool, bool, Cost, bool]:
    """``(saves_input, saves_output, private, per_step)`` of a stateful spiking node (a deep copy).

    Runs it on ``[n, 1, *shape]`` (n = 2, 4 steps, batch 1) under saved-tensor hooks and fits
    bytes = a * n + c; ``per_step``: the number of saved storages grows with n.
    """
    probe = copy.deepcopy(module)
    probe.train()
    pkeys = {_storage_key(p) for p in probe.parameters()} | {_storage_key(b) for b in probe.buffers()}
    res = []
    for n in (2, 4):
        if hasattr(probe, "reset"):
            probe.reset()
        x = probe_input((n, 1, *shape), dtype)
        with SavedTensorCounter() as c, random_stream_kept(probe):
            y = probe(x)
        keys = set(c.storages) - pkeys
        kx, ky = _storage_key(x), _storage_key(y)
        other = [c.storages[k] for k in keys if k not in (kx, ky)]
        res.append((kx in keys, ky in keys, sum(other), len(other)))
        c._keep.clear()
    a = (res[1][2] - res[0][2]) / 2.0
    return res[1][0], res[1][1], Cost(step=a, sample=max(0.0, res[0][2] - 2 * a)), res[1][3] > res[0][3]


def _node_op(idx: int, name: str, module: nn.Module, shape: Tuple[int, ...], dtype: torch.dtype, db: int) -> OpCost:
    n = math.prod(shape)
    if isinstance(module, (LIF, RevLIF)):
        option = "lif" if isinstance(module, LIF) else f"revlif:{module.groups}"
        L = Layer(idx, name, "spiking", tuple(shape), tuple(shape), spiking=0, module=module)
        si, so, priv, work, bwork = option_cost(L, option, db)
        op = OpCost(name, type(module).__name__, n, n, saves_input=si, saves_output=so, private=priv, work=work,
                    bwork=bwork, binary_out=isinstance(module, LIF), out_shape=tuple(shape), module=module)
        if resolved_backend(module, dtype) == "numba":
            # the numba kernels write into their outputs: out/grad_x [T, B, N] and RevLIF's bits come
            # from the buffer pool; the other transients are [B, N] states (v_T out; grad_v0, and
            # RevLIF's reconstructed v0, in backward)
            op.pooled = True
            op.work = Cost(sample=n * db)
            op.bwork = Cost(sample=(2 if isinstance(module, RevLIF) else 1) * n * db)
            if isinstance(module, RevLIF):
                op.private, op.private_pooled = Cost(step=priv.step, sample=priv.sample, const=priv.const), Cost(packed=priv.packed)
        return op
    si, so, priv, per_step = _probe_node(module, tuple(shape), dtype)
    out_b = n * db
    op = OpCost(name, type(module).__name__, n, n, saves_input=si, saves_output=so, private=priv, per_step=per_step,
                binary_out=True, out_shape=tuple(shape), module=module)
    if per_step:
        op.work = Cost(step=2 * out_b, sample=out_b)
        op.bwork = Cost(sample=3 * out_b)
    mem = getattr(module, "_memories", None)
    if isinstance(mem, dict):
        op.state = Cost(sample=len(mem) * out_b)
    return op


def _is_node(module: nn.Module) -> bool:
    """A spiking node: edgesnn's LIF/RevLIF/ParametricLIF (any ``_SpikingNode``), or a SpikingJelly
    ``MemoryModule`` (state in ``_memories``). Nodes other than LIF/RevLIF are probed on a deep copy
    (:func:`_probe_node`): classified as stateless layers, they would run one step on the model's own
    node and leave it holding a carried state."""
    return isinstance(module, _SpikingNode) or isinstance(getattr(module, "_memories", None), dict)


def _layer_op(idx: int, name: str, module: nn.Module, shape: Tuple[int, ...], dtype: torch.dtype, db: int) -> OpCost:
    with _single_step(module):
        L = _classify(idx, name, module, tuple(shape), dtype, db)
    pbytes = sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
    op = OpCost(name, L.kind, L.in_elems, L.out_elems, view=L.view, saves_input=L.saves_input, saves_output=L.saves_output,
                private=L.private, work=L.work, bwork=L.bwork + Cost(const=pbytes), out_shape=tuple(L.out_shape),
                module=module)
    if isinstance(module, CONV_TYPES):
        # oneDNN: forward output + weight in blocked layouts; backward a reordered grad_output,
        # the new weight gradient and its reorder (see the module docstring)
        out_b = L.out_elems * db
        op.work = Cost(step=out_b, const=pbytes)
        op.bwork = Cost(step=out_b, const=2 * pbytes)
    op.binary_out = isinstance(module, _PASS_BINARY)  # passes a binary input on (and-ed with it below)
    return op


def _body(model: nn.Module) -> nn.Module:
    """The multi-step chain of ``model``: ``model.body`` for a :class:`~edgesnn.models.SpikingClassifier`
    (its repeat over T and the mean over T are the replay's input expand and loss head), else ``model``."""
    return model.body if isinstance(model, SpikingClassifier) else model


def _leaves(model: nn.Module, prefix: str = "") -> List[Tuple[str, nn.Module]]:
    """The layers of a (nested) ``nn.Sequential`` in call order; checkpoint wrappers, a
    :class:`~edgesnn.models.SpikingClassifier` (its ``body``) and :class:`~edgesnn.nn.SeqToANN`
    (its wrapped modules) are looked through.

    A ``SeqToANN`` runs its modules on ``[T * B, ...]`` and views the result as ``[T, B, ...]``:
    the same storages as the wrapped layers applied one after the other to the folded tensor (the
    fold copies only a non-contiguous input, the expanded model input, which the replay counts as
    edge 0's copy), so its modules are leaves here, named ``<seq>.module[.<i>]``.
    """
    inner = getattr(model, "_checkpoint_wrapped_module", None)
    if inner is not None:
        return _leaves(inner, prefix)
    if isinstance(model, SpikingClassifier):
        return _leaves(model.body, f"{prefix}body.")
    if isinstance(model, SeqToANN):
        return _leaves(model.module, f"{prefix}module.")
    if isinstance(model, nn.Sequential) and not _is_node(model):
        out = []
        for name, child in model.named_children():
            out += _leaves(child, f"{prefix}{name}.")
        return out
    return [(prefix.rstrip("."), model)]


def describe_ops(layers: Sequence[Tuple[str, nn.Module]], in_shape: Sequence[int], dtype: torch.dtype = torch.float32,
                 binary_in: bool = False) -> List[OpCost]:
    """:class:`OpCost` of each ``(name, module)`` for one sample's input shape ``in_shape`` (no T, B dims)."""
    db = torch.empty(0, dtype=dtype).element_size()
    shape = tuple(int(s) for s in in_shape)
    binary = binary_in
    ops = []
    for i, (name, mod) in enumerate(layers):
        if _is_node(mod):
            op = _node_op(i, name, mod, shape, dtype, db)
            op.reads_repeated = True
            binary = op.binary_out
        else:
            op = _layer_op(i, name, mod, shape, dtype, db)
            shape = op.out_shape
            binary = binary and op.binary_out
            op.binary_out = binary
        op.trains = any(p.requires_grad for p in mod.parameters())
        ops.append(op)
    return ops


# ----------------------------------------------------------------------------------- replay


def _units(model: nn.Module, strategy: Strategy) -> List[Tuple[bool, List[Tuple[str, nn.Module]]]]:
    """``[(checkpointed, layers)]``: one unit for BPTT; one per top-level child for ``sj_memopt``."""
    if strategy.kind == "bptt":
        return [(False, _leaves(model))]
    model = _body(model)
    if not isinstance(model, nn.Sequential):
        raise TypeError("model: sj_memopt needs an nn.Sequential whose checkpointed blocks are nn.Sequential children")
    units: List[Tuple[bool, List[Tuple[str, nn.Module]]]] = []
    for name, child in model.named_children():
        inner = getattr(child, "_checkpoint_wrapped_module", child)
        if isinstance(inner, nn.Sequential):
            units.append((True, _leaves(inner, f"{name}.")))
        elif units and not units[-1][0]:
            units[-1][1].extend(_leaves(child, f"{name}."))
        else:
            units.append((False, _leaves(child, f"{name}.")))
    return units


def _replay(model: nn.Module, in_shape: Sequence[int], T: int, batch: int, dtype: torch.dtype, strategy: Strategy,
            num_classes: Optional[int], pool_limit: Optional[int], steps: int = 3) -> Tuple[PeakPrediction, List]:
    from ..kernels import buffers

    db = torch.empty(0, dtype=dtype).element_size()
    units = _units(model, strategy)
    shape = tuple(int(s) for s in in_shape)
    described = []
    binary = False
    for ckpt, layers in units:
        ops = describe_ops(layers, shape, dtype, binary_in=binary)
        described.append((ckpt, ops))
        if ops:
            binary, shape = ops[-1].binary_out, ops[-1].out_shape
    classes = int(num_classes) if num_classes is not None else math.prod(shape)
    limit = buffers.pool_limit() if pool_limit is None else int(pool_limit)
    r = Replay(Pool(limit, buffers._MIN_BYTES))
    saved = 0
    base = pool_base = 0
    events: List[Tuple[str, int]] = []
    # a warm-up step, then the measured steps. The pool is emptied once, before the first measured
    # step (the RSS baseline): what it keeps idle at the end of a measured step is resident above
    # that baseline when the next measured step starts, and the peak is taken over all of them.
    for step in range(1 + max(1, int(steps))):
        for k in [k for k in r.plain if isinstance(k, tuple) and k and k[0] == "state"]:
            r.free(k)  # reset_net: the previous step's node states
        if step == 1:
            r.pool._drop_idle(0)  # the benchmark empties the pool before the measured steps
            base, pool_base = r.rss(), r.pool.total()
            r.peak, r.phase = base, "start"
        r.events, before = [], r.peak
        if strategy.kind == "bptt":
            replay_bptt(r, described[0][1], T, batch, db, classes)
        else:
            replay_sj_memopt(r, described, T, batch, db, classes, strategy.compress)
        if step == 1:
            loss_events = [v for label, v in r.events if label == "loss"]
            if loss_events:
                saved = loss_events[0] - base
        if step >= 1:
            tag = "" if step == 1 else f" (measured step {step})"
            events += [(label + tag, v) for label, v in r.events]
            if r.peak > before:  # the peak so far was reached in this step
                r.phase += tag
    pred = PeakPrediction(peak_bytes=int(r.peak - base), phase=r.phase, forward_bytes=int(saved), pool_bytes=int(pool_base),
                          events=tuple((label, int(v - base)) for label, v in events))
    return pred, described


def predict_peak(model: nn.Module, in_shape: Sequence[int], T: int, batch: int, dtype: torch.dtype = torch.float32,
                 strategy: Strategy = Strategy(), num_classes: Optional[int] = None,
                 pool_limit: Optional[int] = None, steps: int = 3) -> PeakPrediction:
    """Peak bytes of a training step of ``model`` (above the RSS before the measured steps), from shapes.

    Args:
        model: an ``nn.Sequential`` of multi-step layers on ``[T, B, ...]`` tensors (nested
            ``nn.Sequential`` blocks and edgesnn ``SeqToANN`` wrappers allowed), or a
            :class:`~edgesnn.models.SpikingClassifier` from ``build_model`` (its ``body``; pass its
            ``timesteps`` as ``T``); for ``sj_memopt`` the top-level ``nn.Sequential``
            children, or SpikingJelly's checkpoint wrappers around them, are the checkpointed blocks).
        in_shape: one sample's input shape, e.g. ``(3, 32, 32)``; the input is ``x.expand(T, ...)``
            of a ``[B, *in_shape]`` batch (a zero-stride view that the first layer copies).
        T, batch: time steps and batch size.
        dtype: activation dtype (float32 or float64).
        strategy: how the model is trained (:class:`Strategy`).
        num_classes: logits width (default: the last layer's output size).
        pool_limit: edgesnn's buffer-pool limit in bytes (default: the current one).
        steps: measured steps after the warm-up (the benchmark's ``--steps``, default 3). From the
            second one on, the step starts with the buffers edgesnn's pool kept idle at the end of
            the previous one, above the baseline; with 2 or more the replay is in that steady state.

    The step: forward, cross-entropy on the time-averaged logits, backward, with the parameter
    gradients already allocated (``zero_grad(set_to_none=False)``), after one warm-up step and
    with the buffer pool emptied before the first measured step.
    """
    if T < 1 or batch < 1:
        raise ValueError(f"T and batch must be >= 1, got T={T}, batch={batch}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected an integer >= 1, got {steps!r}")
    return _replay(model, in_shape, T, batch, dtype, strategy, num_classes, pool_limit, steps)[0]


def saved_bytes(model: nn.Module, in_shape: Sequence[int], T: int, batch: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes autograd keeps for backward after ``model(x)`` under plain BPTT (unique storages;
    parameters, buffers and the loss excluded), as ``SavedTensorCounter`` counts them."""
    db = torch.empty(0, dtype=dtype).element_size()
    ops = describe_ops(_leaves(model), in_shape, dtype)
    chain = Chain(ops, "m", T, batch, db)
    total = sum(chain.dense(e) for e in chain.savers)
    for op in ops:
        total += (op.private + op.private_pooled).bytes(T, batch)
    return int(total)
