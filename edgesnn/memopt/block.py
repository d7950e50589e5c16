"""One block (layers -> spiking node -> pooling) trained in time chunks with exact BatchNorm.

A block keeps only its input for backward, compactly (1 bit per spike, or once for an input
repeated over T: :mod:`edgesnn.memopt.packing`), plus the node's state at every chunk boundary.
Its forward and backward run ``K`` time steps at a time, so the block's transient memory is one
chunk of ``K`` steps, not all ``T``.

BatchNorm in training mode normalises over all ``T x B`` samples, so chunks cannot each use their
own statistics. The block keeps BatchNorm exact in passes:

* forward: the statistics passes (bit-exact where supported: a pass summing every chunk for the
  mean, then one summing the squared deviations from it; else one pass of per-chunk mean and
  variance combined in float64; running statistics updated once), then the output pass with
  those statistics (see :func:`_batch_statistics`);
* backward, pass 1 (last chunk to first): recompute the chunk, back-propagate through the node
  (carrying the state gradient across chunks) and accumulate BatchNorm's sums of ``dy`` and
  ``dy * xhat``;
* backward, pass 2 (last chunk to first again): recompute the chunk and the node's backward
  (carrying the state gradient as pass 1 did, so nothing but BatchNorm's two sums is kept
  between the passes), apply BatchNorm's exact input gradient
  ``w / sigma * (dy - mean(dy) - xhat * mean(dy * xhat))`` and back-propagate the layers before
  BatchNorm (parameter gradients accumulate into ``.grad``).

Two cases need a single pass: one chunk (``K >= T``: plain recomputation under autograd), and an
input repeated over time (direct encoding): then everything before the node is the same at every
step, is computed once on ``[B, ...]`` and its gradient is the sum over time of the node's input
gradient (BatchNorm over ``T`` copies of a batch has that batch's statistics; the running variance
still uses the unbiased count over ``T x B``).

A block may hold its layer output (before BatchNorm) over all T from its forward to its backward
(``Block.hold``): both backward passes then read it instead of recomputing the layer, whose
backward runs without autograd (:mod:`edgesnn.memopt.layer_grad`). The passes themselves live in
:mod:`edgesnn.memopt.block_backward`.

Parameter gradients are summed over the chunks and passes into stand-ins of the parameters and
returned through autograd (:mod:`edgesnn.memopt.paramgrads`): the parameters' hooks see the whole
gradient once, and ``torch.autograd.grad`` works.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import nn

from ..functional.checks import autocast_on
from ..functional.second_order import func_transform_depth, under_forward_ad
from ..kernels import buffers
from .batchnorm import ChunkStats, ExactStats, batch_stats_mode, bn_output, exact_supported, update_running
from .block_backward import backward_chunked_bn, backward_plain
from .forward_state import as_in_forward, capture
from .gradchunks import DenseGrad, GradChunks
from .handoff import hand_over, run_lock, take_handoff
from .layer_grad import layer_backward_supported
from .layers import Step, child_steps
from .packing import PackedOutput, SavedInput, is_time_invariant, save_input
from .paramgrads import collected, stand_ins, trainable_params
from .static import StaticBackward
from .steps import apply_over_time, apply_static, apply_steps, fused_kind, merge_time, run_node_post, split_time

__all__ = ["Block", "Route", "run_block"]


@dataclass
class Block:
    """Children ``[start, stop)`` of a multi-step ``nn.Sequential`` run as one chunked block.

    Attributes:
        steps: per-step layers before the node (conv, BatchNorm, pooling...).
        node: the spiking node (LIF or RevLIF), multi-step.
        post: parameter-free per-step layers after the node (pooling, flatten).
        in_codec: what the block's input holds (``bits``, ``levels:n`` or ``dense``).
        chunk: ``K``, time steps per chunk (``>= T`` means one chunk).
    """

    start: int
    stop: int
    steps: List[Step]
    node: nn.Module
    post: List[Step]
    in_codec: str
    chunk: int = 8
    params: List[nn.Parameter] = field(default_factory=list)
    out_codec: str = "dense"
    next_block: Optional["Block"] = None    # set when the next block reads this one's packed output
    inner: int = 0                          # sub-chunk of a repeated-input block's backward (0: = chunk)
    keep: int = 0                           # leading chunks whose layer output the forward keeps between its passes
    hold: bool = False                      # keep the layer output of every chunk until backward (no recomputation)
    owners: List[nn.Module] = field(default_factory=list)  # the children [start, stop) themselves

    def unchanged(self, children: List[nn.Module]) -> bool:
        """Whether ``children`` (the container's, now) still hold this block as it was planned: the
        same modules at ``[start, stop)``, each still supported (no hook added since, the node
        still stateless, multi-step and hook-free)."""
        if list(children[self.start:self.stop]) != list(self.owners) or not self.owners:
            return False
        now = []
        for c in self.owners:
            steps = child_steps(c)
            if steps is None:
                return False
            now.extend(steps)
        planned = self.steps + [Step("node", self.node, self.node)] + self.post
        return len(now) == len(planned) and all(a.kind == b.kind and a.module is b.module for a, b in zip(now, planned))

    def bn_index(self) -> Optional[int]:
        """Index in ``steps`` of the block's one BatchNorm step, ``None`` if it has none or several."""
        idx = [i for i, s in enumerate(self.steps) if s.kind == "bn"]
        return idx[0] if len(idx) == 1 else None

    def can_chunk(self) -> bool:
        """Chunking needs at most one BatchNorm and no parameters between it and the node."""
        bns = [i for i, s in enumerate(self.steps) if s.kind == "bn"]
        if len(bns) > 1:
            return False
        return not bns or all(s.kind == "free" for s in self.steps[bns[0] + 1:])

    def can_hold(self) -> bool:
        """Holding the layer output needs BatchNorm after exactly one convolution or linear layer
        whose backward :func:`edgesnn.memopt.layer_grad.layer_backward` computes without autograd."""
        i = self.bn_index()
        return i == 1 and self.can_chunk() and layer_backward_supported(self.steps[0])

    def traced_kind(self) -> Optional[str]:
        """The fused kernel (:func:`~edgesnn.memopt.steps.fused_kind`) that runs node and post on the
        traced shapes (asked with a zero-memory probe), or ``None``: the node runs under autograd
        (also untraced, or traced off the CPU: the fused kernels are CPU ones)."""
        trace = getattr(self, "trace", None)
        if not trace or "node_in" not in trace or trace.get("device", "cpu") != "cpu":
            return None
        z = torch.zeros((), dtype=trace["in"][2]).expand(trace["node_in"])
        return fused_kind(self.node, self.post, z)

    def sums_repeated_input_gradient(self) -> bool:
        """Whether, for an input repeated over T, the node's backward runs as one fused kernel that
        sums the input gradient over time as it goes (no ``[k, ...]`` input gradient): a LIF on the
        Numba backend, alone or followed by a 2x2 max-pool or by linear layers (average pooling,
        flatten; their input gradient is made first), on the traced float32 CPU shapes."""
        return self.traced_kind() is not None


@dataclass(frozen=True)
class Route:
    """How a block is linked to its neighbours in this forward: ``from_prev``: the block before it
    (the one whose ``next_block`` it is) runs as a block too, so the input holds what the graph
    says (``in_codec``) and may arrive packed; ``to_next``: the next block runs as a block, so the
    output may be handed over packed. A neighbour run as plain modules (changed since planning,
    see :meth:`Block.unchanged`) breaks the link."""

    from_prev: bool = True
    to_next: bool = True


def _per_step_grad(x: torch.Tensor) -> bool:
    """The caller reads ``x``'s own gradient (a leaf, ``retain_grad()`` or a tensor hook): an input
    repeated over T then needs its gradient per step, not summed over time."""
    return x.requires_grad and (x.is_leaf or x.retains_grad or bool(x._backward_hooks))


# ----------------------------------------------------------------------------------------------
# the autograd function


_SECOND_BACKWARD = ("optimize_memory: backward ran a second time through an optimized block (retain_graph=True, or "
                    "two losses backed through one forward); a block frees what it saved in its first backward: "
                    "sum the losses and call backward once, or call edgesnn.memopt.uninstall(model) to use plain autograd")


_SECOND_ORDER = ("optimize_memory: second-order gradients (create_graph=True, differentiating a gradient) do not go "
                 "through an optimized block, whose backward recomputes without a graph; call "
                 "edgesnn.memopt.uninstall(model) to use plain autograd")


def _owner(block: Block) -> str:
    """The block as errors name it."""
    return f"the {type(block.node).__name__} block (children {block.start}-{block.stop - 1})"


class _BlockFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, block: Block, route: Route, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        # The kernels' buffer pool keeps idle output buffers for reuse (no fresh page faults): a
        # block's chunks and passes reuse each other's, but the previous block's are the wrong
        # sizes and would only add to the peak, so each block starts with the pool emptied.
        buffers.release()
        T = x.shape[0]
        K = max(1, min(block.chunk, T)) if block.can_chunk() else T
        bounds = [(t0, min(t0 + K, T)) for t0 in range(0, T, K)]
        incoming, grad_sink, incoming_static = take_handoff(block)
        if not route.from_prev:  # (left over from a forward that did not finish)
            incoming = grad_sink = incoming_static = None
        ctx.grad_sink = grad_sink if incoming is not None else None
        ctx.out_grad = None
        ctx.params = params
        static = incoming is None and is_time_invariant(x) and not _per_step_grad(x)
        bn_i = block.bn_index()
        bn = block.steps[bn_i].module if bn_i is not None else None
        hold = block.hold and not static and bn is not None and batch_stats_mode(bn) and block.can_hold()
        chunked_bn = bn is not None and batch_stats_mode(bn) and (len(bounds) > 1 or hold) and not static
        ctx.held = {} if hold else None
        ctx.block, ctx.bounds, ctx.static, ctx.chunked_bn = block, bounds, static, chunked_bn
        ctx.dtype = x.dtype
        ctx.saved_input = incoming if incoming is not None else save_input(x, block.in_codec if route.from_prev else "dense")
        ctx.input_needs_grad = x.requires_grad
        src = ctx.saved_input if incoming is not None else None

        def x_chunk(t0: int, t1: int) -> torch.Tensor:
            return src.chunk(t0, t1) if src is not None else x[t0:t1]

        out: Optional[torch.Tensor] = None
        checkpoints: List[Optional[torch.Tensor]] = []
        v: Optional[torch.Tensor] = None
        if static:
            z0 = apply_static(block.steps, x[0], T, update=True)
        elif chunked_bn:
            pre, mid = block.steps[:bn_i], block.steps[bn_i + 1:]
            kept_a = _batch_statistics(ctx, bn, pre, bounds, x_chunk, len(bounds) if hold else block.keep)
        handoff = PackedOutput(block.out_codec, T) if block.next_block is not None and route.to_next else None
        steps = bounds
        if static:
            # checkpoints once per chunk, but the node runs a few steps at a time (small transient)
            step = block.inner if block.inner > 0 else K
            steps = [(u0, min(u0 + step, t1)) for t0, t1 in bounds for u0 in range(t0, t1, step)]
        starts = {t0 for t0, _ in bounds}
        for t0, t1 in steps:
            k = t1 - t0
            if t0 in starts:
                checkpoints.append(v)
            if static:
                z = z0.unsqueeze(0).expand(k, *z0.shape)
            elif chunked_bn:
                a = kept_a.pop(t0) if t0 in kept_a else apply_steps(pre, merge_time(x_chunk(t0, t1)))
                z = split_time(apply_steps(mid, bn_output(bn, a, ctx.bn_mean, ctx.bn_invstd)), k)
                if ctx.held is not None:
                    ctx.held[t0] = a  # the backward reads it instead of recomputing the layer
                del a
            elif len(bounds) == 1:
                z = split_time(apply_steps(block.steps, merge_time(x_chunk(0, T))), k)  # BatchNorm modules update their running stats
            else:
                z = split_time(apply_steps(block.steps, merge_time(x_chunk(t0, t1))), k)
            o, v = run_node_post(block.node, block.post, z, v)
            if handoff is not None:
                handoff.write(t0, t1, o)
                continue
            if out is None:
                out = torch.empty((T,) + tuple(o.shape[1:]), dtype=o.dtype, device=o.device)
            out[t0:t1] = o
        ctx.checkpoints = checkpoints
        ctx.static_backward = None
        ctx.incoming_static = incoming_static
        # the modes and weights the backward must recompute with (PyTorch's saved tensors keep them)
        ctx.forward_state = capture([(str(block.start + i), m) for i, m in enumerate(block.owners)],
                                    "an optimize_memory block recomputes its layers in backward", all_buffers=False)
        if static:
            ctx.static_backward = StaticBackward(block, ctx.saved_input, bounds, checkpoints, x.requires_grad, params,
                                                 ctx.forward_state, _owner(block))
            ctx.set_materialize_grads(False)
        if handoff is not None:
            # The next block reads the packed output; autograd only needs a tensor of the right
            # shape to route the output gradient, so a zero-stride placeholder stands in.
            if ctx.static_backward is None:
                # the next block hands our output gradient back chunk by chunk (gradchunks.py)
                ctx.out_grad = GradChunks(handoff.saved.shape)
            # (else our backward consumes output-gradient chunks last to first, once: the next block
            # runs it while it produces them, so that gradient never exists over all T)
            hand_over(block.next_block, handoff.saved, ctx.out_grad, ctx.static_backward)
            return torch.zeros((), dtype=x.dtype, device=x.device).expand(handoff.saved.shape)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        if torch.is_grad_enabled():  # create_graph=True: the recomputed gradients would have no graph
            raise RuntimeError(_SECOND_ORDER)
        with run_lock():  # the block's modules hold stand-ins for their parameters meanwhile
            return _BlockFunction._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out: torch.Tensor):
        if getattr(ctx, "backward_ran", False):  # its saved input and checkpoints are freed (or spent)
            raise RuntimeError(_SECOND_BACKWARD)
        ctx.backward_ran = True
        buffers.release()  # as in forward: the pool holds one block's buffers at a time
        block: Block = ctx.block
        saved: SavedInput = ctx.saved_input
        saved.check_unmodified()
        if ctx.static:
            sb: StaticBackward = ctx.static_backward
            if not sb.done and grad_out is not None:  # (else: already run inside the next block's backward)
                grad_out = grad_out.contiguous()
                for t0, t1 in reversed(sb.feed_bounds):
                    sb.feed(t0, t1, grad_out[t0:t1])
                sb.finish()
            ctx.static_backward = ctx.saved_input = None  # (sb recomputes in the forward's state itself)
            return (None, None, sb.result) + sb.param_grads
        with as_in_forward(ctx.forward_state, _owner(block)), stand_ins(block.owners, ctx.params) as subs:
            grad_in = _backward_chunks(ctx, block, saved, grad_out)
            param_grads = collected(subs)
        return (None, None, grad_in) + param_grads


