"""Fixed-point grid arithmetic that makes the RevLIF inverse bit-exact (docs/design.md §2).

Every quantity the exact RevLIF stores or adds lives on the grid ``2^-16`` within
``[-GRID_RANGE, GRID_RANGE]``. On that grid, float32 (24-bit significand) represents every value
exactly up to ``|v| < 256``, so adding and subtracting grid values is exact, and multiplying by
2^16 or by 1/2 is an exact exponent shift. Halving a grid value shifts out one bit; the node keeps
that bit (packed, 8 time steps per byte) so the inverse can put it back.

Gradients pass straight through every rounding step (:func:`straight_through`).
"""

from __future__ import annotations

from typing import Tuple

import torch

from .surrogate import stop_gradient

__all__ = [
    "GRID_BITS",
    "GRID_SCALE",
    "INPUT_RANGE",
    "STATE_LIMIT",
    "to_grid",
    "quantize_input",
    "halve_on_grid",
    "unhalve_on_grid",
    "straight_through",
    "packed_steps",
    "pack_bit",
    "unpack_bit",
]

GRID_BITS = 16
GRID_SCALE = float(2**GRID_BITS)
#: Inputs are clamped to +-INPUT_RANGE before quantization. The state bound that follows from it
#: depends on tau, gamma, alpha, the reset and decay_input; exact mode accepts only parameters
#: whose proven bound stays within STATE_LIMIT (:func:`edgesnn.functional.revlif.exact_state_bounds`).
INPUT_RANGE = 64.0
#: Largest |v| the exact mode accepts for its state: grid values are exact in float32 below 256
#: (24-bit significand, 16 fraction bits). :class:`~edgesnn.functional.revlif.RevLIFParams`
#: rejects parameters whose proven state bound (:func:`~edgesnn.functional.revlif.exact_state_bounds`)
#: exceeds it.
STATE_LIMIT = 255.0


def to_grid(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest multiple of ``2^-16`` (ties to even); same shape and dtype as ``x``."""
    return torch.round(x * GRID_SCALE) / GRID_SCALE


def quantize_input(x: torch.Tensor) -> torch.Tensor:
    """Clamp to ``[-INPUT_RANGE, INPUT_RANGE]`` and round onto the grid (no gradient handling); same
    shape as ``x``."""
    return to_grid(torch.clamp(x, -INPUT_RANGE, INPUT_RANGE))


def halve_on_grid(v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(floor_grid(v / 2), bit)`` for a grid value ``v``: ``v == 2 * floor_grid(v / 2) + bit * 2^-16``.

    ``bit`` is returned as ``uint8`` (0 or 1); both have the shape of ``v``.
    """
    k = v * GRID_SCALE
    half = torch.floor(k * 0.5)
    bit = k - 2.0 * half
    return half / GRID_SCALE, bit.to(torch.uint8)


def unhalve_on_grid(half: torch.Tensor, bit: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`halve_on_grid`: ``2 * half + bit * 2^-16`` (exact), ``half``'s shape and dtype."""
    return (2.0 * (half * GRID_SCALE) + bit.to(half.dtype)) / GRID_SCALE


def straight_through(exact: torch.Tensor, smooth: torch.Tensor) -> torch.Tensor:
    """Value of ``exact`` (bit for bit, the sign of a zero included), gradient of ``smooth``.

    Written as ``exact - (stop(smooth) - smooth)``: subtracting the ``+0.0`` difference keeps a
    ``-0.0`` (``-0.0 + 0.0`` is ``+0.0``, so ``exact + (smooth - stop(smooth))`` turned an exact-mode
    state of ``-0.0`` into ``+0.0``, unlike the kernels)."""
    return stop_gradient(exact) - (stop_gradient(smooth) - smooth)


def packed_steps(T: int) -> int:
    """Bytes per neuron that hold one bit per time step for ``T`` steps (``ceil(T / 8)``)."""
    return (T + 7) // 8


def pack_bit(packed: torch.Tensor, t: int, bit: torch.Tensor) -> None:
    """OR the 0/1 ``uint8`` ``bit [...]`` of step ``t`` into ``packed [ceil(T/8), ...]`` at ``packed[t // 8]``
    (bit ``t % 8``), in place."""
    packed[t // 8] |= bit << (t % 8)


def unpack_bit(packed: torch.Tensor, t: int) -> torch.Tensor:
    """The 0/1 ``uint8`` bit of step ``t`` from ``packed`` ``[ceil(T/8), ...]``."""
    return (packed[t // 8] >> (t % 8)) & 1
