"""RevLIF over time with O(1)-in-T autograd memory.

:class:`RevLIFFunction` saves, per neuron, only the final state ``v_T`` (plus, in exact mode, the
packed kept bits: ``ceil(T/8)`` bytes; in float mode the per-neuron spike count), and references
its own output ``y`` (which the next layer keeps for its own backward anyway), and a given initial
state ``v0`` (to verify the inverse against it). No per-time-step float tensor is saved.
Non-finite inputs are rejected in forward (:class:`~edgesnn.functional.checks.NonFiniteInputError`)
and non-finite gradients in backward (:class:`~edgesnn.functional.checks.NonFiniteGradientError`). Backward runs :func:`~edgesnn.functional.revlif.revlif_step_backward` from
``t = T`` down to 1: one pass that reconstructs and differentiates.

The loops over time are *kernels*: ``torch_forward`` / ``torch_backward`` here are the reference
implementation in PyTorch ops; fused kernels (``edgesnn.kernels``) implement the same contract:

* ``forward(xg [T,B,n,M], v0 [B,n,M], p) -> (y [T,B,n,M], v_T [B,n,M], bits | None, counts | None)``
  where ``xg`` is the raw input (exact mode clamps and quantizes it inside), ``bits`` is
  ``uint8 [ceil(T/8), B, n, M]`` (exact mode) and ``counts`` is ``int32 [B, n, M]`` spikes per
  neuron (float mode).
* ``backward(y, v_T, bits, grad_y, grad_v_T, p) -> (grad_x, grad_v0, v0_rec, counts_rec | None)``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional, Tuple

import torch

from .checks import check_finite_grads, check_finite_input, check_params, check_sequence, check_state, eager
from .grid import pack_bit, packed_steps, quantize_input, to_grid, unpack_bit
from .revlif import (
    ReconstructionError,
    RevLIFParams,
    check_exact_state,
    check_groups,
    from_groups,
    revlif_initial_state,
    revlif_step,
    revlif_step_backward,
    to_groups,
)
from .second_order import first_order_only, func_transform_depth, refuse_batched

__all__ = ["RevLIFKernels", "TORCH_KERNELS", "torch_forward", "torch_backward", "revlif_multistep", "verify_reconstruction",
           "float_mode_tolerance", "float_mode_growth", "float_mode_refusal", "float_state_growth"]

#: Float mode: largest accepted error of the reconstructed initial state, relative to max(1, |v_th|).
FLOAT_MODE_TOLERANCE = 1e-3
#: float32 unit roundoff: the rounding error one step adds, relative to the state scale.
_FLOAT32_ROUNDOFF = 2.0 ** -24


def float_mode_tolerance(p: RevLIFParams) -> float:
    """The largest accepted absolute error of a float-mode reconstruction (state units, like ``v``):
    ``FLOAT_MODE_TOLERANCE * max(1, |v_threshold|)``. The one definition the PyTorch backward check
    and the ONNX step export's ``recon_tolerance`` share."""
    return FLOAT_MODE_TOLERANCE * max(1.0, abs(p.lif.v_threshold))


def float_state_growth(p: RevLIFParams) -> float:
    """How much a neuron's state can grow per step without spikes (max norm, dimensionless):
    ``max(|beta| + c, |beta| + c (|beta| + c))`` with ``c = gamma * (1 - 1/tau)``. At 1 or more the
    state has no bound: an input that keeps a neuron from firing (e.g. a negative one) drives it
    geometrically to overflow over a long sequence. Exact mode refuses such parameters (its bound,
    :func:`~edgesnn.functional.exact_state_bounds`); float mode runs them."""
    c = p.gamma * (1.0 - 1.0 / p.lif.tau)
    b = abs(p.beta)
    return max(b + c, b + c * (b + c))