def _backward_chunks(ctx, block: Block, saved: SavedInput, grad_out: torch.Tensor) -> Optional[torch.Tensor]:
    """A block's backward chunk by chunk (not a repeated input); returns the input gradient (a
    zero-stride placeholder when the previous block reads it from its ``GradChunks``), ``None`` if
    not wanted. Parameter gradients go to the stand-ins' ``.grad``."""
    bounds = ctx.bounds
    grad_in = None
    prev: Optional[StaticBackward] = ctx.incoming_static
    if prev is not None and not prev.accepts(bounds):
        prev = None
    if prev is not None:
        prev.feed_bounds = list(bounds)
    out_sink: Optional[GradChunks] = ctx.grad_sink if prev is None else None
    if ctx.input_needs_grad and prev is None:
        if out_sink is not None:
            # the previous block reads our input gradient from out_sink; autograd gets a placeholder
            grad_in = torch.zeros((), dtype=saved.dtype, device=grad_out.device).expand(saved.shape)
            out_sink.placeholder = grad_in
        else:
            grad_in = torch.empty(saved.shape, dtype=saved.dtype, device=grad_out.device)

    def sink(t0: int, t1: int, g: torch.Tensor) -> None:
        if prev is not None:
            prev.feed(t0, t1, g)
        elif out_sink is not None:
            out_sink.put(t0, t1, g)
        elif grad_in is not None:
            grad_in[t0:t1] = g

    src = _grad_source(ctx, grad_out)
    del grad_out
    wants_input_grad = grad_in is not None or prev is not None
    if ctx.chunked_bn:
        backward_chunked_bn(ctx, block, saved, src, sink, wants_input_grad)
    else:
        backward_plain(ctx, block, saved, src, sink, wants_input_grad)
    if prev is not None:
        prev.finish()
    ctx.checkpoints = None
    ctx.saved_input = None
    ctx.held = None
    ctx.incoming_static = None
    ctx.out_grad = ctx.grad_sink = None
    return grad_in


