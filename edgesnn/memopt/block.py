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
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import dispatch
from ..nn import LIF
from .batchnorm import (ChunkStats, batch_stats_mode, bn_normalize, bn_static, channel_view,
                        reduce_dims, update_running)
from .layers import Step
from .packing import SavedInput, is_time_invariant, pack_bits, save_input

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
    incoming_static: Optional["_StaticBackward"] = None  # the previous block's backward, run inside ours

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


def _apply(steps: List[Step], x: torch.Tensor) -> torch.Tensor:
    for s in steps:
        x = s.fn(x)
    return x


def _merge(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def _split(x: torch.Tensor, k: int) -> torch.Tensor:
    return x.reshape(k, x.shape[0] // k, *x.shape[1:])


def _node(node: nn.Module, z: torch.Tensor, v0: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    if isinstance(node, LIF):
        return dispatch.lif_multistep(z, node.params, v0, node.backend)
    return dispatch.revlif_multistep(z, node.params, v0, node.backend)


def _apply_static(steps: List[Step], x0: torch.Tensor, T: int, update: bool) -> torch.Tensor:
    for s in steps:
        x0 = bn_static(s.module, x0, T, update) if s.kind == "bn" and batch_stats_mode(s.module) else s.fn(x0)
    return x0


def _apply_recompute(steps: List[Step], x: torch.Tensor) -> torch.Tensor:
    """The layers as in forward, but BatchNorm from the batch itself without touching running stats."""
    for s in steps:
        if s.kind == "bn" and batch_stats_mode(s.module):
            bn = s.module
            x = F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
        else:
            x = s.fn(x)
    return x


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
            z0 = _apply_static(block.steps, x[0], T, update=True)
        elif chunked_bn:
            pre, mid = block.steps[:bn_i], block.steps[bn_i + 1:]
            stats = ChunkStats()
            for t0, t1 in bounds:
                stats.add(_apply(pre, _merge(x_chunk(t0, t1))))
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
                a = _apply(pre, _merge(x_chunk(t0, t1)))
                z = _split(_apply(mid, bn_normalize(bn, a, ctx.bn_mean, ctx.bn_invstd, inplace=True)[0]), k)
                del a
            elif len(bounds) == 1:
                z = _split(_apply(block.steps, _merge(x_chunk(0, T))), k)  # BatchNorm modules update their running stats
            else:
                z = _split(_apply(block.steps, _merge(x_chunk(t0, t1))), k)
            s, v = _node(block.node, z, v)
            o = _split(_apply(block.post, _merge(s)), k) if block.post else s
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
            ctx.static_backward = _StaticBackward(block, ctx.saved_input, bounds, checkpoints, x.requires_grad)
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
            sb: _StaticBackward = ctx.static_backward
            if sb.done:  # already run inside the next block's backward
                return (None, sb.result) + (None,) * len(block.params)
            if grad_out is None:
                return (None, None) + (None,) * len(block.params)
            grad_out = grad_out.contiguous()
            for t0, t1 in reversed(sb.feed_bounds):
                sb.feed(t0, t1, grad_out[t0:t1])
            return (None, sb.finish()) + (None,) * len(block.params)
        prev: Optional[_StaticBackward] = ctx.incoming_static
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


def _node_chunk_backward(block: Block, z: torch.Tensor, v0: Optional[torch.Tensor], g_out: torch.Tensor,
                         g_v: Optional[torch.Tensor], post_needed: bool = True):
    """Back-propagate one chunk through node and post layers; returns ``(dz, dv0)``."""
    k = z.shape[0]
    zl = z.detach().requires_grad_(True)
    v0l = v0.detach().requires_grad_(True) if v0 is not None else None
    with torch.enable_grad():
        s, v_T = _node(block.node, zl, v0l)
        o = _split(_apply(block.post, _merge(s)), k) if block.post else s
        outs, grads = [o], [g_out]
        if g_v is not None:
            outs.append(v_T)
            grads.append(g_v)
        torch.autograd.backward(outs, grads)
    return zl.grad, (v0l.grad if v0l is not None else None)


class _StaticBackward:
    """Backward of a block whose input repeats over T, fed output-gradient chunks last to first.

    Everything before the node is time-invariant: it is recomputed once, and its gradient is the
    sum over time of the node's input gradient. Each chunk is processed in sub-chunks of
    ``block.inner`` steps, whose start states are recomputed from the chunk's checkpoint (the node
    alone: cheap), so the transient is a few steps while checkpoints stay one per chunk.
    """

    def __init__(self, block: Block, saved: SavedInput, bounds, checkpoints, input_needs_grad: bool) -> None:
        self.block, self.saved, self.bounds, self.checkpoints = block, saved, list(bounds), checkpoints
        self.input_needs_grad = input_needs_grad
        self.z0: Optional[torch.Tensor] = None
        self.dz0: Optional[torch.Tensor] = None
        self.g_v: Optional[torch.Tensor] = None
        self.next_chunk = len(self.bounds) - 1
        self.expect: Optional[int] = None
        self.done = False
        self.result: Optional[torch.Tensor] = None
        self.feed_bounds = list(self.bounds)
        self.cache: Dict[int, Optional[torch.Tensor]] = {}
        self.cache_chunk = -1

    def feed_starts(self, c: int) -> List[int]:
        t0, t1 = self.bounds[c]
        return [f0 for f0, _ in self.feed_bounds if t0 <= f0 < t1]

    def accepts(self, bounds) -> bool:
        """Whether a consumer chunking by ``bounds`` can feed us: every chunk of ours is a union of theirs."""
        edges = {t0 for t0, _ in bounds}
        return all(t0 in edges for t0, _ in self.bounds) and bounds[-1][1] == self.bounds[-1][1]

    def _states_from(self, c: int, starts) -> Dict[int, Optional[torch.Tensor]]:
        """Node states at the given step indices inside our chunk ``c``, recomputed from its checkpoint."""
        t0 = self.bounds[c][0]
        z0 = self.z0
        states = {t0: self.checkpoints[c]}
        v, t = self.checkpoints[c], t0
        with torch.no_grad():
            for p in sorted(starts):
                if p > t:
                    _, v = _node(self.block.node, z0.unsqueeze(0).expand(p - t, *z0.shape), v)
                    t = p
                states[p] = v
        return states

    def feed(self, t0: int, t1: int, g: torch.Tensor) -> None:
        """Back-propagate steps ``t0:t1`` (fed last to first) given their output gradient ``g``."""
        block = self.block
        c = self.next_chunk
        while c >= 0 and self.bounds[c][0] > t0:
            c -= 1
        if c < 0 or t1 > self.bounds[c][1] or (self.expect is not None and t1 != self.expect):
            raise RuntimeError(f"memopt: gradient for steps {t0}:{t1} arrived out of order")
        self.next_chunk, self.expect = c, t0
        if self.z0 is None:
            with torch.no_grad():
                self.z0 = _apply_static(block.steps, self.saved.data, self.saved.shape[0], update=False)
            self.dz0 = torch.zeros_like(self.z0)
        z0 = self.z0
        inner = block.inner if 0 < block.inner < (t1 - t0) else (t1 - t0)
        subs = [(s0, min(s0 + inner, t1)) for s0 in range(t0, t1, inner)]
        if self.cache_chunk != c:
            # fed ranges inside one chunk of ours: recompute the start states of all of them once
            self.cache = self._states_from(c, self.feed_starts(c))
            self.cache_chunk = c
        start = self.cache.pop(t0) if t0 in self.cache else self._states_from(c, [t0])[t0]
        states = [start]
        with torch.no_grad():
            for s0, s1 in subs[:-1]:
                _, v = _node(block.node, z0.unsqueeze(0).expand(s1 - s0, *z0.shape), states[-1])
                states.append(v)
        for j in range(len(subs) - 1, -1, -1):
            s0, s1 = subs[j]
            z = z0.unsqueeze(0).expand(s1 - s0, *z0.shape)
            dz, self.g_v = _node_chunk_backward(block, z, states[j], g[s0 - t0:s1 - t0], self.g_v)
            self.dz0 += dz.sum(0)
            del dz
            states[j] = None

    def finish(self) -> Optional[torch.Tensor]:
        """Back-propagate the time-summed gradient through the layers before the node."""
        block, saved = self.block, self.saved
        x0l = saved.data.detach().requires_grad_(self.input_needs_grad)
        if self.dz0 is not None:
            with torch.enable_grad():
                z = _apply_static(block.steps, x0l, saved.shape[0], update=False)
                if z.requires_grad:
                    torch.autograd.backward(z, self.dz0)
        self.done = True
        self.checkpoints = self.z0 = self.dz0 = self.g_v = None
        if self.input_needs_grad and x0l.grad is not None:
            self.result = x0l.grad.unsqueeze(0).expand(saved.shape)
        return self.result


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
            z = _split(_apply_recompute(block.steps, _merge(xl)), k)
            s, v_T = _node(block.node, z, v0l)
            o = _split(_apply(block.post, _merge(s)), k) if block.post else s
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
            z, xhat = bn_normalize(bn, _apply(pre, _merge(saved.chunk(t0, t1))), mean, invstd, inplace=True)
            z = _split(z, k)
        dz, g_v = _mid_node_backward(block, mid, z, ctx.checkpoints[c], grad_out[t0:t1], g_v)
        del z
        dy = _merge(dz)
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
            a = _apply(pre, _merge(xl))
        with torch.no_grad():
            z, xhat = bn_normalize(bn, a.detach(), mean, invstd)
            z = _split(z, k)
        dz, _ = _mid_node_backward(block, mid, z, ctx.checkpoints[c], grad_out[t0:t1], g_v_end[c])
        del z
        with torch.no_grad():
            da = _merge(dz)
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
        return _node_chunk_backward(block, z, v0, g_out, g_v)
    k = z.shape[0]
    zl = z.detach().requires_grad_(True)
    with torch.enable_grad():
        zz = _split(_apply(mid, _merge(zl)), k)
    dzz, dv = _node_chunk_backward(block, zz.detach(), v0, g_out, g_v)
    torch.autograd.backward(zz, dzz)
    return zl.grad, dv


def run_block(block: Block, x: torch.Tensor) -> torch.Tensor:
    """Run ``block`` on ``x [T, B, ...]``: chunked with recomputation when autograd records, plain otherwise."""
    if not torch.is_grad_enabled() or not (x.requires_grad or any(p.requires_grad for p in block.params)):
        z = _split(_apply(block.steps, _merge(x)), x.shape[0])
        s, _ = _node(block.node, z, None)
        return _split(_apply(block.post, _merge(s)), x.shape[0]) if block.post else s
    return _BlockFunction.apply(block, x, *block.params)
