"""The planner's units: :class:`Cost` (bytes as a function of T and B) and :class:`Layer` (one
``model.body`` entry as :class:`~edgesnn.planner.memory_model.ChainModel` sees it).

Both are re-exported by :mod:`~edgesnn.planner.memory_model`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Tuple

from torch import nn

__all__ = ["Cost", "ZERO", "Layer"]


@dataclass(frozen=True)
class Cost:
    """Bytes as a function of time steps T and batch B.

    ``bytes(T, B) = B * (T * step + sample + ceil(T / 8) * packed + copies * repeat) + const``, where
    ``copies`` is T for B >= 2 and 1 for B = 1.

    Attributes:
        step: bytes per time step and sample (a ``[T, B, ...]`` tensor's per-element share).
        sample: bytes per sample, independent of T (e.g. RevLIF's final state).
        packed: per sample, bytes per 8 time steps (RevLIF's packed bits: one per neuron).
        const: bytes independent of T and B (BatchNorm statistics).
        repeat: per sample, bytes per time step of the model input repeated over T (a static
            ``[B, ...]`` batch expanded to ``[T, B, ...]``): the first layer's reshape copies it,
            ``T x B`` samples, except for one sample (or T = 1), where the expanded view reshapes
            without a copy and what is saved is the batch itself (``B`` samples). The only term not
            linear in B (between B = 1 and B = 2); :meth:`per_sample` gives the B >= 2 rate.
    """

    step: float = 0.0
    sample: float = 0.0
    packed: float = 0.0
    const: float = 0.0
    repeat: float = 0.0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.step + other.step, self.sample + other.sample, self.packed + other.packed, self.const + other.const,
                    self.repeat + other.repeat)

    def scale(self, k: float) -> "Cost":
        """Every term multiplied by ``k`` (e.g. a count of identical tensors)."""
        return Cost(self.step * k, self.sample * k, self.packed * k, self.const * k, self.repeat * k)

    def per_sample(self, T: int) -> float:
        """Bytes per batch element at T steps (for B >= 2: see ``repeat``)."""
        return T * (self.step + self.repeat) + self.sample + math.ceil(T / 8) * self.packed

    def bytes(self, T: int, B: int) -> int:
        """Bytes at ``T`` time steps and batch ``B`` (rounded to an int)."""
        single = (T - 1) * self.repeat if B == 1 else 0.0  # one sample: the repeated input is not copied
        return int(round(B * self.per_sample(T) - single + self.const))


ZERO = Cost()


@dataclass
class Layer:
    """One entry of ``model.body`` as the memory model sees it.

    Shapes are per time step and sample (no T, B dims). ``private`` is what the layer saves that
    is not its input or output storage; ``work`` / ``bwork`` the extra transient bytes of its
    forward / backward (beyond its output / input gradient).
    """

    index: int
    name: str
    kind: str
    in_shape: Tuple[int, ...]
    out_shape: Tuple[int, ...]
    params: int = 0
    view: bool = False
    saves_input: bool = False
    saves_output: bool = False
    private: Cost = ZERO
    work: Cost = ZERO
    bwork: Cost = ZERO
    spiking: Optional[int] = None
    module: Optional[nn.Module] = field(default=None, repr=False)

    @property
    def in_elems(self) -> int:
        """Elements of the input per time step and sample (product of ``in_shape``)."""
        return math.prod(self.in_shape)

    @property
    def out_elems(self) -> int:
        """Elements of the output per time step and sample (product of ``out_shape``)."""
        return math.prod(self.out_shape)

    @property
    def channels(self) -> int:
        """Dim 2 of ``[T, B, C, ...]`` (the dim RevLIF splits into groups)."""
        return self.in_shape[0] if self.in_shape else 1