def _batch_statistics(ctx, bn, pre: List[Step], bounds, x_chunk, keep: int) -> Dict[int, torch.Tensor]:
    """BatchNorm's batch statistics over all chunks (set on ``ctx``; running statistics updated once).

    Where :func:`exact_supported`, PyTorch's own statistics bit for bit (:class:`ExactStats`: a
    sum pass, then a pass of squared deviations from the float mean, both in chunk order); else
    one pass combined in float64 (:class:`ChunkStats`). The layer outputs of the first ``keep``
    chunks are kept, not recomputed, for the later passes; returns them (``t0 -> [k * B, ...]``)
    for the output pass.
    """
    kept: Dict[int, torch.Tensor] = {}

    def layer_out(c: int, t0: int, t1: int) -> torch.Tensor:
        if t0 in kept:
            return kept[t0]
        a = apply_steps(pre, merge_time(x_chunk(t0, t1)))
        if c < keep:
            kept[t0] = a
        return a

    a0 = layer_out(0, *bounds[0])
    if exact_supported(a0):
        ex = ExactStats()
        ex.add_sum(a0)
        del a0
        for c, (t0, t1) in enumerate(bounds[1:], 1):
            ex.add_sum(layer_out(c, t0, t1))
        ctx.bn_mean = ex.mean()
        for c, (t0, t1) in enumerate(bounds):
            ex.add_var(layer_out(c, t0, t1))
        ctx.bn_invstd = ex.invstd(bn.eps)
        ex.update_running(bn)
        ctx.bn_count = ex.n
        return kept
    stats = ChunkStats()
    stats.add(a0)
    del a0
    for c, (t0, t1) in enumerate(bounds[1:], 1):
        stats.add(layer_out(c, t0, t1))
    mean64, var64 = stats.mean_var()
    update_running(bn, mean64, var64, stats.n)
    ctx.bn_mean = mean64.to(ctx.dtype)
    ctx.bn_invstd = torch.rsqrt(var64 + bn.eps).to(ctx.dtype)
    ctx.bn_count = stats.n
    return kept


