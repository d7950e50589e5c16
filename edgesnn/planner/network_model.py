"""Peak-memory and time model of chunked whole-network training (:mod:`edgesnn.memopt`), from shapes.

The objective is the **peak** of one training step, transients included, not the sum of saved
bytes. The step is replayed phase by phase: the forward of each block (its input and output
tensors over all T, one chunk of temporaries, everything kept so far) and the backward of each
block in reverse (the incoming and outgoing gradients over all T, one chunk of temporaries). All
sizes come from shapes. The choices themselves (chunk, kept chunks, held outputs) are made in
:mod:`edgesnn.planner.network`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import PlanningError
from .block_shapes import BlockShape, block_shape

__all__ = ["BlockShape", "BlockChoice", "NetworkPlan", "PlanningError", "predict_peak", "predict_time", "block_shape",
           "n_chunks", "saved_bytes", "fused_static", "chunked_bn"]

# Temporaries of one chunk step, in multiples of the per-step tensors (float32): input chunk ``x``,
# node input ``a`` (layer output), block output ``o``. Fitted (least squares over every phase) on
# VGG-11 at T = 8, 32 and 64 with ten chunk configurations, measured as tools/bench_network_memory.py
# does with the kernels' buffer pool emptied before the step, so the node's pooled output buffers
# count; one-chunk peaks then agree within 8% (one configuration 15% above). Forward: input chunk,
# layer output, normalised output, node output, tail output. Backward: the same recomputed plus
# their gradients and the node's pooled buffers. BWD_A was raised from 3.2 to 3.85 after the
# fused BatchNorm backward and time-summing repeated-input kernels: chunked blocks' backward phases
# at T = 32 and 64 measured 0.3-0.8 node-input tensors per chunk step above the older fit.
FWD_X, FWD_A, FWD_O = 0.6, 1.9, 2.7
BWD_X, BWD_A, BWD_O = 0.0, 3.85, 3.25
STATIC_BWD_A = 2.2
# Backward of a block that holds its layer output (Block.hold): node-input tensors per chunk step
# besides the held output itself.
HELD_BWD_A = 1.4
# A held block also has, whatever its chunk, about this many more node-input tensors of one step in
# its forward and backward phases (fitted with tools/memopt_phases.py on the built-in conv net and
# VGG-11 and the max-pool VGG-11, T = 1-16: without them held one-step chunks measured 2-3 of them
# above the prediction, -25% at T = 1).
HELD_FWD_STEPS = 2.0
HELD_BWD_STEPS = 2.5
# A pooling after the node that the fused LIF + 2x2 max-pool kernel does not run: the node's
# full-size spikes exist beside the pooled ones in forward; in backward a LIF before linear layers
# (average pooling, flatten: memopt.linear_post) gets their input gradient without the spikes, so
# little is added. Node-input tensors per chunk step, fitted as above (with the terms above and
# below, the 14 fitted configurations' step peaks are predicted within -14..+10%; docs/design.md §4).
UNFUSED_POOL_FWD_A = 0.1
UNFUSED_POOL_BWD_A = 0.2
# When no fused kernel runs the node (a RevLIF, the torch backend, a pool that is not linear), node
# and pool run under autograd: per chunk step the pool adds about as little, but each backward
# phase holds a few more node-input step tensors whatever the chunk (the node's saved output and
# state, autograd's gradient buffers), and a repeated-input block more still (its input expanded
# to a contiguous chunk, the node's forward rerun under autograd in its backward). Fitted with
# tools/memopt_phases.py on RevLIF conv nets and VGG-11s (T = 2-8, batch 8-32, chunks 1-8).
AUTOGRAD_POOL_FWD_A = 0.0
AUTOGRAD_POOL_BWD_A = 0.2
AUTOGRAD_BWD_STEPS = 3.9
AUTOGRAD_STATIC_FWD_STEPS = 1.3
AUTOGRAD_STATIC_BWD_STEPS = 6.4
# A max-pool under autograd (BlockShape.max_pool; a 2x2 one after a LIF on the Numba kernels runs fused)
# keeps its int64 indices beside the node's spikes and writes a dense input gradient: per chunk step
# and per backward phase this many node-input tensors more than an average pool. Fitted with the
# LOOP_* terms below on node-first conv nets (RevLIF on the Numba kernel, LIF and RevLIF on the
# torch backend, T = 4-16): without them the RevLIF's step peaks on the Numba kernel were 8-20%
# below the measured ones (-4..+5% with them).
AUTOGRAD_MAXPOOL_BWD_A = 0.45
AUTOGRAD_MAXPOOL_BWD_STEPS = 2.8
# A node whose own forward is PyTorch's step loop (BlockShape.node_loop: the torch backend) holds
# more than the AUTOGRAD_* terms (fitted on the RevLIF's Numba kernel) count, in node-input tensors
# (see _loop_a): a LIF per chunk step what its surrogate backward needs (its charged potential h,
# kept beside the spikes; in backward also its input gradient, written step by step) and a few of
# the loop's temporaries; a RevLIF's loop keeps no per-step history, but each phase holds many of
# its per-step temporaries (REV_LOOP_*). Fitted with tools/memopt_phases.py --suite torch (the
# built-in conv net and VGG-11, node-first conv nets; T = 4-16, batch 8-32, chunks 1-16): its 25
# fitted step peaks were 7-45% below the measured ones without these terms, -5..+13% with them.
LOOP_FWD_A = 1.7
LOOP_BWD_A = 1.6
LOOP_BWD_STEPS = 3.0
REV_LOOP_FWD_A = 0.5
REV_LOOP_FWD_STEPS = 4.1
REV_LOOP_BWD_STEPS = 9.6
# The head's backward (the layers after the model's last block, run under autograd) comes before any
# block's: the block's dense output over T, which the head saved, beside its gradient, the head's new
# parameter gradients, and what the block's forward left idle in the kernels' buffer pool: a
# repeated-input block's node runs a few steps at a time, and two of those spike pieces stay pooled
# (HEAD_IDLE_PIECES). A repeated-input block that is the whole model (conv -> LIF -> flatten + linear)
# peaked there, 28-39% above its prediction at T = 8-16 without this phase (measured as
# tests/test_memopt_head_backward.py does).
HEAD_IDLE_PIECES = 2
# A repeated-input block whose backward runs inside the next block's keeps its recomputed layer
# output, its time-summed input gradient and its state gradient there besides what is counted per
# fed chunk: node-input tensors of one step (fitted with tools/memopt_phases.py; 2 would be all of
# them, which over-predicted the max-pool VGG by up to 17%).
STATIC_FEED_A = 1.0
# Backward of a convolution: its weight in the kernel's blocked layout, the new weight gradient
# and its reorder, in multiples of the block's parameter bytes (big kernels, small images: VGG's
# 512x512 layers at 4x4 and 2x2 are set by them).
BWD_PARAM = 1.8
# Backward of the other layers with parameters (linear, BatchNorm; their forward copies nothing): the
# new gradient, in multiples of their parameter bytes; a repeated-input block makes its gradients
# once, inside the next block's backward when it runs there (the built-in MLP on a repeated input,
# hidden 1024: -38% with a linear layer counted as a convolution and that gradient missing).
BWD_PARAM_OTHER = 1.0
# A block whose backward runs over several chunks sums its parameters' gradients in stand-ins
# (memopt.paramgrads): from the second chunk on, each chunk's new gradient lives beside the sum, one
# more copy of every parameter (in multiples of the parameter bytes). VGG-11's 512-channel blocks cut
# into 2-5 chunks measured 1.1x their parameter bytes above the prediction without it (-20..-26% step
# peaks on the forced small chunks of tools/memopt_phases.py --suite).
BWD_PARAM_SUM = 1.0
# A block whose input arrives packed (bits, levels) unpacks each chunk of it for its layers'
# backward; BWD_A's fit (convolutions, whose input is at most about one node input) absorbed one
# node-input tensor of it per step, a linear layer of wider fan-in holds the rest: this many times
# the excess per chunk step (the node-first MLP's 4096 -> 512 layer: -13% without it).
PACKED_X_BWD = 1.0
# A one-chunk block with BatchNorm runs its backward under autograd (BatchNorm's own saved input,
# output and gradient, none of them in place): this many more node-input tensors per step.
PLAIN_BN_BWD_A = 2.0
# A block that autograd does not record (a node fed the model input, with or without parameter-free
# layers before it, before the first trainable parameter: BlockShape.records) runs as plain modules
# over all T: it keeps nothing and has no backward; its forward holds its dense output, the layers'
# output and the node's own temporaries, and its output is the next block's dense input during that
# block's forward. Fitted with node-first conv nets and MLPs (LIF and RevLIF, numba and torch, T = 4
# and 16): a max-pool before the node holds its int64 indices (2 of its outputs) while it runs; the
# Numba kernels a few node-input step tensors whatever T; PyTorch's step loops (torch / reference
# backend) per step.
# A RevLIF's step loop holds more per step than a LIF's (PLAIN_REV_LOOP_A, from node-first models of
# a RevLIF on the torch backend reading a repeated input, T = 16-32, batch 16-64: 2.0-2.1).
PLAIN_LAYER_A = 2.0
PLAIN_KERNEL_STEPS = 2.5
PLAIN_LOOP_A = 1.4
PLAIN_REV_LOOP_A = 2.0
# No budget: the fastest plan whose peak is within this factor of the least reachable peak.
NO_BUDGET_SLACK = 1.10
NO_BUDGET_SLACK_BYTES = 16 * 2**20  # small models: a few MiB are not worth many small chunks or recomputed layers
BUDGET_HEADROOM = 0.8  # plan to this fraction of a budget (see plan_chunks)
MAX_CHUNK_SAMPLES = 512  # K x B of one chunk at most (see _descent)
# Time model (relative units): one unit per multiply-accumulate of a layer pass, plus a fixed
# cost per chunk pass (kernel launches, Python; ~0.3 ms) and the node's work per neuron-step and
# pass (~1 ns), in MAC-equivalents (convolutions run ~100 GMAC/s on the 2-core VM).
CHUNK_OVERHEAD_MACS = 3.0e7
NODE_PASS_MACS = 100.0
# Each convolution/linear call also costs in proportion to its weights, whatever the chunk size
# (oneDNN reorders them; the backward writes a whole weight gradient that is then accumulated):
# measured ~0.5 ms per MB of weights per backward call, ~0.05 ms forward (512->512 3x3 at 4x4).
PARAM_BWD_MACS_PER_BYTE = 100.0
PARAM_FWD_MACS_PER_BYTE = 10.0
# Relative time differences below this are not resolved by the time model (a tie).
TIME_RESOLUTION = 0.03
# A repeated-input block's backward runs in sub-chunks of this many steps (node-only recompute).
STATIC_INNER_STEPS = 2


@dataclass
class BlockChoice:
    """One block's entry of a :class:`NetworkPlan`: its chunk ``K`` (time steps), the bytes it keeps from
    forward to backward, and whether it holds its layer output over all T."""

    name: str
    strategy: str           # "hold" (layer output held), "recompute" (one chunk), "chunked", "plain" (not recorded)
    chunk: int
    saved_bytes: int
    hold: bool = False      # layer output held from forward to backward: no recomputation


@dataclass
class NetworkPlan:
    """What :func:`edgesnn.optimize_memory` chose, and the predicted peak (bytes above the pre-step baseline)."""

    blocks: List[BlockChoice]
    peak_bytes: int
    peak_phase: str
    budget_bytes: Optional[int]
    time_units: float
    fixed_bytes: int = 0

    def to_dict(self) -> Dict:
        """The plan as JSON-ready values (bytes, time units, one dict per block)."""
        return {"blocks": [asdict(b) for b in self.blocks], "peak_bytes": self.peak_bytes, "peak_phase": self.peak_phase,
                "budget_bytes": self.budget_bytes, "time_units": self.time_units, "fixed_bytes": self.fixed_bytes}

    def __str__(self) -> str:
        lines = [f"{'block':<12} {'strategy':<10} {'K':>4} {'saved MiB':>10}"]
        for b in self.blocks:
            lines.append(f"{b.name:<12} {b.strategy:<10} {b.chunk:>4} {b.saved_bytes / 2**20:>10.2f}")
        lines.append(f"predicted peak {self.peak_bytes / 2**20:.1f} MiB ({self.peak_phase})"
                     + (f", budget {self.budget_bytes / 2**20:.1f} MiB" if self.budget_bytes else ""))
        return "\n".join(lines)


def n_chunks(T: int, K: int) -> int:
    """Chunks of ``K`` time steps that cover ``T`` steps: ``ceil(T / K)``."""
    return -(-T // K)


def saved_bytes(b: BlockShape, K: int, hold: bool = False) -> int:
    """Bytes a block keeps from its forward to its backward: input + node state per chunk boundary
    (+ its layer output over all T when it holds it); none for a block autograd does not record."""
    if not b.records:
        return 0
    return b.x_saved_bytes + (n_chunks(b.T, K) - 1) * b.a_bytes + (b.T * b.a_bytes if hold else 0)


def _pool_a(b: BlockShape, forward: bool) -> float:
    """Node-input tensors per chunk step that an unfused pooling adds (UNFUSED_POOL_*, AUTOGRAD_POOL_*)."""
    if not b.unfused_pool:
        return 0.0
    if b.pool_autograd:
        return AUTOGRAD_POOL_FWD_A if forward else AUTOGRAD_POOL_BWD_A + AUTOGRAD_MAXPOOL_BWD_A * b.max_pool
    return UNFUSED_POOL_FWD_A if forward else UNFUSED_POOL_BWD_A


def _loop_a(b: BlockShape, steps: int, forward: bool) -> float:
    """Node-input tensors a step-loop node adds to a phase that runs it ``steps`` steps at a time (LOOP_*)."""
    if not b.node_loop:
        return 0.0
    if b.reversible:
        return steps * REV_LOOP_FWD_A + REV_LOOP_FWD_STEPS if forward else REV_LOOP_BWD_STEPS
    return steps * LOOP_FWD_A if forward else steps * LOOP_BWD_A + LOOP_BWD_STEPS


def _bwd_param(b: BlockShape, chunks: int = 1) -> float:
    """Bytes the backward of a block's layers with parameters allocates for them over ``chunks``
    chunks (BWD_PARAM*)."""
    own = BWD_PARAM * b.conv_param_bytes + BWD_PARAM_OTHER * (b.param_bytes - b.conv_param_bytes)
    return own + (BWD_PARAM_SUM * b.param_bytes if chunks > 1 else 0)


def _spike_grad_steps(b: BlockShape, fed: int) -> int:
    """Node-input tensors of one step that a repeated-input block's backward makes per fed range of
    ``fed`` steps besides its kernel's scratch: a LIF before linear layers (an average pool, flatten:
    memopt.linear_post) gets the spikes' gradient ``[fed, B, ...]`` from theirs before its
    time-summing kernel runs (steps.node_backward_time_sum), ``fed`` of them; none for the other
    time-summing kernels."""
    return fed if b.sums_over_time and b.linear_post else 0


def _head_backward(b: BlockShape, K: int, kept: int, inner: int) -> int:
    """Bytes of the head's backward phase after the model's last block ``b`` (chunk ``K``), whose
    output the head takes over all T (HEAD_IDLE_PIECES): ``kept`` (what the blocks keep from forward
    to backward) plus that output and its gradient, the head's new parameter gradients, and a
    repeated-input block's idle pooled spike pieces (its node on the Numba kernels). A block autograd
    does not record gets no output gradient."""
    if not b.records:  # it ran as plain modules (see PLAIN_*): no gradient of its output, no pieces
        return int(kept + b.T * b.o_bytes + BWD_PARAM_OTHER * b.head_param_bytes)
    idle = HEAD_IDLE_PIECES * min(inner, K, b.T) * b.a_bytes if b.static and not b.node_loop else 0
    return int(kept + 2 * b.T * b.o_bytes + idle + BWD_PARAM_OTHER * b.head_param_bytes)


def fused_static(shapes: Sequence[BlockShape], i: int) -> bool:
    """Block ``i`` is a repeated-input block whose backward runs inside block ``i + 1``'s."""
    return shapes[i].static and shapes[i].hands_off and shapes[i].records and i + 1 < len(shapes)


