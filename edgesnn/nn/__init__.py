"""Neural-network modules: spiking nodes and helpers for multi-step models."""

from .neurons import LIF, ParametricLIF, RevLIF, STEP_MODES
from .layers import SeqToANN
from ._compat import from_spikingjelly_surrogate, resolve_surrogate

__all__ = ["LIF", "RevLIF", "ParametricLIF", "SeqToANN", "STEP_MODES", "from_spikingjelly_surrogate", "resolve_surrogate"]
