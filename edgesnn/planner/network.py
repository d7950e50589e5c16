"""Chunk planner for chunked whole-network training (:mod:`edgesnn.memopt`): per block, the chunk
``K``, how many chunks its forward keeps between the statistics passes, and whether it holds its
layer output until backward, judged by :mod:`edgesnn.planner.network_model`'s predicted peak and
time.

Chunk size ``K`` trades memory for time: every chunk costs a fixed overhead and a block with
BatchNorm that needs more than one chunk runs its layers two extra times; holding the layer
output saves those passes for ``T x`` its size in bytes.
"""

from __future__ import annotations

import math

from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from ..memopt.block import Block

from .network_model import (BUDGET_HEADROOM, MAX_CHUNK_SAMPLES, NO_BUDGET_SLACK, NO_BUDGET_SLACK_BYTES,
                            STATIC_INNER_STEPS, TIME_RESOLUTION, BlockChoice, BlockShape, NetworkPlan, PlanningError,
                            block_shape, chunked_bn, fused_static, n_chunks, predict_peak, predict_time, saved_bytes)

__all__ = ["BlockShape", "BlockChoice", "NetworkPlan", "PlanningError", "predict_peak", "predict_time", "block_shape",
           "block_shapes", "plan_blocks", "plan_target", "plan_chunks", "choose_keeps", "choose_holds"]


RELAX_TARGETS = (1.0, 0.95, 0.9)  # fractions of the target each descent choice is relaxed towards