def chunked_bn(b: BlockShape, K: int, hold: bool = False) -> bool:
    """The block runs BatchNorm's statistics passes over its chunks (several, or held ones)."""
    return b.has_bn and not b.static and b.can_chunk and (n_chunks(b.T, K) > 1 or hold)


def _plain_forward(b: BlockShape) -> int:
    """Bytes a block autograd does not record allocates in its forward (run as plain modules over all
    T, see PLAIN_*): an input repeated over T copied to ``[T, B, ...]`` by the layers' time merge, the
    layers' output and transient, the node's full-size spikes before a pooling, its output and its
    temporaries. Its input is the caller's; with no layers the node reads it as it is (the Numba
    kernels read a repeated input's one step at every step, PyTorch's step loop one step at a time)."""
    T = b.T
    copy = T * b.x_bytes if b.static and b.has_layers else 0
    loop_a = PLAIN_REV_LOOP_A if b.reversible else PLAIN_LOOP_A
    node_tmp = loop_a * T * b.a_bytes if b.node_loop else PLAIN_KERNEL_STEPS * b.a_bytes
    node = T * b.o_bytes + (T * b.a_bytes if b.has_post else 0) + node_tmp
    if not b.has_layers:
        return int(copy + node)
    z = T * b.a_bytes
    return int(max(copy + z + PLAIN_LAYER_A * T * b.a_bytes, z + node))


