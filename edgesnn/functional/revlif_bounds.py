"""The proven state bound of RevLIF's exact mode: the least box of states no input can leave.

:func:`exact_state_bounds` decides whether a parameter set keeps every state a grid value within
``STATE_LIMIT`` (so float32 holds it exactly and exact mode stays bit-exact at any T), and how
large a caller's initial state may be. :class:`~edgesnn.functional.revlif.RevLIFParams` checks it
when it is built.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Optional, Tuple

from .checks import check_params
from .grid import INPUT_RANGE, STATE_LIMIT

if TYPE_CHECKING:  # pragma: no cover
    from .lif import LIFParams
    from .revlif import RevLIFParams

__all__ = ["exact_state_bounds", "bounds_for"]

# Proof sketch (README, "RevLIF: equations and exactness"). Exact mode is bit-exact as long as every state value stays a
# grid value (multiple of 2^-16) with |v| < 256, where float32 holds it exactly. Per step, group i
# (0-based) charges from its source (a, w): a = quantized input of group n-1, |a| <= 64, for i = 0,
# and a = y_{i-1} = alpha x + s, |a| <= 64 alpha + 1, otherwise; w = a state of the source group.
#   h = d w + (a + v_r) / tau   (decay_input)   or   d w + v_r / tau + a,   d = 1 - 1/tau,
# so |h| <= d |w| + c_i.  Hard reset: u = v_reset or u = h, so |u| <= max(|v_reset|, |h|); soft
# reset: u = h or h - v_th with h >= v_th, so |u| <= |h| + max(0, -v_th).  The new state is
#   v' = floor_grid(v / 2) + to_grid(gamma u),  |v'| <= |v| / 2 + gamma |u| + 2^-15.
# With f_i(W) = W_i / 2 + gamma max(|v_reset|, d W_src(i) + c_i + e) (+ float-rounding margins), any
# box W with f(W) <= W (componentwise) is invariant: states within W stay within W for every
# input (clamped to +-64, as exact mode does) and every step count. f is monotone and its linear
# part contracts (2 gamma d < 1, i.e. beta + gamma d < 1), so the least invariant box is the fixed
# point of f. Parameters are accepted when that box lies within STATE_LIMIT = 255; a caller's v0 is
# accepted within the *largest* invariant box inside STATE_LIMIT (255 for common parameters).

_REL = 1e-6  # relative margin for float rounding of h and gamma * u (a few ulps of 2^-24 each)
_ABS = 2.0 ** -15  # floor_grid(v / 2) (< 2^-16) + to_grid(gamma u) (<= 2^-17)


def _bound_terms(tau, v_th, v_reset, hard, decay_input, alpha, gamma, groups):
    d = 1.0 - 1.0 / tau
    vr = abs(v_reset) if hard else 0.0
    e = 0.0 if hard else max(0.0, -v_th)
    cs = []
    for i in range(groups):
        a = INPUT_RANGE if i == 0 else INPUT_RANGE * alpha + 1.0
        cs.append((a + vr) / tau if decay_input else a + vr / tau)
    return d, vr, e, cs


def _g(i, w_src, d, vr, e, cs, gamma):
    hb = (d * w_src + cs[i]) * (1.0 + _REL)
    return gamma * max(vr, hb + e) * (1.0 + _REL) + _ABS


@lru_cache(maxsize=256)
def _exact_bounds(tau, v_th, v_reset, hard, decay_input, alpha, gamma, groups):
    """``(least, largest)`` invariant boxes (tuples per group); ``least`` may exceed STATE_LIMIT or
    be ``inf`` (then ``largest`` is ``None``)."""
    d, vr, e, cs = _bound_terms(tau, v_th, v_reset, hard, decay_input, alpha, gamma, groups)
    n = groups
    src = [n - 1] + list(range(n - 1))
    f = lambda W: [W[i] / 2.0 + _g(i, W[src[i]], d, vr, e, cs, gamma) for i in range(n)]  # noqa: E731
    r = 2.0 * gamma * d * (1.0 + _REL) ** 2
    if r >= 1.0:
        return (math.inf,) * n, None
    # fixed point of the linear branch W_i = r W_src(i) + b_i, closed form around the cycle
    b = [2.0 * (gamma * (1.0 + _REL) * ((cs[i] * (1.0 + _REL)) + e) + _ABS) for i in range(n)]
    w0 = (b[0] + sum(r ** (n - i) * b[i] for i in range(1, n))) / (1.0 - r ** n)
    W = [w0]
    for i in range(1, n):
        W.append(r * W[i - 1] + b[i])
    W = [max(w * (1.0 + 1e-7), vr) for w in W]  # the fresh state v_reset must be inside too
    if max(W) > STATE_LIMIT:
        return tuple(W), None
    for _ in range(10000):
        fw = f(W)
        if all(fw[i] <= W[i] for i in range(n)):
            break
        W = [max(W[i], fw[i]) * (1.0 + 1e-9) for i in range(n)]
        if max(W) > STATE_LIMIT:
            return tuple(W), None
    else:
        return (math.inf,) * n, None
    least = tuple(W)
    if max(least) > STATE_LIMIT:
        return least, None
    # largest invariant box inside STATE_LIMIT: shrink from the limit (each constraint of f(W) <= W
    # caps the source group's bound); falls back to the least box if it does not settle.
    L = [STATE_LIMIT] * n
    for _ in range(1000):
        new = list(L)
        ok = True
        for i in range(n):
            room = (L[i] / 2.0 - _ABS) / (gamma * (1.0 + _REL)) - e
            if room < vr:
                ok = False
                break
            cap = (room / (1.0 + _REL) - cs[i]) / d
            new[src[i]] = min(new[src[i]], cap)
        if not ok or any(new[i] < least[i] for i in range(n)):
            return least, least
        if new == L:
            break
        L = new
    fl = f(L)
    if all(fl[i] <= L[i] for i in range(n)) and all(L[i] >= least[i] for i in range(n)):
        return least, tuple(L)
    return least, least


def _bound_key(lif, alpha, gamma, groups):
    return (lif.tau, lif.v_threshold, lif.charge_reset, lif.hard_reset, lif.decay_input, alpha, gamma, groups)


def bounds_for(
    lif: "LIFParams", alpha: float, gamma: float, groups: int
) -> Tuple[Tuple[float, ...], Optional[Tuple[float, ...]]]:
    """``(least, v0_limit)`` for a LIF parameter record and RevLIF's mixing: as
    :func:`exact_state_bounds`, with ``v0_limit`` ``None`` when even the least box exceeds
    ``STATE_LIMIT`` (the parameters are refused)."""
    return _exact_bounds(*_bound_key(lif, alpha, gamma, groups))


def exact_state_bounds(p: "RevLIFParams") -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """``(least, v0_limit)`` per channel group for an exact-mode ``p``.

    ``least[i]`` bounds ``|v|`` of group ``i`` from a fresh state for every input sequence;
    ``v0_limit[i]`` (>= ``least[i]``, <= :data:`~edgesnn.functional.grid.STATE_LIMIT`) is the
    largest ``|v0|`` a caller may pass for group ``i`` so that the state stays within it.
    """
    from .revlif import RevLIFParams  # (revlif imports this module)

    check_params(p, RevLIFParams, "RevLIFParams")
    return bounds_for(p.lif, p.alpha, p.gamma, p.groups)
