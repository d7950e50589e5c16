"""The leaky integrate-and-fire (LIF) node: pure step functions with explicit state.

Semantics are SpikingJelly's ``LIFNode`` (docs/design.md §1), so users can switch and compare:

* charge, ``decay_input=True``:  ``h = v + (x - (v - v_reset)) / tau``
* charge, ``decay_input=False``: ``h = v - (v - v_reset) / tau + x``
* fire: ``s = 1 if h >= v_th else 0`` (note ``>=``)
* hard reset: ``u = s * v_reset + (1 - s) * h``; soft reset (``v_reset=None``): ``u = h - s * v_th``

``u`` is the post-reset potential, the state carried to the next step. With a soft reset the
charge uses ``v_reset = 0``. Potentials are in units of the threshold scale (dimensionless),
``tau`` in time steps.

This module is the one place where the per-neuron LIF math is written for PyTorch tensors; the
RevLIF node, the kernels' oracle tests and the exporters all call it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch

from .checks import (check_dtype, check_finite_grads, check_finite_input, check_flag, check_params, check_sequence, check_state,
                     check_tensor, eager, is_real_number, shown_number)
from .second_order import first_order_only, func_transform_depth, refuse_batched
from .surrogate import Sigmoid, Surrogate, get_surrogate, spike, stop_gradient

__all__ = [
    "LIFParams",
    "lif_charge",
    "plif_charge",
    "plif_multistep",
    "lif_fire_reset",
    "lif_fire_reset_values",
    "lif_step",
    "lif_step_vjp",
    "lif_multistep_reference",
    "lif_multistep",
    "initial_state",
    "ResetRule",
]


class ResetRule:
    """What a LIF parameter record derives from its ``v_reset`` (``None``: soft reset)."""

    @property
    def hard_reset(self) -> bool:
        """True for a hard reset (to ``v_reset``), False for a soft reset (subtract ``v_threshold``)."""
        return self.v_reset is not None

    @property
    def charge_reset(self) -> float:
        """The potential the leak decays towards (``v_reset``, or 0 for a soft reset)."""
        return 0.0 if self.v_reset is None else self.v_reset


@dataclass(frozen=True)
class LIFParams(ResetRule):
    """Hyper-parameters of a LIF node (all plain Python numbers; none is learned).

    Attributes:
        tau: membrane time constant in time steps, > 1.
        v_threshold: firing threshold ``v_th``.
        v_reset: reset potential for a hard reset; ``None`` selects a soft reset (subtract ``v_th``).
        decay_input: whether the input is divided by ``tau`` too (SpikingJelly's default True).
        detach_reset: drop the gradient through the spike in the reset term.
        surrogate: a :class:`Surrogate` or its name (``"sigmoid"`` alpha 4, ``"atan"`` alpha 2).
    """

    tau: float = 2.0
    v_threshold: float = 1.0
    v_reset: Optional[float] = 0.0
    decay_input: bool = True
    detach_reset: bool = False
    surrogate: Surrogate = field(default_factory=Sigmoid)

    def __post_init__(self) -> None:
        object.__setattr__(self, "surrogate", get_surrogate(self.surrogate))
        if not is_real_number(self.tau) or self.tau <= 1.0:
            raise ValueError(f"tau: expected a finite number > 1 (time steps; float32 range), got {shown_number(self.tau)}")
        if not is_real_number(self.v_threshold):
            raise ValueError(f"v_threshold: expected a finite number (float32 range), got {shown_number(self.v_threshold)}")
        if self.v_reset is not None and not is_real_number(self.v_reset):
            raise ValueError(f"v_reset: expected a finite number (float32 range) or None (soft reset), got {shown_number(self.v_reset)}")
        object.__setattr__(self, "decay_input", check_flag(self.decay_input, "decay_input"))
        object.__setattr__(self, "detach_reset", check_flag(self.detach_reset, "detach_reset"))
        if self.v_reset is not None and self.v_reset >= self.v_threshold:
            raise ValueError(f"v_reset: expected a value below v_threshold={self.v_threshold}, got {self.v_reset}")
        object.__setattr__(self, "tau", float(self.tau))
        object.__setattr__(self, "v_threshold", float(self.v_threshold))
        if self.v_reset is not None:
            object.__setattr__(self, "v_reset", float(self.v_reset))

    @property
    def state_decay(self) -> float:
        """``dh / dv = 1 - 1 / tau`` (the same for both charge equations)."""
        return 1.0 - 1.0 / self.tau

    @property
    def input_gain(self) -> float:
        """``dh / dx``: ``1 / tau`` with ``decay_input``, else 1."""
        return 1.0 / self.tau if self.decay_input else 1.0


def initial_state(like: torch.Tensor, p: LIFParams) -> torch.Tensor:
    """The state a fresh node starts from: ``v_reset`` (0 for a soft reset), shape ``like.shape``."""
    check_tensor(like, "like")
    check_params(p, ResetRule, "LIFParams")  # ResetRule: ParametricLIF passes tensor-valued params
    return torch.full_like(like, p.charge_reset)


def lif_charge(x: torch.Tensor, v: torch.Tensor, p: LIFParams) -> torch.Tensor:
    """Membrane potential ``h`` after charging with input ``x`` from state ``v`` (same shapes)."""
    if p.decay_input:
        return v + (x - (v - p.charge_reset)) / p.tau
    return v - (v - p.charge_reset) / p.tau + x


def lif_fire_reset(h: torch.Tensor, p: LIFParams) -> Tuple[torch.Tensor, torch.Tensor]:
    """Spike ``s`` (0/1, surrogate gradient) and post-reset potential ``u`` from ``h``; both of ``h``'s
    shape and dtype."""
    s = spike(h - p.v_threshold, p.surrogate)
    s_reset = stop_gradient(s) if p.detach_reset else s
    if p.hard_reset:
        u = s_reset * p.v_reset + (1.0 - s_reset) * h
    else:
        u = h - s_reset * p.v_threshold
    return s, u


def lif_fire_reset_values(h: torch.Tensor, p: LIFParams) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(s, u)`` of :func:`lif_fire_reset`, bit for bit, without building any gradient path (``h``'s
    shape and dtype).

    For inverses and backward passes, which need the values only.
    """
    s = (h >= p.v_threshold).to(h.dtype)
    if p.hard_reset:
        return s, s * p.v_reset + (1.0 - s) * h
    return s, h - s * p.v_threshold


def lif_step(x: torch.Tensor, v: torch.Tensor, p: LIFParams) -> Tuple[torch.Tensor, torch.Tensor]:
    """One LIF step: returns ``(s, v_next)`` for input ``x`` and state ``v`` of the same shape and dtype.

    Raises ``ValueError`` (one line) if ``v``'s shape or dtype differs from ``x``'s (no silent
    broadcasting or promotion); :func:`lif_charge` and :func:`lif_fire_reset` are the unchecked parts.
    ``TypeError`` (one line) if ``x`` or ``v`` is not a tensor, ``x`` not a floating dtype or ``p`` not a
    :class:`LIFParams`. No NaN/Inf scan (the multi-step functions and the nodes scan their input once):
    a NaN input gives a NaN state, which never spikes.
    """
    check_tensor(x, "x")
    check_tensor(v, "v")
    check_dtype(x, "x")  # (an int64 x blamed v's dtype; int64 x and v ran)
    check_params(p, ResetRule, "LIFParams")  # ResetRule: ParametricLIF passes tensor-valued params
    if tuple(v.shape) != tuple(x.shape) or v.dtype != x.dtype:
        raise ValueError(
            f"v: expected the shape {tuple(x.shape)} and dtype {_dtype_name(x.dtype)} of x, got {tuple(v.shape)} "
            f"{_dtype_name(v.dtype)}"
        )
    h = lif_charge(x, v, p)
    return lif_fire_reset(h, p)


def _fits(g: torch.Tensor, h: torch.Tensor) -> bool:
    """``True`` when ``g`` broadcasts to ``h``'s shape without widening it (a scalar gradient does)."""
    try:
        return tuple(torch.broadcast_shapes(g.shape, h.shape)) == tuple(h.shape)
    except RuntimeError:
        return False


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def lif_step_vjp(
    h: torch.Tensor, grad_s: torch.Tensor, grad_u: torch.Tensor, p: LIFParams
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Vector-Jacobian product of one step ``(x, v) -> (s, u)``, evaluated from ``h`` alone.

    Args:
        h: the charged potential of that step.
        grad_s: gradient flowing into the spike ``s``.
        grad_u: gradient flowing into the post-reset potential ``u``.

    Returns:
        ``(grad_x, grad_v)``: gradients for the step's input and its incoming state, shape ``h.shape``.

    A gradient whose shape would broadcast ``h`` to a larger shape (``[3, 1]`` against ``[1, 3]``)
    is a one-line ``ValueError``, not a silently larger result.
    """
    check_params(p, ResetRule, "LIFParams")  # ResetRule: ParametricLIF passes tensor-valued params
    check_tensor(h, "h")
    check_dtype(h, "h")
    for name, g in (("grad_s", grad_s), ("grad_u", grad_u)):
        check_tensor(g, name)
        if g.shape != h.shape and not _fits(g, h):
            raise ValueError(f"{name}: expected the shape {tuple(h.shape)} of h, got {tuple(g.shape)}")
    u = h - p.v_threshold
    g = p.surrogate.grad(u)
    s = (u >= 0).to(h.dtype)
    if p.hard_reset:
        du_dh = 1.0 - s
        if not p.detach_reset:
            du_dh = du_dh + (p.v_reset - h) * g
    else:
        du_dh = torch.ones_like(h) if p.detach_reset else 1.0 - p.v_threshold * g
    grad_h = grad_s * g + grad_u * du_dh
    return grad_h * p.input_gain, grad_h * p.state_decay


def lif_multistep_reference(
    x_seq: torch.Tensor, p: LIFParams, v0: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Store-everything LIF over time under plain autograd (the oracle and the export path).

    Args:
        x_seq: input currents ``[T, B, ...]``.
        v0: initial state ``[B, ...]``; ``None`` starts from :func:`initial_state`.

    Returns:
        ``(s_seq [T, B, ...], v_T [B, ...])``.
    """
    return _autograd_loop(x_seq, p, v0, lambda x, v: lif_step(x, v, p))


def plif_charge(x: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, p: ResetRule) -> torch.Tensor:
    """The charge of SpikingJelly's ``ParametricLIFNode``: :func:`lif_charge` with the decay
    ``sigmoid(w) = 1 / tau`` (a 0-dim tensor) multiplied in, as SpikingJelly computes it. Dividing
    by ``tau = 1 / sigmoid(w)`` instead rounds differently (a potential SpikingJelly charges to
    exactly the threshold came out one ulp below it: a spike lost), and its gradient to ``w``
    goes through ``tau ** 2`` (Inf in float16 from tau ~ 256, in float32 from 1.8e19)."""
    if p.decay_input:
        return v + (x - (v - p.charge_reset)) * decay
    return v - (v - p.charge_reset) * decay + x


def plif_multistep(
    x_seq: torch.Tensor, decay: torch.Tensor, p: ResetRule, v0: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """ParametricLIF over time under plain autograd: :func:`plif_charge` then :func:`lif_fire_reset`
    per step; ``decay`` (``sigmoid(w)``, 0-dim, learnable) and, in ``p``, a threshold that may be a
    learnable 0-dim tensor. Shapes as in :func:`lif_multistep_reference`."""
    return _autograd_loop(x_seq, p, v0, lambda x, v: lif_fire_reset(plif_charge(x, v, decay, p), p), "ParametricLIF")


def _autograd_loop(x_seq: torch.Tensor, p: ResetRule, v0: Optional[torch.Tensor], step,
                   layer: str = "LIF") -> Tuple[torch.Tensor, torch.Tensor]:
    """``step(x_t, v) -> (s_t, v_next)`` over ``x_seq [T, B, ...]`` from ``v0`` (or the fresh state),
    checked (a non-finite input's error names ``layer``)."""
    check_sequence(x_seq)
    check_state(v0, x_seq)
    check_params(p, ResetRule, "LIFParams")  # ResetRule: ParametricLIF passes tensor-valued params
    if eager():
        _check_inputs(x_seq, v0, layer)
    v = initial_state(x_seq[0], p) if v0 is None else v0
    spikes = []
    for t in range(x_seq.shape[0]):
        s, v = step(x_seq[t], v)
        spikes.append(s)
    return torch.stack(spikes), v


def _lif_torch_loop(x_seq: torch.Tensor, v0: torch.Tensor, p: LIFParams) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(s_seq, v_T, h_seq)`` of the LIF loop, without a graph (``h_seq`` is what the backward needs)."""
    h_seq = torch.empty_like(x_seq, memory_format=torch.contiguous_format)
    s_seq = torch.empty_like(x_seq, memory_format=torch.contiguous_format)
    v = v0
    with torch.no_grad():
        for t in range(x_seq.shape[0]):
            h = lif_charge(x_seq[t], v, p)
            s, v = lif_fire_reset(h, p)
            h_seq[t] = h
            s_seq[t] = s
    return s_seq, v, h_seq


def _anchor(v_T: torch.Tensor) -> torch.Tensor:
    """A zero-element output saved as the second-order refusal's anchor: its graph leads back to ``x_seq``
    (a loss linear in the spikes feeds the backward gradients without a graph), and no caller can edit it
    in place (saving the returned ``v_T`` made an in-place reset of the state before the backward an error)."""
    return v_T.new_empty(0)


class _LIFTorchFunction(torch.autograd.Function):
    """LIF over time that saves ``h`` (one tensor of ``[T, B, ...]``) for backward, and a zero-element
    anchor (a third output, which :func:`lif_multistep` drops)."""

    @staticmethod
    def forward(ctx, x_seq: torch.Tensor, v0: torch.Tensor, p: LIFParams):
        s_seq, v_T, h_seq = _lif_torch_loop(x_seq, v0, p)
        anchor = _anchor(v_T)
        ctx.save_for_backward(h_seq, anchor)
        ctx.params = p
        return s_seq, v_T, anchor

    @staticmethod
    def backward(ctx, grad_s_seq, grad_v_T, _grad_anchor=None):
        refuse_batched((grad_s_seq, grad_v_T), "LIF", "torch")  # (jacrev: its loop would mix the batch in)
        # computed from the saved h, without a graph: a second backward through it raises
        with torch.no_grad():
            grads = _LIFTorchFunction._grads(ctx, grad_s_seq, grad_v_T)
        # (anchored to the incoming gradients and to the saved anchor output: h has no graph, and a loss
        # linear in the spikes gives incoming gradients without one)
        return first_order_only(grads, "LIF", "torch", (grad_s_seq, grad_v_T, ctx.saved_tensors[1])) + (None,)

    @staticmethod
    def _grads(ctx, grad_s_seq, grad_v_T):
        h_seq = ctx.saved_tensors[0]
        p: LIFParams = ctx.params
        grad_x = torch.empty_like(h_seq, memory_format=torch.contiguous_format)
        grad_v = torch.zeros_like(h_seq[0]) if grad_v_T is None else grad_v_T
        if grad_s_seq is None:
            grad_s_seq = torch.zeros_like(h_seq)
        for t in range(h_seq.shape[0] - 1, -1, -1):
            grad_x[t], grad_v = lif_step_vjp(h_seq[t], grad_s_seq[t], grad_v, p)
        if eager():
            check_finite_grads(
                "LIF", [("the layer input x_seq", grad_x), ("the initial state v0", grad_v)],
                [("grad of s_seq", grad_s_seq), ("grad of v_T", grad_v_T)],
            )
        return grad_x, grad_v


class _LIFTorchFunctionInTransforms(torch.autograd.Function):
    """:class:`_LIFTorchFunction` in the form ``torch.func`` transforms accept (``forward`` without
    ``ctx``, ``setup_context`` apart; ``h_seq`` returned as a third, non-differentiable output to be
    saved, the anchor as the fourth). Used only inside a transform: ``torch.compile`` of PyTorch 2.5 traces
    only the classic form."""

    @staticmethod
    def forward(x_seq: torch.Tensor, v0: torch.Tensor, p: LIFParams):
        s_seq, v_T, h_seq = _lif_torch_loop(x_seq, v0, p)
        return s_seq, v_T, h_seq, _anchor(v_T)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        h_seq = output[2]
        ctx.save_for_backward(h_seq, output[3])
        ctx.mark_non_differentiable(h_seq)
        ctx.set_materialize_grads(False)  # (no [T, B, ...] of zeros for h_seq; _grads fills what is None)
        ctx.params = inputs[2]

    @staticmethod
    def backward(ctx, grad_s_seq, grad_v_T, _grad_h_seq, _grad_anchor):
        return _LIFTorchFunction.backward(ctx, grad_s_seq, grad_v_T)


def lif_multistep(
    x_seq: torch.Tensor, p: LIFParams, v0: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """LIF over time with a hand-written backward (PyTorch ops, saves ``h``: 1x the input).

    Same values as :func:`lif_multistep_reference`; same gradients up to float rounding.

    Args:
        x_seq: input currents ``[T, B, ...]``.
        v0: initial state ``[B, ...]``; ``None`` starts from :func:`initial_state`.

    Returns:
        ``(s_seq [T, B, ...], v_T [B, ...])``.
    """
    check_sequence(x_seq)
    check_state(v0, x_seq)
    check_params(p, ResetRule, "LIFParams")  # ResetRule: ParametricLIF passes tensor-valued params
    if eager():
        _check_inputs(x_seq, v0)
    if v0 is None:
        v0 = initial_state(x_seq[0], p)
    if eager() and func_transform_depth():
        s_seq, v_T, _, _ = _LIFTorchFunctionInTransforms.apply(x_seq, v0, p)
        return s_seq, v_T
    s_seq, v_T, _ = _LIFTorchFunction.apply(x_seq, v0, p)
    return s_seq, v_T


def _check_inputs(x_seq: torch.Tensor, v0: Optional[torch.Tensor], layer: str = "LIF") -> None:
    """Every backend raises the same one-line NonFiniteInputError for NaN/+-Inf inputs, naming ``layer``."""
    check_finite_input(x_seq, "x_seq", layer)
    if v0 is not None:
        check_finite_input(v0, "v0", layer)