def _candidates(T: int) -> List[int]:
    ks, k = [], T
    while k >= 1:
        ks.append(k)
        if k == 1:
            break
        k = max(1, k // 2)
    return ks


#: :func:`_static_options` tries every chunk count up to this many candidates (T / k up to ~10**6),
#: beyond it counts on a geometric grid of ratio 1 + 1/STATIC_GRID (T = 10**9 made 10**9 options)
STATIC_EXACT_OPTIONS, STATIC_GRID = 2048, 64


def _static_options(T: int, k: int) -> List[int]:
    """The checkpoint intervals :func:`_fit_static` tries for a repeated-input block of ``T`` steps
    before a block of chunk ``k``, ascending: per chunk count ``n = ceil(T / c)``, the smallest
    multiple ``c`` of ``k`` that gives it, and ``T``. A larger ``c`` with as many chunks keeps as much
    and feeds more states (:func:`predict_peak` does not fall with ``c`` at a fixed count), so the
    least peak is among these ``~2 sqrt(T / k)``; past :data:`STATIC_EXACT_OPTIONS` of them, only the
    counts of a geometric grid (within ``1/STATIC_GRID`` of any count) are tried."""
    out, m, last = {T}, 1, n_chunks(T, k)
    while m <= last and len(out) <= STATIC_EXACT_OPTIONS:
        out.add(m * k)
        n = n_chunks(T, m * k)
        if n == 1:
            return sorted(out)
        m = n_chunks(n_chunks(T, n - 1), k)  # the first multiple of k that makes fewer chunks than n
    counts, n = set(), 1.0
    while n < last:
        counts.add(int(n))
        n = max(n * (1 + 1 / STATIC_GRID), n + 1)
    return sorted({T, k} | {k * n_chunks(n_chunks(T, n), k) for n in counts})


def _fit_static(shapes: Sequence[BlockShape], chunks: List[int], fixed_bytes: int) -> List[int]:
    """Checkpoint interval of each fused repeated-input block: a multiple of the next block's chunk,
    the one with the least predicted peak (few checkpoints vs. few recomputed states)."""
    out = list(chunks)
    for i, b in enumerate(shapes):
        if not fused_static(shapes, i):
            continue
        best = None
        for c in _static_options(b.T, out[i + 1]):
            trial = list(out)
            trial[i] = c
            p, _ = predict_peak(shapes, trial, fixed_bytes)
            if best is None or p < best[0]:
                best = (p, c)
        out[i] = best[1]
    return out


def plan_target(shapes: Sequence[BlockShape], budget: Optional[int], fixed_bytes: int = 0,
                path: Optional[List[List[int]]] = None) -> int:
    """The peak a plan may reach: ``BUDGET_HEADROOM`` of ``budget``; with no budget,
    ``NO_BUDGET_SLACK`` (or ``NO_BUDGET_SLACK_BYTES``) above the least peak chunking reaches."""
    if budget is not None:
        # headroom: large chunks of large blocks measured above the transient model (VGG-11, T = 64)
        return int(budget * BUDGET_HEADROOM)
    path = path if path is not None else _descent(shapes, fixed_bytes)
    low = predict_peak(shapes, path[-1], fixed_bytes)[0]
    return int(max(low * NO_BUDGET_SLACK, low + NO_BUDGET_SLACK_BYTES))


def plan_chunks(shapes: Sequence[BlockShape], budget: Optional[int], fixed_bytes: int = 0) -> Tuple[List[int], int]:
    """Chunk size per block: the fastest choice (fewest, largest chunks) whose predicted peak fits
    :func:`plan_target` (``BUDGET_HEADROOM`` of ``budget``; with no budget, ``NO_BUDGET_SLACK``
    above the least peak reachable by chunking). Returns ``(chunks, target)``, the target being
    the peak the held outputs are chosen under (:func:`choose_holds`; at most the plan's target)."""
    path = _descent(shapes, fixed_bytes)
    target = plan_target(shapes, budget, fixed_bytes, path)
    best = _fastest_within(shapes, path, target, fixed_bytes)
    if best is not None:
        return best
    if budget is None:
        return path[-1], target
    least = predict_peak(shapes, path[-1], fixed_bytes)[0]
    smallest = math.ceil(least / BUDGET_HEADROOM)
    raise PlanningError(
        f"budget: {_size(budget)} cannot be met; the least this model needs at this batch and T is "
        f"{_size(least)}, so the smallest budget accepted is {_size(smallest)} ({smallest} bytes) "
        f"(plans keep {100 - 100 * BUDGET_HEADROOM:.0f}% headroom): lower the batch or T, or raise the budget")


def _size(n: float) -> str:
    """Bytes for the budget message: MiB from 1 MiB on, else KiB or bytes (a tiny budget read '0.0 MiB')."""
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB" if n >= 2**10 else f"{int(n)} bytes"


def choose_holds(shapes: Sequence[BlockShape], chunks: Sequence[int], keeps: Sequence[int], target: int,
                 fixed_bytes: int = 0) -> List[bool]:
    """Per block, whether it holds its layer output from forward to backward (no recomputation of
    its convolution: two or three layer passes fewer): the fastest hold set found whose predicted
    peak stays within ``target``.

    Greedy fills (most time saved per held byte first, and most time saved first) from no hold or,
    when the choice's peak without holds is above ``target``, from each single hold that brings it
    within (holding lowers a one-chunk block's transient); then one-for-one swaps of a held block
    for another while they make the step faster. When no hold brings the peak within ``target``,
    holds may be added only where they do not raise it. (One greedy fill by bytes alone missed hold
    sets 9-28% faster that fitted, and refused budgets that such a set met.)"""
    n = len(shapes)

    def peak(h: List[bool]) -> int:
        return predict_peak(shapes, chunks, fixed_bytes, keeps=keeps, holds=h)[0]

    def time_of(h: List[bool]) -> float:
        return predict_time(shapes, chunks, keeps, h)

    def flip(h: List[bool], *pairs: Tuple[int, bool]) -> List[bool]:
        out = list(h)
        for i, v in pairs:
            out[i] = v
        return out

    none = [False] * n
    now = time_of(none)
    saved = {i: now - time_of(flip(none, (i, True))) for i, b in enumerate(shapes)
             if b.can_hold and b.has_bn and not b.static and b.can_chunk}
    saved = {i: s for i, s in saved.items() if s > 0}
    if not saved:
        return none
    base = peak(none)
    starts, cap = [none], target
    if base > target:
        starts = [flip(none, (i, True)) for i in saved if peak(flip(none, (i, True))) <= target]
        if not starts:
            starts, cap = [none], base
    orders = (sorted(saved, key=lambda i: saved[i] / max(1, shapes[i].T * shapes[i].a_bytes), reverse=True),
              sorted(saved, key=lambda i: saved[i], reverse=True))
    best = None
    for start in starts:
        for order in orders:
            h = list(start)
            for i in order:
                if not h[i] and peak(flip(h, (i, True))) <= cap:
                    h[i] = True
            cand = (time_of(h), peak(h), h)
            best = cand if best is None or cand[:2] < best[:2] else best
    improved = True
    while improved:  # one-for-one swaps while one makes the step faster
        improved = False
        held = [i for i in saved if best[2][i]]
        for i, j in [(i, j) for i in held for j in saved if not best[2][j]]:
            h = flip(best[2], (i, False), (j, True))
            p = peak(h)
            if p <= cap:
                t = time_of(h)
                if (t, p) < best[:2]:
                    best, improved = (t, p, h), True
    return best[2]


def _fastest_within(shapes: Sequence[BlockShape], path: List[List[int]], target: int,
                    fixed_bytes: int = 0) -> Optional[Tuple[List[int], int]]:
    """The fastest choice whose peak fits ``target``: every choice on the greedy descent, as it is
    and relaxed (:func:`_relax`), each with the chunks its forward keeps and the layer outputs it
    holds (:func:`choose_keeps`, :func:`choose_holds`: holding also lowers a one-chunk block's
    transient, so a choice over the target without them may fit with them), compared by predicted
    time. Returns ``(chunks, hold_target)``: the peak its held outputs were chosen under."""
    options = {}
    for c in path:
        # relaxed and holding towards the target and towards a few lower peaks: a choice nearly as
        # fast with a lower peak is then among the candidates, and wins the tie below
        for f in RELAX_TARGETS:
            cap = int(target * f)
            for r in (list(c), _relax(shapes, c, cap, fixed_bytes)):
                if (tuple(r), cap) in options:
                    continue
                keeps = choose_keeps(shapes, r, fixed_bytes)
                holds = choose_holds(shapes, r, keeps, cap, fixed_bytes)
                peak = predict_peak(shapes, r, fixed_bytes, keeps=keeps, holds=holds)[0]
                if peak <= target:
                    options[(tuple(r), cap)] = (predict_time(shapes, r, keeps, holds), peak, r, cap)
    if not options:
        return None
    # times within TIME_RESOLUTION of the fastest are a tie for the time model: the least peak wins
    fastest = min(o[0] for o in options.values())
    best = min((o for o in options.values() if o[0] <= fastest * (1 + TIME_RESOLUTION)), key=lambda o: (o[1], o[0]))
    return best[2], best[3]


def _relax(shapes: Sequence[BlockShape], chunks: List[int], target: int, fixed_bytes: int = 0) -> List[int]:
    """Undo halvings the greedy descent no longer needs: double any block's chunk (up to one
    chunk) while the peak without holds stays within ``target`` and the step gets measurably faster
    (by more than ``TIME_RESOLUTION``), fastest first.

    A doubling that fits only with a held block (holding lowers a one-chunk block's predicted
    transient) is not taken: tried, it gave three plans that measured 3-47% more memory than the
    plans without it (a held block in one chunk: its measured transient is above the one-chunk
    recomputation's, the model's the other way round) and no measured time gain; its predicted
    gain was up to 9% (a conv net at T = 8)."""
    chunks = list(chunks)
    while True:
        now = predict_time(shapes, chunks)
        best = None
        for i, b in enumerate(shapes):
            if fused_static(shapes, i) or chunks[i] >= b.T or not b.can_chunk:
                continue
            k = min(2 * chunks[i], b.T)
            if not b.static and k * b.B > MAX_CHUNK_SAMPLES:  # the cap of _descent's chunks, one chunk too
                continue
            trial = list(chunks)
            trial[i] = k
            trial = _fit_static(shapes, trial, fixed_bytes)
            t = predict_time(shapes, trial)
            if (t < now * (1 - TIME_RESOLUTION) and predict_peak(shapes, trial, fixed_bytes)[0] <= target
                    and (best is None or t < best[0])):
                best = (t, trial)
        if best is None:
            return chunks
        chunks = best[1]


def _descent(shapes: Sequence[BlockShape], fixed_bytes: int = 0) -> List[List[int]]:
    """Every choice passed by a greedy descent: from one chunk per block, halve the chunk that buys
    the most peak per unit of time until no halving lowers the peak (the last choice: the least)."""
    # a chunk of a non-repeated-input block holds at most MAX_CHUNK_SAMPLES samples (K x B): the
    # transient model was calibrated there; larger ones measured far above it (batch 128, K = 64)
    ks = [[k for k in _candidates(b.T) if b.static or k == 1 or k * b.B <= MAX_CHUNK_SAMPLES] for b in shapes]
    chunks = [k[0] for k in ks]
    idx = [0] * len(shapes)
    path: List[List[int]] = []

    def phases_of(c: List[int]) -> List[int]:
        """The phases' bytes, largest first (the first is the peak)."""
        bd: Dict[str, int] = {}
        predict_peak(shapes, _fit_static(shapes, c, fixed_bytes), fixed_bytes, breakdown=bd)
        return sorted(bd.values(), reverse=True) or [fixed_bytes]

    def gain_of(before: List[int], after: List[int]) -> float:
        # the peak first; on a plateau (two phases tied at the peak) the next phases break the tie,
        # so halving one of the tied blocks still counts as progress
        return sum((b - a) * 0.1 ** j for j, (b, a) in enumerate(zip(before[:3], after[:3])))

    while True:
        phases = phases_of(chunks)
        peak = phases[0]
        path.append(_fit_static(shapes, chunks, fixed_bytes))
        best = None
        for i, b in enumerate(shapes):
            if not b.can_chunk or fused_static(shapes, i) or idx[i] + 1 >= len(ks[i]):
                continue
            trial = list(chunks)
            trial[i] = ks[i][idx[i] + 1]
            after = phases_of(trial)
            dt = predict_time(shapes, trial) - predict_time(shapes, chunks)
            gain = gain_of(phases, after) if after[0] <= peak else -1.0
            if gain <= 0:
                continue
            score = gain / max(dt, 1.0)
            if best is None or score > best[0]:
                best = (score, i)
        if best is None:
            return path
        i = best[1]
        idx[i] += 1
        chunks[i] = ks[i][idx[i]]


def plan_blocks(blocks: Sequence["Block"], model: nn.Module, budget: Optional[int], chunk: Optional[int] = None,
                optimizer_bytes_per_param: int = 0) -> NetworkPlan:
    """Choose every block's chunk (or apply ``chunk``), set ``block.chunk``, and return the plan."""
    shapes = block_shapes(blocks, model)
    fixed = optimizer_bytes_per_param * sum(p.numel() * p.element_size() for p in model.parameters())
    target = None
    if chunk is not None:
        chunks = [min(chunk, s.T) if s.can_chunk else s.T for s in shapes]
    else:
        chunks, target = plan_chunks(shapes, budget, fixed)
    chunks = _fit_static(shapes, list(chunks), fixed)
    keeps = choose_keeps(shapes, chunks, fixed)
    # a forced chunk asks for that chunking: nothing held beyond it
    holds = [False] * len(shapes) if target is None else choose_holds(shapes, chunks, keeps, target, fixed)
    for b, K, sh, m, h in zip(blocks, chunks, shapes, keeps, holds):
        b.chunk = K
        b.inner = max(1, min(K, STATIC_INNER_STEPS)) if sh.static else 0
        b.keep = m
        b.hold = h
    peak, phase = predict_peak(shapes, chunks, fixed, keeps=keeps, holds=holds)
    choices = [BlockChoice(s.name, _strategy(s, K, h), K, saved_bytes(s, K, h), h)
               for s, K, h in zip(shapes, chunks, holds)]
    return NetworkPlan(choices, peak, phase, budget, predict_time(shapes, chunks, keeps, holds), fixed)


def block_shapes(blocks: Sequence["Block"], model: nn.Module) -> List[BlockShape]:
    """The :class:`BlockShape` of every traced block of ``model``, in order; the last one carries the
    bytes of the trainable parameters no block owns (the head after it)."""
    shapes = [block_shape(b, i) for i, b in enumerate(blocks)]
    if shapes:
        shapes[-1].head_param_bytes = _outside_param_bytes(blocks, model)
    return shapes


def _outside_param_bytes(blocks: Sequence["Block"], model: nn.Module) -> int:
    """Bytes of the model's trainable parameters that no block owns (its head after the last block;
    layers left as they are before a block count too, which only over-predicts the head's phase)."""
    inside = {id(p) for b in blocks for p in b.params}
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad and id(p) not in inside)