def float_mode_growth(p: RevLIFParams, T: int) -> float:
    """Predicted amplification of per-step float rounding in the reconstructed initial state after ``T`` steps.

    Without spike flips, the inverse of one step multiplies a state error (max norm) by at most
    ``L = max((1 + c) / |beta|, (1 + c (1 + c) / |beta|) / |beta|)`` with ``c = gamma * (1 - 1/tau)``
    (``|du/dv|`` of the coupled LIF step), and the forward's state (so the size of each rounding) grows
    by up to ``R = max(1, |beta| + c, |beta| + c (|beta| + c))`` per step (:func:`float_state_growth`).
    An error made at step ``t`` is amplified ``L^t`` on the walk back, so the total is
    ``sum_{t < T} (R L)^t`` roundings (dimensionless; ``inf`` on overflow). Measured float32 errors on digits MLPs are 1-15x below
    ``float32 roundoff * max(1, |v_th|) * growth`` (beta 0.5-1, T 4-32)."""
    c = p.gamma * (1.0 - 1.0 / p.lif.tau)
    b = abs(p.beta)
    L = max((1.0 + c) / b, (1.0 + c * (1.0 + c) / b) / b)
    q = max(1.0, float_state_growth(p)) * L
    if q == 1.0:
        return float(T)
    if T * math.log(q) > 700.0:
        return math.inf
    return (q ** T - 1.0) / (q - 1.0)


def float_mode_refusal(p: RevLIFParams, T: int, dtype: torch.dtype = torch.float32) -> Optional[str]:
    """``None`` when float-mode rounding over ``T`` steps is predicted within :func:`float_mode_tolerance`
    (``roundoff(dtype) * growth <= FLOAT_MODE_TOLERANCE``), else a one-line reason naming ``beta`` (and
    ``gamma``/``tau``), the largest such ``T`` and ``mode='exact'``. Exact mode: always ``None``.

    The prediction takes states of size about ``max(1, |v_threshold|)`` (the scale of
    :func:`float_mode_tolerance`); inputs that drive the state further scale the actual error with
    them, so the backward's own check (and the device runner's) stays the final word."""
    if p.exact:
        return None
    roundoff = _FLOAT32_ROUNDOFF if dtype != torch.float64 else 2.0 ** -53
    if roundoff * float_mode_growth(p, T) <= FLOAT_MODE_TOLERANCE:
        return None
    t_max = 0
    while t_max < T and roundoff * float_mode_growth(p, t_max + 1) <= FLOAT_MODE_TOLERANCE:
        t_max += 1
    return (f"RevLIF mode='float' with beta={p.beta:g} (gamma={p.gamma:g}, tau={p.lif.tau:g}) amplifies float rounding "
            f"about {float_mode_growth(p, 2) - 1:.3g}x per step: over T={T} steps the reconstructed state is predicted "
            f"beyond the tolerance {float_mode_tolerance(p):g} (largest T accepted: {t_max}); use mode='exact' "
            f"(bit-exact at any T), fewer steps or beta closer to 1")


