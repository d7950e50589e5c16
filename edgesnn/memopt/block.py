"""One block (layers -> spiking node -> pooling) trained in time chunks with exact BatchNorm.

A block keeps only its input for backward, compactly (1 bit per spike, or once for an input
repeated over T: :mod:`edgesnn.memopt.packing`), plus the node's state at every chunk boundary.
Its forward and backward run ``K`` time steps at a time, so the block's transient memory is one
chunk of ``K`` steps, not all ``T``.

BatchNorm in training mode normalises over all ``T x B`` samples, so chunks cannot each use their
own statistics. The block keeps BatchNorm exact in passes:

* forward: a statistics pass (per-chunk mean and variance, combined in float64; running
  statistics updated once), then the output pass with those statistics;
* backward, pass 1 (last chunk to first): recompute the chunk, back-propagate through the node
  (carrying the state gradient across chunks) and accumulate BatchNorm's sums of ``dy`` and
  ``dy * xhat``; the state gradient at each chunk boundary is kept for pass 2;
* backward, pass 2: recompute again, apply BatchNorm's exact input gradient
  ``w / sigma * (dy - mean(dy) - xhat * mean(dy * xhat))`` and back-propagate the layers before
  BatchNorm (parameter gradients accumulate into ``.grad``).

Two cases need a single pass: one chunk (``K >= T``: plain recomputation under autograd), and an
input repeated over time (direct encoding): then everything before the node is the same at every
step, is computed once on ``[B, ...]`` and its gradient is the sum over time of the node's input
gradient (BatchNorm over ``T`` copies of a batch has that batch's statistics; the running variance
still uses the unbiased count over ``T x B``).

Parameter gradients are accumulated straight into ``.grad`` during the block's backward (as
``torch.utils.checkpoint``'s reentrant variant does), not returned through autograd.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch
from torch import nn

from .batchnorm import ChunkStats, batch_stats_mode, bn_normalize, channel_view, reduce_dims, update_running
from .layers import Step
from .packing import SavedInput, is_time_invariant, pack_bits, save_input
from .static import StaticBackward
from .steps import apply_recompute, apply_static, apply_steps, merge_time, node_chunk_backward, run_node, split_time

__all__ = ["Block", "run_block"]


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
    incoming: Optional[SavedInput] = None   # packed input handed over by the previous block's forward
    inner: int = 0                          # sub-chunk of a repeated-input block's backward (0: = chunk)
    incoming_static: Optional["StaticBackward"] = None  # the previous block's backward, run inside ours

    def bn_index(self) -> Optional[int]:
        idx = [i for i, s in enumerate(self.steps) if s.kind == "bn"]
        return idx[0] if len(idx) == 1 else None

    def can_chunk(self) -> bool:
        """Chunking needs at most one BatchNorm and no parameters between it and the node."""
        bns = [i for i, s in enumerate(self.steps) if s.kind == "bn"]
        if len(bns) > 1:
            return False
        return not bns or all(s.kind == "free" for s in self.steps[bns[0] + 1:])


# ----------------------------------------------------------------------------------------------
# helpers


def _accumulate_grad(p: torch.Tensor, g: torch.Tensor) -> None:
    if p.grad is None:
        p.grad = g.to(p.dtype).clone()
    else:
        p.grad.add_(g.to(p.dtype))


# ----------------------------------------------------------------------------------------------
# the autograd function


class _BlockFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, block: Block, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        K = max(1, min(block.chunk, T)) if block.can_chunk() else T
        bounds = [(t0, min(t0 + K, T)) for t0 in range(0, T, K)]
        incoming, block.incoming = block.incoming, None
        static = incoming is None and is_time_invariant(x)
        bn_i = block.bn_index()
        bn = block.steps[bn_i].module if bn_i is not None else None
        chunked_bn = bn is not None and batch_stats_mode(bn) and len(bounds) > 1 and not static
        ctx.block, ctx.bounds, ctx.static, ctx.chunked_bn = block, bounds, static, chunked_bn
        ctx.saved_input = incoming if incoming is not None else save_input(x, block.in_codec)
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
            stats = ChunkStats()
            for t0, t1 in bounds:
                stats.add(apply_steps(pre, merge_time(x_chunk(t0, t1))))
            mean64, var64 = stats.mean_var()
            update_running(bn, mean64, var64, stats.n)
            ctx.bn_mean = mean64.to(x.dtype)
            ctx.bn_invstd = torch.rsqrt(var64 + bn.eps).to(x.dtype)
            ctx.bn_count = stats.n
        handoff = _Handoff(block, T) if block.next_block is not None else None
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
                a = apply_steps(pre, merge_time(x_chunk(t0, t1)))
                z = split_time(apply_steps(mid, bn_normalize(bn, a, ctx.bn_mean, ctx.bn_invstd, inplace=True)[0]), k)
                del a
            elif len(bounds) == 1:
                z = split_time(apply_steps(block.steps, merge_time(x_chunk(0, T))), k)  # BatchNorm modules update their running stats
            else:
                z = split_time(apply_steps(block.steps, merge_time(x_chunk(t0, t1))), k)
            s, v = run_node(block.node, z, v)
            o = split_time(apply_steps(block.post, merge_time(s)), k) if block.post else s
            if handoff is not None:
                handoff.write(t0, t1, o)
                continue
            if out is None:
                out = torch.empty((T,) + tuple(o.shape[1:]), dtype=o.dtype, device=o.device)
            out[t0:t1] = o
        ctx.checkpoints = checkpoints
        ctx.static_backward = None
        ctx.incoming_static, block.incoming_static = block.incoming_static, None
        if static:
            ctx.static_backward = StaticBackward(block, ctx.saved_input, bounds, checkpoints, x.requires_grad)
            ctx.set_materialize_grads(False)
        if handoff is not None:
            # The next block reads the packed output; autograd only needs a tensor of the right
            # shape to route the output gradient, so a zero-stride placeholder stands in.
            block.next_block.incoming = handoff.saved
            if ctx.static_backward is not None:
                # Our backward consumes output-gradient chunks last to first, once: the next block
                # runs it while it produces them, so that gradient never exists over all T.
                block.next_block.incoming_static = ctx.static_backward
            return torch.zeros((), dtype=x.dtype, device=x.device).expand(handoff.saved.shape)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        block: Block = ctx.block
        saved: SavedInput = ctx.saved_input
        bounds = ctx.bounds
        grad_in = None
        if ctx.static:
            sb: StaticBackward = ctx.static_backward
            if sb.done:  # already run inside the next block's backward
                return (None, sb.result) + (None,) * len(block.params)
            if grad_out is None:
                return (None, None) + (None,) * len(block.params)
            grad_out = grad_out.contiguous()
            for t0, t1 in reversed(sb.feed_bounds):
                sb.feed(t0, t1, grad_out[t0:t1])
            return (None, sb.finish()) + (None,) * len(block.params)
        prev: Optional[StaticBackward] = ctx.incoming_static
        if prev is not None and not prev.accepts(bounds):
            prev = None
        if prev is not None:
            prev.feed_bounds = list(bounds)
        if ctx.input_needs_grad and prev is None:
            grad_in = torch.empty(saved.shape, dtype=saved.dtype, device=grad_out.device)

        def sink(t0: int, t1: int, g: torch.Tensor) -> None:
            if prev is not None:
                prev.feed(t0, t1, g)
            elif grad_in is not None:
                grad_in[t0:t1] = g

        grad_out = grad_out.contiguous()
        wants_input_grad = grad_in is not None or prev is not None
        if ctx.chunked_bn:
            _backward_chunked_bn(ctx, block, saved, grad_out, sink, wants_input_grad)
        else:
            _backward_plain(ctx, block, saved, grad_out, sink, wants_input_grad)
        if prev is not None:
            prev.finish()
        ctx.checkpoints = None
        ctx.saved_input = None
        ctx.incoming_static = None
        return (None, grad_in) + (None,) * len(block.params)


class _Handoff:
    """The block's output written straight into the next block's compact input (no dense ``[T, ...]``)."""

    def __init__(self, block: "Block", T: int) -> None:
        self.block, self.T = block, T
        self.saved: Optional[SavedInput] = None

    def write(self, t0: int, t1: int, o: torch.Tensor) -> None:
        codec = self.block.out_codec
        if self.saved is None:
            shape = (self.T,) + tuple(o.shape[1:])
            per_step = 1
            for d in shape[1:]:
                per_step *= d
            if codec == "bits":
                data = torch.empty(self.T, (per_step + 7) // 8, dtype=torch.uint8, device=o.device)
            else:
                data = torch.empty(shape, dtype=torch.uint8, device=o.device)
            self.saved = SavedInput(codec, data, shape, o.dtype)
        if codec == "bits":
            self.saved.data[t0:t1] = pack_bits(o)
        else:
            n = int(codec.split(":")[1])
            self.saved.data[t0:t1] = (o * n).round_().to(torch.uint8)


def _backward_plain(ctx, block: Block, saved: SavedInput, grad_out: torch.Tensor, sink, wants_input_grad: bool) -> None:
    """No batch statistics across chunks: one reverse pass, each chunk under autograd."""
    g_v = None
    for c in range(len(ctx.bounds) - 1, -1, -1):
        t0, t1 = ctx.bounds[c]
        k = t1 - t0
        xl = saved.chunk(t0, t1).detach().requires_grad_(wants_input_grad)
        v0 = ctx.checkpoints[c]
        v0l = v0.detach().requires_grad_(True) if v0 is not None else None
        with torch.enable_grad():
            z = split_time(apply_recompute(block.steps, merge_time(xl)), k)
            s, v_T = run_node(block.node, z, v0l)
            o = split_time(apply_steps(block.post, merge_time(s)), k) if block.post else s
            outs, grads = [o], [grad_out[t0:t1]]
            if g_v is not None:
                outs.append(v_T)
                grads.append(g_v)
            torch.autograd.backward(outs, grads)
        g_v = v0l.grad if v0l is not None else None
        if wants_input_grad:
            sink(t0, t1, xl.grad)


def _backward_chunked_bn(ctx, block: Block, saved: SavedInput, grad_out: torch.Tensor, sink, wants_input_grad: bool) -> None:
    bn_i = block.bn_index()
    bn = block.steps[bn_i].module
    pre, mid = block.steps[:bn_i], block.steps[bn_i + 1:]
    mean, invstd, N = ctx.bn_mean, ctx.bn_invstd, ctx.bn_count
    n_chunks = len(ctx.bounds)
    g_v_end: List[Optional[torch.Tensor]] = [None] * n_chunks  # gradient into each chunk's final state
    sum_dy = None
    sum_dy_xhat = None

    # pass 1: node backward, BatchNorm sums
    g_v = None
    for c in range(n_chunks - 1, -1, -1):
        t0, t1 = ctx.bounds[c]
        k = t1 - t0
        g_v_end[c] = g_v
        with torch.no_grad():
            z, xhat = bn_normalize(bn, apply_steps(pre, merge_time(saved.chunk(t0, t1))), mean, invstd, inplace=True)
            z = split_time(z, k)
        dz, g_v = _mid_node_backward(block, mid, z, ctx.checkpoints[c], grad_out[t0:t1], g_v)
        del z
        dy = merge_time(dz)
        dims = reduce_dims(dy)
        s1 = dy.sum(dims, dtype=torch.float64)
        s2 = xhat.mul_(dy).sum(dims, dtype=torch.float64)
        sum_dy = s1 if sum_dy is None else sum_dy + s1
        sum_dy_xhat = s2 if sum_dy_xhat is None else sum_dy_xhat + s2
        del dz, dy, xhat
    if bn.weight is not None and bn.weight.requires_grad:
        _accumulate_grad(bn.weight, sum_dy_xhat)
    if bn.bias is not None and bn.bias.requires_grad:
        _accumulate_grad(bn.bias, sum_dy)
    w = bn.weight.detach() if bn.weight is not None else torch.ones_like(invstd)
    scale = (w * invstd)
    c1 = (sum_dy / N).to(invstd.dtype)
    c2 = (sum_dy_xhat / N).to(invstd.dtype)

    # pass 2: exact BatchNorm input gradient, layers before BatchNorm
    for c in range(n_chunks - 1, -1, -1):
        t0, t1 = ctx.bounds[c]
        k = t1 - t0
        xl = saved.chunk(t0, t1).detach().requires_grad_(wants_input_grad)
        with torch.enable_grad():
            a = apply_steps(pre, merge_time(xl))
        with torch.no_grad():
            z, xhat = bn_normalize(bn, a.detach(), mean, invstd)
            z = split_time(z, k)
        dz, _ = _mid_node_backward(block, mid, z, ctx.checkpoints[c], grad_out[t0:t1], g_v_end[c])
        del z
        with torch.no_grad():
            da = merge_time(dz)
            da.sub_(channel_view(c1, da)).sub_(xhat.mul_(channel_view(c2, da))).mul_(channel_view(scale, da))
        del dz, xhat
        if a.requires_grad:
            torch.autograd.backward(a, da)
        del a, da
        if wants_input_grad:
            sink(t0, t1, xl.grad)


def _mid_node_backward(block: Block, mid: List[Step], z: torch.Tensor, v0, g_out, g_v):
    """Gradient w.r.t. the BatchNorm output ``z [k, B, ...]`` through mid layers, node and post."""
    if not mid:
        return node_chunk_backward(block, z, v0, g_out, g_v)
    k = z.shape[0]
    zl = z.detach().requires_grad_(True)
    with torch.enable_grad():
        zz = split_time(apply_steps(mid, merge_time(zl)), k)
    dzz, dv = node_chunk_backward(block, zz.detach(), v0, g_out, g_v)
    torch.autograd.backward(zz, dzz)
    return zl.grad, dv


def run_block(block: Block, x: torch.Tensor) -> torch.Tensor:
    """Run ``block`` on ``x [T, B, ...]``: chunked with recomputation when autograd records, plain otherwise."""
    if not torch.is_grad_enabled() or not (x.requires_grad or any(p.requires_grad for p in block.params)):
        z = split_time(apply_steps(block.steps, merge_time(x)), x.shape[0])
        s, _ = run_node(block.node, z, None)
        return split_time(apply_steps(block.post, merge_time(s)), x.shape[0]) if block.post else s
    return _BlockFunction.apply(block, x, *block.params)