def _grad_source(ctx, grad_out: torch.Tensor):
    """Where this block's output gradient is read from: the chunks the next block handed over
    (plus whatever else reached the output through autograd), or autograd's dense gradient."""
    chunks: Optional[GradChunks] = ctx.out_grad
    if chunks is None or chunks.empty:
        return DenseGrad(grad_out.contiguous())
    if grad_out is not None and grad_out is not chunks.placeholder:
        chunks.add_dense(grad_out)
    return chunks


def run_block(block: Block, x: torch.Tensor, route: Route = Route()) -> torch.Tensor:
    """Run ``block`` on ``x [T, B, ...]``: chunked with recomputation when autograd records (under
    :func:`~edgesnn.memopt.handoff.run_lock`), plain otherwise. Under ``torch.autocast`` the chunked path is refused (its
    BatchNorm and kernels compute in the input's dtype, not autocast's)."""
    if torch.is_grad_enabled():
        with run_lock():  # (the parameters read here are not another thread's stand-ins)
            params = trainable_params(block.owners)
            if x.requires_grad or params:
                if autocast_on(x):
                    raise RuntimeError("optimize_memory: autocast is not supported; train the optimized model without "
                                       "torch.autocast, or call edgesnn.memopt.uninstall(model) first")
                if under_forward_ad(x):  # a dual tensor, or inside torch.func.jvp / jacfwd
                    raise RuntimeError("optimize_memory: forward-mode AD (torch.func.jvp, jacfwd, forward_ad dual tensors) "
                                       "is not supported; train the optimized model with .backward()")
                if func_transform_depth():  # inside torch.func.grad / vmap / ...
                    raise RuntimeError("optimize_memory: torch.func transforms (grad, vjp, vmap, ...) are not supported; "
                                       "train the optimized model with .backward(), or call edgesnn.memopt.uninstall(model) "
                                       "first")
                return _BlockFunction.apply(block, route, x, *params)
    return run_node_post(block.node, block.post, apply_over_time(block.steps, x), None)[0]
