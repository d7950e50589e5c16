"""The reversible LIF node (RevLIF): forward step, exact inverse and single-pass gradient.

Channels (dim 2 of ``[T, B, C, ...]``) are split into ``n >= 2`` equal groups. Per time step, for
group ``i = 1..n`` with *source* ``(x_n, v_n)`` for ``i = 1`` and ``(y_{i-1}, v'_{i-1})`` otherwise::

    (h_i, s_i, u_i) = LIF(source_i)               # lif_charge + lif_fire_reset
    y_i  = alpha * x_i + s_i                      # output (real-valued)
    v'_i = beta  * v_i + gamma * u_i              # new state

Going backwards (groups ``n..2``, then 1) every ``(h_i, s_i, u_i)`` can be recomputed from
already-known values, so ``x`` and ``v`` are recovered from ``(y, v')``: the node keeps its final
state only. Modes (see README, "RevLIF: equations and exactness"):

* ``"exact"`` (default): ``alpha = 2^-k``, ``beta = 1/2``; inputs and ``gamma * u`` are rounded to the
  grid ``2^-16`` (inputs clamped to +-64) and the bit that halving ``v`` shifts out is kept, packed
  8 steps per byte. The inverse is then bit-exact at any T, provided the state stays below 256:
  :class:`RevLIFParams` accepts only parameters with a proven state bound within 255 for every
  input (:func:`exact_state_bounds`), a caller's ``v0`` must lie within that bound, and the
  backward still verifies the reconstructed initial state bit for bit. Memory: final state +
  ``T/8`` bytes per neuron (+ the given ``v0``, kept for the verification).
* ``"float"``: the plain equations with any ``alpha, beta != 0``; the inverse amplifies rounding
  (about ``1/beta`` per step) and spikes may flip. The backward checks that the reconstructed
  initial state and per-neuron spike counts match and raises :class:`ReconstructionError` if not.

Tensors inside this module use the *grouped layout* ``[B, n, M]`` per step (``M = C / n * prod(...)``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch

from .checks import (check_dtype, check_finite_input, check_params, check_sequence, check_state, check_tensor, eager, is_integer,
                     is_real_number, shown_number)
from .grid import (
    GRID_SCALE,
    INPUT_RANGE,
    STATE_LIMIT,
    halve_on_grid,
    quantize_input,
    straight_through,
    to_grid,
    unhalve_on_grid,
)
from .lif import LIFParams, lif_charge, lif_fire_reset, lif_fire_reset_values, lif_step_vjp
from .revlif_bounds import bounds_for, exact_state_bounds

__all__ = [
    "RevLIFParams",
    "ReconstructionError",
    "MODES",
    "exact_state_bounds",
    "check_exact_state",
    "check_groups",
    "to_groups",
    "from_groups",
    "revlif_initial_state",
    "revlif_step",
    "revlif_step_inverse",
    "revlif_step_backward",
    "revlif_multistep_reference",
]

MODES = ("exact", "float")
#: Most groups a RevLIF mixes: the exact-mode state bound walks every group (65536: 0.14 s; 10**7 took ~30 s
#: to construct, and 2**63 ended in a MemoryError).
MAX_GROUPS = 65536
#: Output coefficients that keep ``y = alpha x + s`` exact on the grid (|x| <= 64, grid 2^-16).
EXACT_ALPHAS = tuple(2.0 ** -k for k in range(8))


class ReconstructionError(RuntimeError):
    """The inverse did not reproduce the forward history (expected only in ``mode="float"``; in exact
    mode the backward still verifies, and this means the saved tensors changed or a kernel bug)."""


@dataclass(frozen=True)
class RevLIFParams:
    """Hyper-parameters of a RevLIF node.

    Attributes:
        lif: the per-group LIF step (tau, threshold, reset, surrogate...).
        groups: number of channel groups ``n >= 2``; must divide the channel count.
        alpha: output mixing coefficient (``y = alpha x + s``); a power of two ``2^-k`` (k <= 7) in
            exact mode. Smaller values let the spikes weigh more against the passed-through input
            (1/8 trains digits within half a point of LIF, 1 about 2 points worse; see README).
        beta: state leak (``v' = beta v + gamma u``); 1/2 in exact mode.
        gamma: weight of the coupled post-reset potential; in ``(0, 1]``.
        mode: ``"exact"`` or ``"float"``.
    """

    lif: LIFParams = field(default_factory=LIFParams)
    groups: int = 2
    alpha: float = 0.125
    beta: float = 0.5
    gamma: float = 0.5
    mode: str = "exact"

    def __post_init__(self) -> None:
        check_params(self.lif, LIFParams, "LIFParams", "lif")
        if not is_integer(self.groups) or not 2 <= self.groups <= MAX_GROUPS:
            raise ValueError(f"groups: expected an integer from 2 to {MAX_GROUPS}, got {self.groups!r}")
        object.__setattr__(self, "groups", int(self.groups))
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")
        for name in ("alpha", "beta", "gamma"):
            value = getattr(self, name)
            if not is_real_number(value):
                raise ValueError(f"{name}: expected a finite number (float32 range), got {shown_number(value)}")
            object.__setattr__(self, name, float(value))
        if self.alpha == 0.0 or self.beta == 0.0:
            raise ValueError(f"alpha and beta must be non-zero for the step to be invertible, got alpha={self.alpha}, beta={self.beta}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma: expected a value in (0, 1], got {self.gamma}")
        if self.mode == "exact":
            if self.alpha not in EXACT_ALPHAS or self.beta != 0.5:
                raise ValueError(
                    f"mode='exact' requires alpha to be a power of two 2^-k, k = 0..7, and beta=0.5 "
                    f"(got alpha={self.alpha}, beta={self.beta}); use mode='float' for other coefficients"
                )
            lif = self.lif
            if abs(lif.v_threshold) > 16 or (lif.v_reset is not None and abs(lif.v_reset) > 16):
                raise ValueError("mode='exact' requires |v_threshold| <= 16 and |v_reset| <= 16 to keep the state on the float32 grid")
            if self.beta + self.gamma * lif.state_decay >= 1.0:
                raise ValueError(
                    f"gamma: mode='exact' needs a contracting state, beta + gamma * (1 - 1/tau) < 1; got "
                    f"{self.beta} + {self.gamma} * {lif.state_decay:.4g} >= 1; expected gamma in "
                    f"(0, {self._largest_gamma()}] for the other parameters (or a lower tau, or mode='float')"
                )
            least, largest = bounds_for(lif, self.alpha, self.gamma, self.groups)
            if largest is None:
                raise ValueError(self._bound_message(max(least)))

    def _largest_gamma(self) -> str:
        """The largest gamma (rounded down to 4 decimals, as text) whose exact-mode state bound fits
        ``STATE_LIMIT`` with the other parameters (the bound grows with gamma)."""
        lo, hi = 0.0, self.gamma
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            if bounds_for(self.lif, self.alpha, mid, self.groups)[1] is not None:
                lo = mid
            else:
                hi = mid
        return f"{math.floor(lo * 1e4) / 1e4:.4g}"

    def _bound_message(self, reach: float) -> str:
        lif = self.lif
        reach_s = "unbounded" if math.isinf(reach) else f"{reach:.4g}"
        return (
            f"gamma: mode='exact' with gamma={self.gamma}, tau={lif.tau}, decay_input={lif.decay_input}, "
            f"v_threshold={lif.v_threshold}, v_reset={lif.v_reset}, alpha={self.alpha}, groups={self.groups} lets the "
            f"state reach |v| = {reach_s} for inputs within +-{INPUT_RANGE:g}, beyond the exactly invertible "
            f"|v| <= {STATE_LIMIT:g}; expected gamma in (0, {self._largest_gamma()}] for the other parameters "
            f"(or mode='float')"
        )

    @property
    def exact(self) -> bool:
        """True in ``mode='exact'`` (state on the 2^-16 grid, bit-exact inverse), False in float mode."""
        return self.mode == "exact"


# ----------------------------------------------------------------------------- layout helpers


def check_groups(x: torch.Tensor, groups: int, channel_dim: int = 2, name: str = "x_seq") -> None:
    """Raise ``ValueError`` (one line, naming ``x``'s shape) unless ``x`` has a dim ``channel_dim``
    and ``groups`` (a positive integer) divides it."""
    if groups < 1:
        raise ValueError(f"groups: expected a positive integer, got {groups!r}")
    if x.dim() <= channel_dim:
        raise ValueError(
            f"{name}: expected the channels at dim {channel_dim} (at least {channel_dim + 1} dims), got shape {tuple(x.shape)}"
        )
    C = x.shape[channel_dim]
    if C % groups != 0:
        raise ValueError(
            f"groups: {groups} does not divide the channel count {C} (dim {channel_dim} of {name} with shape {tuple(x.shape)})"
        )


def to_groups(x: torch.Tensor, groups: int, channel_dim: int = 2, name: str = "x_seq") -> torch.Tensor:
    """View a sequence ``[T, B, C, ...]`` (``channel_dim=2``) or a state ``[B, C, ...]``
    (``channel_dim=1``) in grouped layout ``[T, B, n, M]`` / ``[B, n, M]``.

    Copies only when the input is not contiguous.
    """
    check_groups(x, groups, channel_dim, name)
    C = x.shape[channel_dim]
    lead = tuple(x.shape[:channel_dim])
    M = (C // groups) * math.prod(x.shape[channel_dim + 1:])  # explicit: -1 is ambiguous when B = 0
    return x.reshape(*lead, groups, M)


def check_exact_state(v0g: torch.Tensor, p: "RevLIFParams", name: str = "v0") -> None:
    """Exact mode: raise ``ValueError`` (one line) unless the grouped state ``v0g [B, n, M]`` is finite
    and within :func:`exact_state_bounds`'s ``v0_limit`` per group. One reduction over ``v0``."""
    if not p.exact or v0g.numel() == 0:
        return
    _, limit = exact_state_bounds(p)
    lo, hi = torch.aminmax(v0g.detach())  # one pass, no temporary; NaN propagates
    if max(-float(lo), float(hi)) <= min(limit):
        return
    amax = v0g.detach().abs().amax(dim=(0, 2)).tolist()  # per group, only when the fast test fails
    for i, (a, lim) in enumerate(zip(amax, limit)):
        if not a <= lim:
            if math.isnan(a):
                check_finite_input(v0g, name, "RevLIF")
            # (an infinite a: a finite state past the dtype's largest / 2^16, which the grid rounding overflowed)
            got = f"= {a:.4g}" if math.isfinite(a) else f"beyond {torch.finfo(v0g.dtype).max / GRID_SCALE:.4g}"
            raise ValueError(
                f"{name}: mode='exact' keeps the state within |v| <= {lim:.4g} in channel group {i + 1} of {p.groups} for "
                f"these parameters (so the inverse stays bit-exact), got max |{name}| {got} there"
            )


def from_groups(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`to_groups`: grouped ``x`` (``[T, B, n, M]`` or ``[B, n, M]``) back to ``shape``."""
    return x.reshape(shape)


def revlif_initial_state(like: torch.Tensor, p: RevLIFParams) -> torch.Tensor:
    """Fresh-node state of ``like``'s shape and dtype: ``v_reset`` (0 for soft reset), on the grid in exact mode."""
    if not p.exact:
        return torch.full_like(like, p.lif.charge_reset)
    if not eager():  # traced, exported or compiled: the same ops in the graph (no host value to read)
        return to_grid(torch.full_like(like, p.lif.charge_reset))
    # eager: one fill with the grid value (the same bits, without three passes over [B, C])
    return torch.full_like(like, _grid_value(p.lif.charge_reset, like.dtype))


def _grid_value(value: float, dtype: torch.dtype) -> float:
    """``to_grid`` of ``value`` held in ``dtype``, as a Python float (exact for float16/32/64)."""
    return _grid_value_signed(value, math.copysign(1.0, value), dtype)  # 0.0 and -0.0: two entries


@functools.lru_cache(maxsize=64)
def _grid_value_signed(value: float, sign: float, dtype: torch.dtype) -> float:
    return float(to_grid(torch.tensor(value, dtype=dtype)))


# ----------------------------------------------------------------------------- one step


def _combine(x_i, v_i, s_i, u_i, p: RevLIFParams):
    """``y_i, v'_i`` and the kept bit (exact mode) from a group's own ``x_i, v_i`` and LIF result."""
    if p.exact:
        half, bit = halve_on_grid(v_i)
        u_term = to_grid(p.gamma * u_i)
        y = p.alpha * x_i + s_i  # exact: alpha = 2^-k shifts the exponent, s is 0/1
        v_new = straight_through(half + u_term, p.beta * v_i + p.gamma * u_i)
        return y, v_new, bit
    return p.alpha * x_i + s_i, p.beta * v_i + p.gamma * u_i, None


def revlif_step(
    x: torch.Tensor, v: torch.Tensor, p: RevLIFParams
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """One RevLIF step in grouped layout.

    Args:
        x: input ``[B, n, M]`` (already on the grid in exact mode, see :func:`quantize_input`).
        v: state ``[B, n, M]``.

    Returns:
        ``(y [B, n, M], v_new [B, n, M], bits)`` where ``bits`` is the ``uint8`` shifted-out bit of
        each ``v`` (exact mode) or ``None``. Differentiable (straight-through rounding), so the
        same code is the oracle's forward and the fast path's forward.
    """
    _check_step_layout(x, v, p)
    n = p.groups
    ys: List[torch.Tensor] = []
    vs: List[torch.Tensor] = []
    bits: List[torch.Tensor] = []
    a, w = x[:, n - 1], v[:, n - 1]
    for i in range(n):
        h = lif_charge(a, w, p.lif)
        s, u = lif_fire_reset(h, p.lif)
        y_i, v_i, bit = _combine(x[:, i], v[:, i], s, u, p)
        ys.append(y_i)
        vs.append(v_i)
        if bit is not None:
            bits.append(bit)
        a, w = y_i, v_i
    return torch.stack(ys, 1), torch.stack(vs, 1), (torch.stack(bits, 1) if bits else None)


def _check_step_layout(x: torch.Tensor, v: torch.Tensor, p: RevLIFParams, x_name: str = "x", v_name: str = "v") -> None:
    """One-line ``ValueError`` unless ``x`` is a grouped step ``[B, p.groups, M]`` and ``v`` has its shape
    (shapes only: no pass over the data); ``TypeError`` for a non-tensor or ``p`` not a ``RevLIFParams``."""
    check_params(p, RevLIFParams, "RevLIFParams")
    check_tensor(x, x_name)
    check_tensor(v, v_name)
    check_dtype(x, x_name, (torch.float32, torch.float64))  # (as revlif_multistep: the exact grid needs float32)
    if x.dim() != 3 or x.shape[1] != p.groups:
        raise ValueError(
            f"{x_name}: expected one step in grouped layout [B, groups={p.groups}, M], got shape {tuple(x.shape)}; "
            f"convert [B, C, ...] with to_groups(x, {p.groups}, channel_dim=1)"
        )
    if tuple(v.shape) != tuple(x.shape):
        raise ValueError(f"{v_name}: expected the shape {tuple(x.shape)} of {x_name} (grouped layout [B, n, M]), got {tuple(v.shape)}")


def _check_bits(bits: Optional[torch.Tensor], y: torch.Tensor, p: RevLIFParams) -> None:
    """Exact mode needs the kept bits of the step (``[B, n, M]``); one-line ``ValueError`` otherwise."""
    if not p.exact:
        return
    if bits is None:
        raise ValueError("bits: mode='exact' needs the kept bits [B, n, M] returned by revlif_step (or unpack_bit of the "
                         "packed bits), got None")
    if tuple(bits.shape) != tuple(y.shape):
        raise ValueError(f"bits: expected the shape {tuple(y.shape)} of y (the bits revlif_step returned), got {tuple(bits.shape)}")


def _invert_group(i: int, y, v_new, bits, a, w, p: RevLIFParams) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Recover group ``i``'s ``(x_i, v_i)`` from its source ``(a, w)`` (``(y_{i-1}, v'_{i-1})``, or for
    ``i = 0`` the already recovered ``(x_n, v_n)``); also returns the recomputed ``h`` for the VJP."""
    h = lif_charge(a, w, p.lif)
    s, u = lif_fire_reset_values(h, p.lif)
    x_i = (y[:, i] - s) / p.alpha
    if p.exact:
        v_i = unhalve_on_grid(v_new[:, i] - to_grid(p.gamma * u), bits[:, i])
    else:
        v_i = (v_new[:, i] - p.gamma * u) / p.beta
    return x_i, v_i, h


def _source(i: int, y, v_new, xs: List, vs: List) -> Tuple[torch.Tensor, torch.Tensor]:
    """Group ``i``'s LIF input: ``(y_{i-1}, v'_{i-1})``, or for ``i = 0`` the recovered ``(x_n, v_n)``."""
    return (y[:, i - 1], v_new[:, i - 1]) if i > 0 else (xs[-1], vs[-1])


def _stacked(*parts: List) -> Tuple[torch.Tensor, ...]:
    """Each list of per-group ``[B, M]`` results as one ``[B, n, M]``, freeing each list once stacked (eager
    peak: one output beyond the per-group results, not all of them twice)."""
    out = []
    for groups in parts:
        out.append(torch.stack(groups, 1))
        groups.clear()
    return tuple(out)


@torch.no_grad()
def revlif_step_inverse(
    y: torch.Tensor, v_new: torch.Tensor, bits: Optional[torch.Tensor], p: RevLIFParams
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Invert one step without gradients: ``(x, v)`` from ``(y, v_new)`` and the kept ``bits``
    (``[B, n, M]``, exact mode; ``None`` in float mode). One LIF evaluation per group."""
    _check_step_layout(y, v_new, p, "y", "v_new")
    _check_bits(bits, y, p)
    n = p.groups
    xs: List = [None] * n
    vs: List = [None] * n
    for i in range(n - 1, -1, -1):
        xs[i], vs[i], _ = _invert_group(i, y, v_new, bits, *_source(i, y, v_new, xs, vs), p)
    return _stacked(xs, vs)


@torch.no_grad()
def revlif_step_backward(
    y: torch.Tensor,
    v_new: torch.Tensor,
    bits: Optional[torch.Tensor],
    grad_y: torch.Tensor,
    grad_v_new: torch.Tensor,
    p: RevLIFParams,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Invert one step and back-propagate through it in the same pass (docs/design.md §2).

    Walks groups ``n..1`` once; each group's ``(h, s, u)`` is recomputed once and used both to
    recover ``(x_i, v_i)`` and for the vector-Jacobian product.

    Args:
        y, v_new: the step's output and new state ``[B, n, M]``.
        bits: the kept ``uint8`` bits ``[B, n, M]`` (exact mode) or ``None``.
        grad_y, grad_v_new: incoming gradients ``[B, n, M]``.

    Returns:
        ``(x, v, grad_x, grad_v)``: the recovered input and previous state, and their gradients
        (``grad_x`` before the input's straight-through quantization, which passes it unchanged).
        Each is stacked from per-group results (no indexed writes: traced, those would export as
        ``ScatterND``).
    """
    _check_step_layout(y, v_new, p, "y", "v_new")
    _check_step_layout(y, grad_y, p, "y", "grad_y")
    _check_step_layout(y, grad_v_new, p, "y", "grad_v_new")
    _check_bits(bits, y, p)
    n = p.groups
    xs: List = [None] * n
    vs: List = [None] * n
    gxs: List = [None] * n
    gvs: List = [None] * n
    gy = [grad_y[:, i] for i in range(n)]
    gv = [grad_v_new[:, i] for i in range(n)]
    for i in range(n - 1, -1, -1):
        xs[i], vs[i], h = _invert_group(i, y, v_new, bits, *_source(i, y, v_new, xs, vs), p)
        # vector-Jacobian product through the group's LIF step
        ga, gw = lif_step_vjp(h, gy[i], p.gamma * gv[i], p.lif)
        gxs[i] = p.alpha * gy[i]
        gvs[i] = p.beta * gv[i]
        if i > 0:
            gy[i - 1] = gy[i - 1] + ga
            gv[i - 1] = gv[i - 1] + gw
        else:
            gxs[n - 1] = gxs[n - 1] + ga
            gvs[n - 1] = gvs[n - 1] + gw
    return _stacked(xs, vs, gxs, gvs)


# ----------------------------------------------------------------------------- oracle


def revlif_multistep_reference(
    x_seq: torch.Tensor, p: RevLIFParams, v0: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Store-everything RevLIF under plain autograd: the oracle the fast paths are tested against.

    Runs exactly the forward equations of :func:`revlif_step` (including the exact mode's
    quantization, with straight-through gradients), keeping every intermediate for autograd.

    Args:
        x_seq: input ``[T, B, C, ...]`` or ``[T, B, N]``; ``C`` divisible by ``p.groups``.
        v0: initial state ``[B, C, ...]``; ``None`` starts from :func:`revlif_initial_state`.

    Returns:
        ``(y_seq, v_T)`` with the shapes of ``x_seq`` and ``x_seq[0]``.
    """
    check_sequence(x_seq, dtypes=(torch.float32, torch.float64))
    check_state(v0, x_seq)
    xg = to_groups(x_seq, p.groups)
    if eager():
        check_finite_input(x_seq, "x_seq", "RevLIF")
        if v0 is not None:
            check_finite_input(v0, "v0", "RevLIF")
    if p.exact:
        xg = straight_through(quantize_input(xg), xg)
    v = revlif_initial_state(xg[0], p) if v0 is None else to_groups(v0, p.groups, 1, "v0")
    if v0 is not None and p.exact:
        v = straight_through(to_grid(v), v)
        if eager():
            check_exact_state(v, p)
    ys = []
    for t in range(xg.shape[0]):
        y, v, _ = revlif_step(xg[t], v, p)
        ys.append(y)
    return from_groups(torch.stack(ys), x_seq.shape), from_groups(v, x_seq.shape[1:])
