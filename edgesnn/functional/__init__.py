"""Functional core: pure step and multi-step functions with explicit state."""

from .surrogate import ATan, Sigmoid, Surrogate, get_surrogate, spike, stop_gradient
from .checks import NonFiniteGradientError, NonFiniteInputError
from .lif import LIFParams, initial_state, lif_charge, lif_fire_reset, lif_multistep, lif_multistep_reference, lif_step, lif_step_vjp
from .revlif import (
    ReconstructionError, RevLIFParams, exact_state_bounds, revlif_multistep_reference, revlif_step, revlif_step_backward,
)
from .revlif_autograd import RevLIFKernels, TORCH_KERNELS, revlif_multistep

__all__ = [
    "ATan", "Sigmoid", "Surrogate", "get_surrogate", "spike", "stop_gradient",
    "LIFParams", "initial_state", "lif_charge", "lif_fire_reset", "lif_multistep", "lif_multistep_reference",
    "lif_step", "lif_step_vjp",
    "NonFiniteGradientError", "NonFiniteInputError", "exact_state_bounds",
    "ReconstructionError", "RevLIFParams", "revlif_multistep_reference", "revlif_step", "revlif_step_backward",
    "RevLIFKernels", "TORCH_KERNELS", "revlif_multistep",
]
