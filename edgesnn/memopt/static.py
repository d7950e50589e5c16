"""Backward of a block whose input repeats over T, fed output-gradient chunks last to first."""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import torch

from .forward_state import ForwardState, as_in_forward
from .packing import SavedInput
from .paramgrads import collected, stand_ins
from .steps import apply_static, node_backward_time_sum, node_chunk_backward, run_node_post

if TYPE_CHECKING:  # pragma: no cover
    from .block import Block

__all__ = ["StaticBackward"]


class StaticBackward:
    """Backward of a block whose input repeats over T, fed output-gradient chunks last to first.

    Everything before the node is time-invariant: it is recomputed once, and its gradient is the
    sum over time of the node's input gradient. Each fed range's start state is recomputed from
    its chunk's checkpoint (the node alone: cheap), so checkpoints stay one per chunk. Where a
    fused kernel applies (a LIF on the Numba backend, alone or before a 2x2 max-pool) one call per
    fed range back-propagates the node and adds the time-summed input gradient straight into the
    accumulator; otherwise the range runs in sub-chunks of ``block.inner`` steps, so the transient
    is a few steps. The gradients of ``params`` (the block's autograd inputs) are kept in
    ``param_grads`` for the block's backward to return, whichever backward runs this one.
    """

    def __init__(self, block: "Block", saved: SavedInput, bounds: Sequence[Tuple[int, int]],
                 checkpoints: Sequence[Optional[torch.Tensor]], input_needs_grad: bool,
                 params: Sequence[torch.Tensor], forward_state: ForwardState, owner: str) -> None:
        """``bounds``: the forward's chunks ``(t0, t1)`` (time steps); ``checkpoints``: the node state
        ``[B, ...]`` at each chunk's start (``None``: fresh); ``forward_state``: the block's modules at
        the forward's end (each backward step runs in their forward modes, and refuses a parameter
        changed in place since; ``owner`` names the block in that error)."""
        self.block, self.saved, self.bounds, self.checkpoints = block, saved, list(bounds), checkpoints
        self.forward_state, self.owner = forward_state, owner
        self.input_needs_grad = input_needs_grad
        self.params = list(params)
        self.param_grads: Tuple[Optional[torch.Tensor], ...] = (None,) * len(self.params)
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
        """Start steps of the fed ranges (``feed_bounds``) that begin inside our chunk ``c``."""
        t0, t1 = self.bounds[c]
        return [f0 for f0, _ in self.feed_bounds if t0 <= f0 < t1]

    def accepts(self, bounds: Sequence[Tuple[int, int]]) -> bool:
        """Whether a consumer chunking by ``bounds`` can feed us: every chunk of ours is a union of theirs."""
        edges = {t0 for t0, _ in bounds}
        return all(t0 in edges for t0, _ in self.bounds) and bounds[-1][1] == self.bounds[-1][1]

    def _states_from(self, c: int, starts) -> Dict[int, Optional[torch.Tensor]]:
        """Node states at the given step indices inside our chunk ``c``, recomputed from its checkpoint."""
        t0 = self.bounds[c][0]
        states = {t0: self.checkpoints[c]}
        v, t = self.checkpoints[c], t0
        for p in sorted(starts):
            if p > t:
                v = self._advance(v, p - t)
                t = p
            states[p] = v
        return states

    def _advance(self, v: Optional[torch.Tensor], steps: int) -> Optional[torch.Tensor]:
        """The node state ``steps`` steps after ``v``, a few steps per call (their spikes are dropped)."""
        z0 = self.z0
        piece = max(1, self.block.inner)
        with torch.no_grad():
            for s0 in range(0, steps, piece):
                _, v = run_node_post(self.block.node, [], z0.unsqueeze(0).expand(min(piece, steps - s0), *z0.shape), v)
        return v

    def feed(self, t0: int, t1: int, g: torch.Tensor) -> None:
        """Back-propagate steps ``t0:t1`` (fed last to first) given their output gradient ``g [t1 - t0, B, ...]``."""
        with as_in_forward(self.forward_state, self.owner):  # (it may run inside the next block's backward)
            self._feed(t0, t1, g)

    def _feed(self, t0: int, t1: int, g: torch.Tensor) -> None:
        block = self.block
        c = self.next_chunk
        while c >= 0 and self.bounds[c][0] > t0:
            c -= 1
        if c < 0 or t1 > self.bounds[c][1] or (self.expect is not None and t1 != self.expect):
            raise RuntimeError(f"memopt: gradient for steps {t0}:{t1} arrived out of order")
        self.next_chunk, self.expect = c, t0
        if self.z0 is None:
            self.saved.check_unmodified()
            with torch.no_grad():
                self.z0 = apply_static(block.steps, self.saved.data, self.saved.shape[0], update=False)
            self.dz0 = torch.zeros_like(self.z0)
        z0 = self.z0
        if self.cache_chunk != c:
            # fed ranges inside one chunk of ours: recompute the start states of all of them once
            self.cache = self._states_from(c, self.feed_starts(c))
            self.cache_chunk = c
        start = self.cache.pop(t0) if t0 in self.cache else self._states_from(c, [t0])[t0]
        summed = node_backward_time_sum(block, z0, t1 - t0, start, g, self.g_v, self.dz0)
        if summed is not None:  # one kernel call, summing into dz0 as it goes: no [k, ...] transient
            self.g_v = summed[1]
            return
        # no fused kernel: sub-ranges of a few steps, each from its recomputed start state
        inner = block.inner if 0 < block.inner < (t1 - t0) else (t1 - t0)
        subs = [(s0, min(s0 + inner, t1)) for s0 in range(t0, t1, inner)]
        states = [start]
        for s0, s1 in subs[:-1]:
            states.append(self._advance(states[-1], s1 - s0))
        for j in range(len(subs) - 1, -1, -1):
            s0, s1 = subs[j]
            z = z0.unsqueeze(0).expand(s1 - s0, *z0.shape)
            dz, self.g_v = node_chunk_backward(block, z, states[j], g[s0 - t0:s1 - t0], self.g_v)
            self.dz0 += dz.sum(0)
            del dz
            states[j] = None

    def finish(self) -> Optional[torch.Tensor]:
        """Back-propagate the time-summed gradient through the layers before the node (parameter
        gradients into ``param_grads``). Returns the block input's gradient ``[T, B, ...]`` (a zero-stride
        view over T of the sum / T) when ``input_needs_grad``, else ``None``."""
        with as_in_forward(self.forward_state, self.owner):
            return self._finish()

    def _finish(self) -> Optional[torch.Tensor]:
        block, saved = self.block, self.saved
        saved.check_unmodified()
        x0l = saved.data.detach().requires_grad_(self.input_needs_grad)
        with stand_ins(block.owners, self.params) as subs:
            if self.dz0 is not None:
                with torch.enable_grad():
                    z = apply_static(block.steps, x0l, saved.shape[0], update=False)
                    if z.requires_grad:
                        torch.autograd.backward(z, self.dz0)
            self.param_grads = collected(subs)
        self.done = True
        self.checkpoints = self.z0 = self.dz0 = self.g_v = None
        if self.input_needs_grad and x0l.grad is not None:
            # x0l.grad is the gradient summed over time. The block's input is a stride-0 view over
            # T (an expand): its backward sums whatever is handed back over T again, so each step
            # gets 1/T of the sum (T steps of it add back to the sum, within rounding; stride 0:
            # no [T, ...] tensor).
            self.result = (x0l.grad / saved.shape[0]).unsqueeze(0).expand(saved.shape)
        return self.result