@torch.no_grad()
def torch_forward(xg: torch.Tensor, v0: torch.Tensor, p: RevLIFParams
                  ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Reference forward kernel in PyTorch ops (the contract is in the module docstring).

    ``xg [T, B, n, M]`` grouped input, ``v0 [B, n, M]`` state. Returns ``(y [T, B, n, M], v_T [B, n, M],
    bits [ceil(T/8), B, n, M] uint8 | None, counts [B, n, M] int32 | None)``: packed kept bits in
    exact mode, per-neuron spike counts of the inverse check in float mode."""
    T = xg.shape[0]
    if p.exact:
        xg = quantize_input(xg)
    y = torch.empty_like(xg, memory_format=torch.contiguous_format)
    bits = torch.zeros((packed_steps(T),) + tuple(v0.shape), dtype=torch.uint8, device=xg.device) if p.exact else None
    counts = None if p.exact else torch.zeros(v0.shape, dtype=torch.int32, device=xg.device)
    v = v0
    for t in range(T):
        y[t], v, bit = revlif_step(xg[t], v, p)
        if bit is not None:
            pack_bit(bits, t, bit)
        else:
            counts += (y[t] - p.alpha * xg[t] >= 0.5).to(torch.int32)
    return y, v, bits, counts


@torch.no_grad()
def torch_backward(y: torch.Tensor, v_T: torch.Tensor, bits: Optional[torch.Tensor], grad_y: torch.Tensor,
                   grad_v_T: torch.Tensor, p: RevLIFParams
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Reference single-pass backward kernel in PyTorch ops: walks the state back from ``v_T``.

    ``y, grad_y [T, B, n, M]``, ``v_T, grad_v_T [B, n, M]``, ``bits`` from :func:`torch_forward`.
    Returns ``(grad_x [T, B, n, M], grad_v0 [B, n, M], v0_rec [B, n, M], counts_rec | None)``."""
    T = y.shape[0]
    grad_x = torch.empty_like(grad_y, memory_format=torch.contiguous_format)
    counts = None if p.exact else torch.zeros(v_T.shape, dtype=torch.int32, device=y.device)
    v = v_T
    grad_v = grad_v_T
    for t in range(T - 1, -1, -1):
        bit = unpack_bit(bits, t) if bits is not None else None
        x, v, grad_x[t], grad_v = revlif_step_backward(y[t], v, bit, grad_y[t], grad_v, p)
        if counts is not None:
            counts += (y[t] - p.alpha * x >= 0.5).to(torch.int32)
    return grad_x, grad_v, v, counts


class RevLIFKernels(NamedTuple):
    """A forward/backward kernel pair implementing the contract in the module docstring."""

    name: str
    forward: Callable
    backward: Callable


TORCH_KERNELS = RevLIFKernels("torch", torch_forward, torch_backward)


def _assert_in_graph(v0: torch.Tensor, v0_rec: torch.Tensor, counts: Optional[torch.Tensor],
                     counts_rec: Optional[torch.Tensor], p: RevLIFParams, T: int) -> None:
    """:func:`verify_reconstruction`'s test as ``torch._assert_async`` (it raises when the graph
    runs; the message cannot give the size of the difference)."""
    if p.exact:
        ok = torch.eq(v0_rec, v0).all()
    else:
        ok = torch.le((v0_rec - v0).abs().amax() if v0.numel() else v0.new_zeros(()), float_mode_tolerance(p))
        if counts is not None and counts_rec is not None:
            ok = ok & torch.eq(counts_rec, counts).all()
    torch._assert_async(ok, f"RevLIF {p.mode} mode: the reconstructed initial state differs from the forward's after "
                            f"T={T} steps (ReconstructionError; compiled graph)")


def verify_reconstruction(v0: torch.Tensor, v0_rec: torch.Tensor, counts: Optional[torch.Tensor],
                          counts_rec: Optional[torch.Tensor], p: RevLIFParams, T: int) -> None:
    """Raise :class:`ReconstructionError` if the inverse did not reproduce the forward history.

    Exact mode: the reconstructed initial state must equal ``v0`` (the fresh state, or the caller's
    state on the grid) bit for bit; one ``torch.equal`` over ``[B, C]``, run on every backward. The
    accepted parameters and ``v0`` provably keep the state in the exact range (see
    :func:`~edgesnn.functional.revlif.exact_state_bounds`), so a mismatch means the saved tensors
    changed after the forward or a kernel bug. Float mode: within ``FLOAT_MODE_TOLERANCE`` and
    with identical per-neuron spike counts. ``meta`` tensors (shapes only) have nothing to compare.
    """
    if v0.device.type == "meta":
        return
    if not eager():  # compiled: the same test as a graph op (a Python branch on a value breaks the graph)
        _assert_in_graph(v0, v0_rec, counts, counts_rec, p, T)
        return
    if p.exact:
        if not torch.equal(v0_rec, v0):
            finite = bool(torch.isfinite(v0_rec).all())
            err = float((v0_rec - v0).abs().nan_to_num(float("inf")).max())
            cause = (
                "the saved output or final state was modified after the forward, or the forward was recomputed "
                "from another initial state (torch.utils.checkpoint around a node carrying its state), or a "
                "kernel bug (please report)"
                if finite else "a non-finite value reached the saved output or final state"
            )
            raise ReconstructionError(
                f"RevLIF exact mode: the reconstructed initial state differs from the forward's by {err:.3g} after "
                f"T={T} steps; {cause}"
            )
        return
    err = float((v0_rec - v0).abs().max()) if v0.numel() else 0.0
    flips = int((counts_rec != counts).sum())
    if flips or not err <= float_mode_tolerance(p):
        why = float_mode_refusal(p, T, v0.dtype)
        raise ReconstructionError(
            f"RevLIF float mode: the inverse did not reproduce the forward over T={T} steps (initial-state "
            f"error {err:.3g}, tolerance {float_mode_tolerance(p):g}, {flips} neuron(s) with a different spike count); "
            + (why + ("; or float64 inputs" if v0.dtype != torch.float64 else "") if why
               else f"use {_float_mode_remedy(v0.dtype)}")
        )


def _float_mode_remedy(dtype: torch.dtype) -> str:
    """What to try after a float-mode reconstruction failure (float64 only if not already used)."""
    return "mode='exact' or fewer steps" if dtype == torch.float64 else "mode='exact', float64 or fewer steps"


def _revlif_forward(x_seq: torch.Tensor, v0: Optional[torch.Tensor], p: RevLIFParams, kernels: RevLIFKernels
                    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``(y_seq [T, B, C, ...], v_T [B, C, ...], bits, counts, kept_v0)`` from ``x_seq [T, B, C, ...]`` and
    ``v0`` (``None``: fresh state): the outputs and what the backward needs besides them, the packed
    halving bits (exact mode) or spike counts (float mode) and a given ``v0`` (``None`` where unused)."""
    xg = to_groups(x_seq, p.groups)
    if v0 is None:
        v0g = revlif_initial_state(xg[0], p)
    else:
        v0g = to_groups(v0, p.groups, 1, "v0")
        v0g = to_grid(v0g) if p.exact else v0g.clone()
    y, v_T, bits, counts = kernels.forward(xg, v0g, p)
    # A given initial state (on the grid in exact mode: a copy made above) is kept to verify the
    # inverse against it, bit for bit in exact mode ([B, C], like v_T: memory still O(1) in T);
    # a fresh state is a constant and is rebuilt in backward.
    kept_v0 = v0g if v0 is not None else None
    return from_groups(y, x_seq.shape), from_groups(v_T, x_seq.shape[1:]), bits, counts, kept_v0


class RevLIFFunction(torch.autograd.Function):
    """Autograd node of RevLIF; see the module docstring for what it saves."""

    @staticmethod
    def forward(
        ctx: Any, x_seq: torch.Tensor, v0: Optional[torch.Tensor], p: RevLIFParams, kernels: RevLIFKernels
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(y_seq [T, B, C, ...], v_T [B, C, ...])`` from ``x_seq [T, B, C, ...]`` and ``v0`` (``None``:
        fresh state); saves the outputs, the packed halving bits (exact mode) or spike counts (float
        mode) and a given ``v0``, not ``x_seq``."""
        y_out, v_T_out, bits, counts, kept_v0 = _revlif_forward(x_seq, v0, p, kernels)
        ctx.save_for_backward(y_out, v_T_out, bits, counts, kept_v0)
        ctx.meta = (p, kernels, x_seq.shape, v0 is not None)
        return y_out, v_T_out

    @staticmethod
    def backward(
        ctx: Any, grad_y_out: Optional[torch.Tensor], grad_v_T_out: Optional[torch.Tensor]
    ) -> Tuple[Optional[torch.Tensor], ...]:
        """``(grad_x [T, B, C, ...], grad_v0 [B, C, ...] or None, None, None)``: reconstructs the states
        backward in time from ``y_seq`` and ``v_T`` and verifies the initial state it reaches."""
        refuse_batched((grad_y_out, grad_v_T_out), "RevLIF", ctx.meta[1].name)  # (jacrev: the loop would mix the batch in)
        # the kernels reconstruct and differentiate without a graph: a second backward through it raises
        saved = ctx.saved_tensors  # (once: torch.utils.checkpoint allows one unpack)
        with torch.no_grad():
            grads = RevLIFFunction._grads(ctx, saved, grad_y_out, grad_v_T_out)
        anchors = (grad_y_out, grad_v_T_out, *saved[:2])  # (y, v_T: outputs, whose graph leads to x_seq)
        return first_order_only(grads, "RevLIF", ctx.meta[1].name, anchors) + (None, None)

    @staticmethod
    def _grads(ctx, saved, grad_y_out, grad_v_T_out):
        p, kernels, shape, given_v0 = ctx.meta
        y_out, v_T_out, bits, counts, kept_v0 = saved
        bits, counts = (bits, None) if p.exact else (None, counts)  # (the other: None, or the transforms' placeholder)
        y = to_groups(y_out, p.groups)
        v_T = to_groups(v_T_out, p.groups, 1, "v_T")
        grad_y = torch.zeros_like(y) if grad_y_out is None else to_groups(grad_y_out.contiguous(), p.groups)
        grad_v_T = torch.zeros_like(v_T) if grad_v_T_out is None else to_groups(grad_v_T_out.contiguous(), p.groups, 1, "grad_v_T")
        grad_x, grad_v0, v0_rec, counts_rec = kernels.backward(y, v_T, bits, grad_y, grad_v_T, p)
        v0 = kept_v0 if given_v0 else revlif_initial_state(v0_rec, p)
        verify_reconstruction(v0, v0_rec, counts, counts_rec, p, shape[0])
        grad_v0_out = from_groups(grad_v0, shape[1:]) if ctx.needs_input_grad[1] else None
        if eager():
            check_finite_grads(
                "RevLIF", [("the layer input x_seq", grad_x), ("the initial state v0", grad_v0_out)],
                [("grad of y_seq", grad_y), ("grad of v_T", grad_v_T)],
            )
        return from_groups(grad_x, shape), grad_v0_out


class RevLIFFunctionInTransforms(torch.autograd.Function):
    """:class:`RevLIFFunction` in the form ``torch.func`` transforms accept (``forward`` without ``ctx``,
    ``setup_context`` apart; what is saved besides the outputs is returned as further,
    non-differentiable outputs, an empty tensor where a call has none). Used only inside a transform:
    ``torch.compile`` of PyTorch 2.5 traces only the classic form."""

    @staticmethod
    def forward(x_seq: torch.Tensor, v0: Optional[torch.Tensor], p: RevLIFParams,
                kernels: RevLIFKernels) -> Tuple[torch.Tensor, ...]:
        """``(y_seq [T, B, C, ...], v_T [B, C, ...], bits, counts, kept_v0)`` as :func:`_revlif_forward`
        returns them, an empty tensor (shape ``[0]``) for each ``None``."""
        return tuple(t if t is not None else x_seq.new_empty(0) for t in _revlif_forward(x_seq, v0, p, kernels))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        """Save the five :meth:`forward` outputs on ``ctx`` (the last three non-differentiable)."""
        x_seq, v0, p, kernels = inputs
        y_out, v_T_out, bits, counts, kept_v0 = output
        ctx.save_for_backward(y_out, v_T_out, bits, counts, kept_v0)
        ctx.mark_non_differentiable(bits, counts, kept_v0)
        ctx.set_materialize_grads(False)  # (_grads fills a gradient that is None)
        ctx.meta = (p, kernels, x_seq.shape, v0 is not None)

    @staticmethod
    def backward(ctx: Any, grad_y_out: Optional[torch.Tensor], grad_v_T_out: Optional[torch.Tensor],
                 *_unused: Any) -> Tuple[Optional[torch.Tensor], ...]:
        """As :meth:`RevLIFFunction.backward`: ``(grad_x [T, B, C, ...], grad_v0 [B, C, ...] or None, None, None)``."""
        return RevLIFFunction.backward(ctx, grad_y_out, grad_v_T_out)


def revlif_multistep(
    x_seq: torch.Tensor,
    p: RevLIFParams,
    v0: Optional[torch.Tensor] = None,
    kernels: RevLIFKernels = TORCH_KERNELS,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """RevLIF over time, memory O(1) in T for autograd; same values as the oracle.

    Args:
        x_seq: input ``[T, B, C, ...]`` or ``[T, B, N]`` (float32 or float64); ``C`` divisible by
            ``p.groups``.
        p: node parameters.
        v0: initial state ``[B, C, ...]``; ``None`` starts from ``v_reset``.
        kernels: the forward/backward loop implementation (default: PyTorch reference).

    Returns:
        ``(y_seq, v_T)``: real-valued outputs ``[T, B, ...]`` and the final state ``[B, ...]``.
    """
    check_sequence(x_seq, dtypes=(torch.float32, torch.float64))
    check_state(v0, x_seq)
    check_params(p, RevLIFParams, "RevLIFParams")
    if not isinstance(kernels, RevLIFKernels):
        raise TypeError(f"kernels: expected a RevLIFKernels (e.g. TORCH_KERNELS; a node picks its backend by "
                        f"RevLIF(backend=...)), got {kernels!r:.80}")
    check_groups(x_seq, p.groups)  # before any work
    if eager():
        check_finite_input(x_seq, "x_seq", "RevLIF")
        if v0 is not None:
            check_finite_input(v0, "v0", "RevLIF")
            if p.exact:
                check_exact_state(to_grid(to_groups(v0.detach(), p.groups, 1, "v0")), p)
    if eager() and func_transform_depth():
        return tuple(RevLIFFunctionInTransforms.apply(x_seq, v0, p, kernels)[:2])
    return RevLIFFunction.apply(x_seq, v0, p, kernels)
