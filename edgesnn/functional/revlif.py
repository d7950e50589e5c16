"""The reversible LIF node (RevLIF): forward step, exact inverse and single-pass gradient.

Channels (dim 2 of ``[T, B, C, ...]``) are split into ``n >= 2`` equal groups. Per time step, for
group ``i = 1..n`` with *source* ``(x_n, v_n)`` for ``i = 1`` and ``(y_{i-1}, v'_{i-1})`` otherwise::

    (h_i, s_i, u_i) = LIF(source_i)               # lif_charge + lif_fire_reset
    y_i  = alpha * x_i + s_i                      # output (real-valued)
    v'_i = beta  * v_i + gamma * u_i              # new state

Going backwards (groups ``n..2``, then 1) every ``(h_i, s_i, u_i)`` can be recomputed from
already-known values, so ``x`` and ``v`` are recovered from ``(y, v')``: the node keeps its final
state only. Modes (see README, "Exactness"):

* ``"exact"`` (default): ``alpha = 2^-k``, ``beta = 1/2``; inputs and ``gamma * u`` are rounded to the
  grid ``2^-16`` (inputs clamped to +-64) and the bit that halving ``v`` shifts out is kept, packed
  8 steps per byte. The inverse is then bit-exact at any T. Memory: final state + ``T/8`` bytes per
  neuron.
* ``"float"``: the plain equations with any ``alpha, beta != 0``; the inverse amplifies rounding
  (about ``1/beta`` per step) and spikes may flip. The backward checks that the reconstructed
  initial state and per-neuron spike counts match and raises :class:`ReconstructionError` if not.

Tensors inside this module use the *grouped layout* ``[B, n, M]`` per step (``M = C / n * prod(...)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch

from .checks import check_sequence, check_state
from .grid import (
    halve_on_grid,
    quantize_input,
    straight_through,
    to_grid,
    unhalve_on_grid,
)
from .lif import LIFParams, lif_charge, lif_fire_reset, lif_fire_reset_values, lif_step_vjp

__all__ = [
    "RevLIFParams",
    "ReconstructionError",
    "MODES",
    "to_groups",
    "from_groups",
    "revlif_initial_state",
    "revlif_step",
    "revlif_step_inverse",
    "revlif_step_backward",
    "revlif_multistep_reference",
]

MODES = ("exact", "float")
#: Output coefficients that keep ``y = alpha x + s`` exact on the grid (|x| <= 64, grid 2^-16).
EXACT_ALPHAS = tuple(2.0 ** -k for k in range(8))


class ReconstructionError(RuntimeError):
    """The inverse did not reproduce the forward history (only possible in ``mode="float"``)."""


@dataclass(frozen=True)
class RevLIFParams:
    """Hyper-parameters of a RevLIF node.

    Attributes:
        lif: the per-group LIF step (tau, threshold, reset, surrogate...).
        groups: number of channel groups ``n >= 2``; must divide the channel count.
        alpha: output mixing coefficient (``y = alpha x + s``); a power of two ``2^-k`` (k <= 7) in
            exact mode. Smaller values let the spikes weigh more against the passed-through input
            (1/8 trains digits within 0.4 points of LIF, 1 about 2 points worse; see README).
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
        if isinstance(self.groups, bool) or not isinstance(self.groups, int) or self.groups < 2:
            raise ValueError(f"groups: expected an integer >= 2, got {self.groups!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")
        for name in ("alpha", "beta", "gamma"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{name}: expected a finite number, got {value!r}")
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
            if self.beta + self.gamma * lif.state_decay >= 1.0:
                raise ValueError(
                    f"mode='exact' needs a contracting state, beta + gamma * (1 - 1/tau) < 1; got "
                    f"{self.beta} + {self.gamma} * {lif.state_decay:.4g} >= 1 (lower gamma or tau)"
                )
            if abs(lif.v_threshold) > 16 or (lif.v_reset is not None and abs(lif.v_reset) > 16):
                raise ValueError("mode='exact' requires |v_threshold| <= 16 and |v_reset| <= 16 to keep the state on the float32 grid")

    @property
    def exact(self) -> bool:
        return self.mode == "exact"


# ----------------------------------------------------------------------------- layout helpers


def to_groups(x: torch.Tensor, groups: int, channel_dim: int = 2, name: str = "x_seq") -> torch.Tensor:
    """View a sequence ``[T, B, C, ...]`` (``channel_dim=2``) or a state ``[B, C, ...]``
    (``channel_dim=1``) in grouped layout ``[T, B, n, M]`` / ``[B, n, M]``.

    Copies only when the input is not contiguous.
    """
    C = x.shape[channel_dim]
    if C % groups != 0:
        raise ValueError(
            f"groups: {groups} does not divide the channel count {C} (dim {channel_dim} of {name} with shape {tuple(x.shape)})"
        )
    lead = tuple(x.shape[:channel_dim])
    return x.reshape(*lead, groups, -1)


def from_groups(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`to_groups`."""
    return x.reshape(shape)


def revlif_initial_state(like: torch.Tensor, p: RevLIFParams) -> torch.Tensor:
    """Fresh-node state: ``v_reset`` (0 for soft reset), on the grid in exact mode."""
    v = torch.full_like(like, p.lif.charge_reset)
    return to_grid(v) if p.exact else v


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


def _invert_group(i: int, y, v_new, bits, x, v, p: RevLIFParams) -> torch.Tensor:
    """Recover group ``i``'s ``x[:, i]`` and ``v[:, i]`` in place (groups ``i+1..n`` already done,
    and for ``i = 0`` group ``n``); returns the recomputed ``h`` for the caller's VJP."""
    n = p.groups
    a, w = (y[:, i - 1], v_new[:, i - 1]) if i > 0 else (x[:, n - 1], v[:, n - 1])
    h = lif_charge(a, w, p.lif)
    s, u = lif_fire_reset_values(h, p.lif)
    x[:, i] = (y[:, i] - s) / p.alpha
    if p.exact:
        v[:, i] = unhalve_on_grid(v_new[:, i] - to_grid(p.gamma * u), bits[:, i])
    else:
        v[:, i] = (v_new[:, i] - p.gamma * u) / p.beta
    return h


@torch.no_grad()
def revlif_step_inverse(
    y: torch.Tensor, v_new: torch.Tensor, bits: Optional[torch.Tensor], p: RevLIFParams
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Invert one step without gradients: ``(x, v)`` from ``(y, v_new)`` and the kept ``bits``
    (``[B, n, M]``, exact mode; ``None`` in float mode). One LIF evaluation per group."""
    x = torch.empty_like(y)
    v = torch.empty_like(v_new)
    for i in range(p.groups - 1, -1, -1):
        _invert_group(i, y, v_new, bits, x, v, p)
    return x, v


@torch.no_grad()
def revlif_step_backward(
    y: torch.Tensor,
    v_new: torch.Tensor,
    bits: Optional[torch.Tensor],
    grad_y: torch.Tensor,
    grad_v_new: torch.Tensor,
    p: RevLIFParams,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Invert one step and back-propagate through it in the same pass (SPEC section 2).

    Walks groups ``n..1`` once; each group's ``(h, s, u)`` is recomputed once and used both to
    recover ``(x_i, v_i)`` and for the vector-Jacobian product.

    Args:
        y, v_new: the step's output and new state ``[B, n, M]``.
        bits: the kept ``uint8`` bits ``[B, n, M]`` (exact mode) or ``None``.
        grad_y, grad_v_new: incoming gradients ``[B, n, M]``.

    Returns:
        ``(x, v, grad_x, grad_v)``: the recovered input and previous state, and their gradients
        (``grad_x`` before the input's straight-through quantization, which passes it unchanged).
    """
    n = p.groups
    x = torch.empty_like(y)
    v = torch.empty_like(v_new)
    grad_x = torch.empty_like(grad_y)
    grad_v = torch.empty_like(grad_v_new)
    gy = [grad_y[:, i] for i in range(n)]
    gv = [grad_v_new[:, i] for i in range(n)]
    for i in range(n - 1, -1, -1):
        h = _invert_group(i, y, v_new, bits, x, v, p)
        # vector-Jacobian product through the group's LIF step
        ga, gw = lif_step_vjp(h, gy[i], p.gamma * gv[i], p.lif)
        grad_x[:, i] = p.alpha * gy[i]
        grad_v[:, i] = p.beta * gv[i]
        if i > 0:
            gy[i - 1] = gy[i - 1] + ga
            gv[i - 1] = gv[i - 1] + gw
        else:
            grad_x[:, n - 1] += ga
            grad_v[:, n - 1] += gw
    return x, v, grad_x, grad_v


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
    if p.exact:
        xg = straight_through(quantize_input(xg), xg)
    v = revlif_initial_state(xg[0], p) if v0 is None else to_groups(v0, p.groups, 1, "v0")
    if v0 is not None and p.exact:
        v = straight_through(to_grid(v), v)
    ys = []
    for t in range(xg.shape[0]):
        y, v, _ = revlif_step(xg[t], v, p)
        ys.append(y)
    return from_groups(torch.stack(ys), x_seq.shape), from_groups(v, x_seq.shape[1:])
