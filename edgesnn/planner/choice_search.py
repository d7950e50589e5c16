"""The search over per-layer neuron choices (:mod:`~edgesnn.planner.solver`) for a score that is
not a sum over layers (a replayed peak, the largest batch that fits)."""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from .memory_model import ChainModel

__all__ = ["EXHAUSTIVE_CHOICES", "least_memory", "search", "starts"]

#: Up to this many per-layer combinations :func:`search` scores them in the order of a lower bound of
#: the score, until the bound passes the best score found (then the best is exact) or
#: :data:`SEARCH_LAYER_SCORES` is spent; beyond, or then, coordinate descent.
EXHAUSTIVE_CHOICES = 8192
#: Scores :func:`search` spends on the bounded pass, counted in layers (``// layers`` choices, at
#: least 256: VGG-11's 256 one-group-count choices are all scored; a replay costs ~0.4-1.2 ms there).
SEARCH_LAYER_SCORES = 4096


def search(opts: Sequence[Sequence[str]], score: Callable[[List[str]], Tuple], start_choices: Sequence[List[str]],
           bound: Optional[Callable[[Tuple[int, ...]], float]] = None) -> Tuple[List[str], bool]:
    """``(choice, exact)``: the per-layer choice (one option of each ``opts[i]``) with the least
    ``score`` (a sortable tuple) that the search finds, and whether it is proven the least (among
    equal scores, then, the first in ``itertools.product`` order).

    The peak is a replay's maximum, not a sum over layers, so the best choice may mix kinds (a LIF
    first layer and RevLIF above fitted 8% more samples than any uniform choice). Up to
    :data:`EXHAUSTIVE_CHOICES` combinations they are scored in the order of ``bound`` (of the option
    indices; at most the first entry of their score; without it, product order) until it exceeds
    the best score found, or all are scored: exact. When :data:`SEARCH_LAYER_SCORES` runs out first
    (the saved bytes a bound counts differ little between the choices, and the transient decides),
    steepest coordinate descents (:func:`_descend`) from the best so far and from each of
    ``start_choices`` (local optima; the best of them is returned, not exact); beyond that many
    combinations, one descent taking each improvement as it comes, from the best of the starts."""
    if math.prod(len(layer) for layer in opts) > EXHAUSTIVE_CHOICES:
        return _descend(opts, score, min(start_choices, key=score), False)[0], False
    combos = list(itertools.product(*[range(len(layer)) for layer in opts]))
    bounds = [bound(c) for c in combos] if bound is not None else [-math.inf] * len(combos)
    best = None  # (score, product index, choice)
    order = sorted(range(len(combos)), key=lambda n: (bounds[n], n))
    allowed = max(256, SEARCH_LAYER_SCORES // max(1, len(opts)))
    for n in order[:allowed]:
        if best is not None and bounds[n] > best[0][0]:
            return best[2], True
        choice = [opts[i][k] for i, k in enumerate(combos[n])]
        s = score(choice)
        if best is None or (s, n) < best[:2]:
            best = (s, n, choice)
    if len(order) <= allowed:
        return best[2], True
    # a moderate space the bound did not settle: steepest descents from the best so far and from every start
    return min((_descend(opts, score, c, True) for c in [best[2]] + [list(c) for c in start_choices]),
               key=lambda r: r[1])[0], False


def _descend(opts: Sequence[Sequence[str]], score: Callable[[List[str]], Tuple], best: List[str],
             steepest: bool) -> Tuple[List[str], Tuple]:
    """Coordinate descent from ``best``: ``(local optimum, its score)``. Each pass tries every other
    option of every layer and moves to the best of them (``steepest``), or takes each improvement as
    it comes (each pass costs ``layers x (options - 1)`` scores), until a pass improves nothing."""
    best_score = score(best)
    improved = True
    while improved:
        improved = False
        if steepest:
            moves = [(score(c), c) for c in (best[:i] + [o] + best[i + 1:] for i, layer in enumerate(opts)
                                              for o in layer if o != best[i])]
            s, c = min(moves, key=lambda m: m[0], default=(best_score, best))
            if s < best_score:
                best, best_score, improved = c, s, True
            continue
        for i, layer in enumerate(opts):
            for o in layer:
                if o == best[i]:
                    continue
                cand = best[:i] + [o] + best[i + 1:]
                s = score(cand)
                if s < best_score:
                    best, best_score, improved = cand, s, True
    return best, best_score


def least_memory(chain: "ChainModel", opts: Sequence[Sequence[str]], T: int) -> List[str]:
    """Per layer, the option of ``chain`` with the fewest saved bytes per sample."""
    return [min(layer, key=lambda o: (chain.layer_option_cost(i, o).per_sample(T), o)) for i, layer in enumerate(opts)]


def starts(chain: "ChainModel", opts: Sequence[Sequence[str]], T: int) -> List[List[str]]:
    """The least-saved-bytes choice and each uniform choice (every layer LIF, every layer RevLIF with G groups)."""
    out = [least_memory(chain, opts, T)]
    for o in sorted({o for layer in opts for o in layer}):
        if all(o in layer for layer in opts):
            out.append([o] * len(opts))
    return out