def predict_peak(shapes: Sequence[BlockShape], chunks: Sequence[int], fixed_bytes: int = 0,
                 inner: int = STATIC_INNER_STEPS,
                 breakdown: Optional[Dict[str, int]] = None, keeps: Optional[Sequence[int]] = None,
                 holds: Optional[Sequence[bool]] = None) -> Tuple[int, str]:
    """``(peak bytes, phase name)`` of one training step with chunk ``chunks[i]`` for block ``i``
    (whose forward keeps the layer output of its first ``keeps[i]`` chunks between its passes, or
    holds it over all T from its forward to its backward where ``holds[i]``).

    Mirrors :mod:`edgesnn.memopt.block`: blocks hand packed outputs to the next block (no dense
    output over T), a repeated-input block runs ``inner`` steps at a time and its backward runs
    inside the next block's, a block's backward holds its output gradient and writes its input
    gradient over all T, one chunk of temporaries at a time (between two non-repeated-input blocks
    the gradient travels in chunks, so the outgoing one grows as the incoming one is freed).
    """
    best, where = 0, ""
    kept = 0
    n = len(shapes)
    phases = {}
    held = [bool(holds and holds[i]) for i in range(len(shapes))]
    for i, (b, K) in enumerate(zip(shapes, chunks)):
        k = min(K, b.T)
        # the previous block ran as plain modules: its dense output, our input, lives during our forward
        # (a dense-codec input is the tensor we keep: counted in ``kept``)
        dense_in = b.T * b.x_bytes if i > 0 and not shapes[i - 1].records else 0
        if not b.records:
            phase = kept + dense_in + _plain_forward(b)
            phases[f"forward {b.name}"] = phase
            if phase > best:
                best, where = phase, f"forward {b.name}"
            continue
        if b.x_saved_bytes >= b.T * b.x_bytes:
            dense_in = 0
        if b.static:
            tmp = min(inner, k) * (FWD_A + _pool_a(b, True)) * b.a_bytes + 2 * b.a_bytes
            tmp += (AUTOGRAD_STATIC_FWD_STEPS * b.node_autograd + _loop_a(b, min(inner, k), True)) * b.a_bytes
        else:
            tmp = (k * (FWD_X * b.x_bytes + (FWD_A + _pool_a(b, True)) * b.a_bytes
                        + FWD_O * b.o_bytes * b.has_post) + b.conv_param_bytes + _loop_a(b, k, True) * b.a_bytes)
            if held[i]:
                # every chunk's layer output, held on into the backward
                tmp += (b.T - k) * b.a_bytes + HELD_FWD_STEPS * b.a_bytes
            elif keeps and keeps[i] and chunked_bn(b, K):
                tmp += (keeps[i] - 1) * k * b.a_bytes  # the chunk being made is one of those kept
        kept += saved_bytes(b, K)
        y = 0 if b.hands_off else b.T * b.o_bytes
        phase = kept + dense_in + y + tmp
        phases[f"forward {b.name}"] = phase
        if phase > best:
            best, where = phase, f"forward {b.name}"
        if held[i]:
            kept += b.T * b.a_bytes
    tail = shapes[-1].T * shapes[-1].o_bytes if shapes and not shapes[-1].hands_off else 0
    if tail:
        phase = _head_backward(shapes[-1], chunks[-1], kept, inner)
        phases["backward head"] = phase
        if phase > best:
            best, where = phase, "backward head"
    for i in range(n - 1, -1, -1):
        b, K = shapes[i], chunks[i]
        k = min(K, b.T)
        nc = n_chunks(b.T, K)
        if not b.records:  # no backward (and nothing kept)
            continue
        if b.static and fused_static(shapes, i):
            kept -= saved_bytes(b, K)
            continue
        g_out = b.T * b.o_bytes
        # gradients handed between non-repeated-input blocks travel as chunks (memopt/gradchunks.py):
        # the outgoing one grows while the incoming one is freed during the second pass
        out_chunks = b.hands_off and i + 1 < n
        in_chunks = i > 0 and shapes[i - 1].hands_off and not shapes[i - 1].static
        if b.static:
            tmp = min(inner, k) * (STATIC_BWD_A + _pool_a(b, False)) * b.a_bytes + 2 * b.a_bytes
            tmp += (AUTOGRAD_STATIC_BWD_STEPS * b.node_autograd + _loop_a(b, min(inner, k), False)) * b.a_bytes
            tmp += _bwd_param(b) + _spike_grad_steps(b, k) * b.a_bytes  # fed its whole chunk at once
            phase = kept + g_out + tmp
        else:
            prev_fused = i > 0 and fused_static(shapes, i - 1)
            # no input gradient where the input needs none (the model input, a plain block's output)
            g_in = 0 if prev_fused or not b.input_grad else b.T * b.x_bytes
            if out_chunks and in_chunks:
                kp = max(k, min(chunks[i + 1], shapes[i + 1].T))
                g_out, g_in = max(g_out + k * b.x_bytes, kp * b.o_bytes + g_in), 0
            tmp = (k * (BWD_X * b.x_bytes + (BWD_A + _pool_a(b, False)) * b.a_bytes
                        + BWD_O * b.o_bytes * b.has_post) + _bwd_param(b, nc))
            if b.x_saved_bytes < b.T * b.x_bytes:  # packed: each chunk unpacked
                tmp += k * PACKED_X_BWD * max(0, b.x_bytes - b.a_bytes)
            # one chunk's autograd BatchNorm and a fused repeated-input block's node under autograd
            # run after our node's backward: a step loop's tensors are gone by then (the larger counts)
            after = k * PLAIN_BN_BWD_A * b.a_bytes if b.has_bn and nc == 1 and not held[i] else 0
            if prev_fused:
                after += AUTOGRAD_STATIC_BWD_STEPS * shapes[i - 1].a_bytes * shapes[i - 1].node_autograd
            tmp += AUTOGRAD_BWD_STEPS * b.node_autograd * b.a_bytes + max(after, _loop_a(b, k, False) * b.a_bytes)
            tmp += AUTOGRAD_MAXPOOL_BWD_STEPS * (b.pool_autograd and b.max_pool) * b.a_bytes
            if held[i]:
                # the layer output is the held one (in ``kept``), not recomputed; pass 1 keeps it
                tmp += k * (HELD_BWD_A - BWD_A) * b.a_bytes + HELD_BWD_STEPS * b.a_bytes
            if prev_fused:
                # the repeated-input block's backward, inside this one's: the start states of the
                # chunks fed to it, and a few steps of temporaries (or, where its kernel sums the
                # gradient over time as it goes, only its per-thread scratch of <= 1 MiB each and
                # the boundary state gradient: taken as one step)
                p = shapes[i - 1]
                steps = p.a_bytes if p.sums_over_time else min(inner, k) * STATIC_BWD_A * p.a_bytes
                steps += _spike_grad_steps(p, k) * p.a_bytes  # fed our chunks
                fed = max(chunks[i - 1] // k, 1)  # our chunks fed per chunk of the repeated-input block
                if fed > 1 and p.sums_over_time:
                    # their start states come from a forward pass over its chunk, a few steps at a
                    # time (one piece of spikes alive)
                    steps += min(inner, k) * p.a_bytes
                tmp += steps + fed * p.a_bytes + STATIC_FEED_A * p.a_bytes + _bwd_param(p)
            phase = kept + tail + g_out + g_in + tmp
        phases[f"backward {b.name}"] = phase
        if phase > best:
            best, where = phase, f"backward {b.name}"
        kept -= saved_bytes(b, K, held[i])
        if i > 0 and fused_static(shapes, i - 1):
            kept -= saved_bytes(shapes[i - 1], chunks[i - 1])
        tail = 0
    if breakdown is not None:
        breakdown.update({k: v + fixed_bytes for k, v in phases.items()})
    return int(best + fixed_bytes), where


def predict_time(shapes: Sequence[BlockShape], chunks: Sequence[int], keeps: Optional[Sequence[int]] = None,
                 holds: Optional[Sequence[bool]] = None) -> float:
    """Relative step time: layer passes x MACs plus a cost per chunk pass."""
    total = 0.0
    for i, (b, K) in enumerate(zip(shapes, chunks)):
        nc = n_chunks(b.T, K)
        steps = 1 if b.static else b.T
        if not b.records:  # one plain forward pass
            total += b.macs * b.T + CHUNK_OVERHEAD_MACS + NODE_PASS_MACS * b.T * b.a_bytes / 4
            continue
        held = bool(holds and holds[i])
        # chunked BatchNorm: sum pass, squared-deviation pass and output pass (the chunks kept
        # from the first pass are not recomputed) + two backward passes recomputing the layers,
        # plus the layers' own backward (2); a held layer output: one forward pass + backward
        passes = 4
        if held:
            passes = 3
        elif chunked_bn(b, K):
            m = min(keeps[i], nc) if keeps else 0
            passes = 5 + 2 * (1 - m / nc) if m else 7
        # the node runs forward, then backward once, or twice with chunked BatchNorm (one held
        # chunk finishes BatchNorm's backward in one pass)
        node_passes = 3 if chunked_bn(b, K, held) and not (held and nc == 1) else 2
        neuron_steps = b.T * b.a_bytes / 4
        calls = nc * b.param_bytes * (PARAM_BWD_MACS_PER_BYTE + (passes - 2) * PARAM_FWD_MACS_PER_BYTE)
        total += (passes * b.macs * steps + calls
                  + node_passes * (nc * CHUNK_OVERHEAD_MACS + NODE_PASS_MACS * neuron_steps))
    return total