def _strategy(s: BlockShape, K: int, hold: bool) -> str:
    """A block's strategy in the plan: ``plain`` (autograd records nothing there: a node fed the model
    input before the first trainable parameter), ``hold``, ``recompute`` (one chunk) or ``chunked``."""
    if not s.records:
        return "plain"
    return "hold" if hold else "recompute" if K >= s.T else "chunked"


def choose_keeps(shapes: Sequence[BlockShape], chunks: Sequence[int], fixed_bytes: int = 0) -> List[int]:
    """Per block, how many leading chunks' layer outputs its forward keeps between its statistics
    and output passes (each one kept is one recomputation fewer in two passes): as many as fit
    under the step's peak, which a backward phase sets, so the peak does not rise. The block's
    forward phase grows with its count, so the count is bisected (``log2(T / K)`` predictions, not
    ``T / K``: T = 10**9 ran for hours)."""
    keeps = [0] * len(shapes)
    cap, _ = predict_peak(shapes, chunks, fixed_bytes)

    def fits(i: int, m: int) -> bool:
        keeps[i] = m
        bd: Dict[str, int] = {}
        predict_peak(shapes, chunks, fixed_bytes, breakdown=bd, keeps=keeps)
        return bd[f"forward {shapes[i].name}"] <= cap

    for i, (b, K) in enumerate(zip(shapes, chunks)):
        if not chunked_bn(b, K):
            continue
        lo, hi = 0, n_chunks(b.T, K)  # the most chunks that fit (0: none)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(i, mid) else (lo, mid - 1)
        keeps[i] = lo
    return keeps
