"""The multiple-choice knapsack behind the planner's per-layer choice (:mod:`~edgesnn.planner.solver`):
one ``(bytes, time)`` option per layer, bytes within a capacity, least time."""

from __future__ import annotations

import itertools
import math
from typing import List, Optional, Sequence, Tuple

__all__ = ["pareto_choices", "solve_choice", "brute_force"]


def pareto_choices(costs: Sequence[Sequence[Tuple[int, float]]], capacity: int) -> List[Tuple[List[int], int, float]]:
    """Every choice of one ``(bytes, time)`` per layer with total bytes <= ``capacity`` that no other
    such choice beats in both (the Pareto frontier), fastest first: ``(option index per layer,
    total bytes, total time)`` each; empty when nothing fits. A dynamic programme that keeps, after
    each layer, the frontier of partial choices (a 50-layer chain takes milliseconds)."""
    frontier: List[Tuple[int, float, int, int]] = [(0, 0.0, -1, -1)]  # bytes, time, parent, option
    history: List[List[Tuple[int, float, int, int]]] = []
    for layer in costs:
        cand = []
        for pi, (b, t, _, _) in enumerate(frontier):
            for oi, (ob, ot) in enumerate(layer):
                nb = b + ob
                if nb <= capacity:
                    cand.append((nb, t + ot, pi, oi))
        if not cand:
            return []
        cand.sort(key=lambda c: (c[0], c[1]))
        pruned, best = [], math.inf
        for c in cand:
            if c[1] < best - 1e-15:
                pruned.append(c)
                best = c[1]
        history.append(pruned)
        frontier = pruned
    out = []
    for end in sorted(range(len(frontier)), key=lambda i: (frontier[i][1], frontier[i][0])):
        choice: List[int] = []
        idx = end
        for level in range(len(history) - 1, -1, -1):
            _, _, parent, opt = history[level][idx]
            choice.append(opt)
            idx = parent
        out.append((choice[::-1], frontier[end][0], frontier[end][1]))
    return out


def solve_choice(costs: Sequence[Sequence[Tuple[int, float]]], capacity: int) -> Optional[Tuple[List[int], int, float]]:
    """Exact multiple-choice knapsack: pick one ``(bytes, time)`` per layer, bytes <= capacity, least time.

    Returns ``(option index per layer, total bytes, total time)`` or None when nothing fits. Ties
    in time go to fewer bytes (the first of :func:`pareto_choices`).
    """
    front = pareto_choices(costs, capacity)
    return front[0] if front else None


def brute_force(costs: Sequence[Sequence[Tuple[int, float]]], capacity: int) -> Optional[Tuple[List[int], int, float]]:
    """Enumerate every choice (for tests on small chains)."""
    best = None
    for combo in itertools.product(*[range(len(c)) for c in costs]):
        b = sum(costs[i][o][0] for i, o in enumerate(combo))
        t = sum(costs[i][o][1] for i, o in enumerate(combo))
        if b <= capacity and (best is None or (t, b) < (best[2], best[1])):
            best = (list(combo), b, t)
    return best
