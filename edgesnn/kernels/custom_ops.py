"""The fused kernels as ``torch.library.custom_op`` s, so models using them compile with
``torch.compile(fullgraph=True)`` (a bare ``autograd.Function`` calling Numba breaks the graph).

Ops (``backend`` is ``"numba"`` or ``"cuda"``; node parameters travel as plain numbers):

* ``edgesnn::lif_fwd(x, v0, ...) -> (s, v_T)`` and ``edgesnn::lif_bwd(x, v0, grad_s, grad_v_T, ...) -> (grad_x, grad_v0)``
  (the backward recomputes ``h`` from the saved input)
* ``edgesnn::revlif_fwd(xg, v0, ...) -> (y, v_T, bits, counts)`` and
  ``edgesnn::revlif_bwd(y, v_T, bits, counts, v0, grad_y, grad_v_T, ...) -> (grad_x, grad_v0)``;
  the backward op also verifies the reconstruction (inside the op, where data-dependent checks are
  allowed) and raises :class:`~edgesnn.functional.revlif.ReconstructionError`.
* every forward op rejects NaN/Inf inputs (:class:`~edgesnn.functional.checks.NonFiniteInputError`)
  and every backward op rejects NaN/Inf gradients
  (:class:`~edgesnn.functional.checks.NonFiniteGradientError`). The CPU kernels check inside
  themselves (a per-lane ``a - a`` sum in the loops that read the input or write the gradient: no extra pass; the
  ``aminmax`` scans run only on a failure, to name the culprit); the CUDA path scans with one ``aminmax`` each. Inside
  a CUDA graph capture the data-dependent checks are skipped (no host reads of GPU values: :func:`_capturing`).

``register_fake`` gives shapes for tracing; ``register_autograd`` wires each forward op to its
backward op (which is itself a custom op, so the compiled backward graph calls it too).

Unused tensors (``bits`` in float mode, ``counts`` in exact mode, ``v0`` with nothing to verify): 1-element placeholders.

Eager calls (no tracing, scripting, ONNX export or ``torch.compile``) skip the custom-op
dispatch: :func:`lif_apply` and :func:`revlif_apply` run the very same forward, setup, backward and
check functions through a plain ``autograd.Function``. The op layers (schema defaults, dispatch keys, the dynamo guard around
each implementation) cost ~150 us per RevLIF training step, measurable against a ~5 ms kernel step.
"""

# No ``from __future__ import annotations``: torch < 2.6 ``infer_schema`` reads the annotations of
# the ops as objects and rejects them as strings ("Unsupported type annotation Tuple[Tensor, Tensor]").
import contextlib
import functools
import logging
import math
from typing import Tuple, Union

import torch
from torch import Tensor

from ..functional.checks import all_finite, check_finite_grads, check_finite_input, eager
from ..functional.grid import packed_steps
from ..functional.lif import LIFParams
from ..functional.revlif import RevLIFParams, check_exact_state, revlif_initial_state
from ..functional.revlif_autograd import verify_reconstruction
from ..functional.second_order import first_order_only, vmap_refused
from ..functional.surrogate import ATan, Sigmoid
from .func_transforms import outside_transforms

__all__ = ["lif_apply", "revlif_apply", "lif_fwd", "lif_bwd", "revlif_fwd", "revlif_bwd", "lif_params_args",
           "revlif_params_args", "state_copy"]

# torch warns "Triton not available" once per registered op on machines without Triton (every
# CPU install); these ops use no Triton, so that warning is noise for edgesnn users. Quiet while
# this module registers its ops only: the level is the user's again at the end of the module.
_TRITON_LOG = logging.getLogger("torch._library.triton")
_TRITON_LEVEL = _TRITON_LOG.level
_TRITON_LOG.setLevel(logging.ERROR)


def _impl(backend: str):
    if backend == "numba":
        from . import numba_cpu as mod
    elif backend == "cuda":
        from . import cuda_kernels as mod
    else:
        raise ValueError(f"backend: expected 'numba' or 'cuda', got {backend!r}")
    return mod


def _params_once(build, args: tuple):
    """``build(*args)``, built (and validated) once per distinct ``args`` and then reused.

    The ops receive a node's parameters as plain numbers; building and validating the dataclasses
    from them took ~10 us per call, two calls per training step (a tenth of a small layer's step).
    Floats are keyed with their sign too, so ``-0.0`` and ``0.0`` get their own objects. An invalid
    tuple raises every time (nothing is stored)."""
    return _built(build, tuple(math.copysign(1.0, a) if type(a) is float else None for a in args), args)


@functools.lru_cache(maxsize=64)
def _built(build, signs: tuple, args: tuple):
    """:func:`_params_once`'s cache: ``signs`` keeps ``-0.0`` and ``0.0`` apart (they compare equal)."""
    return build(*args)


def _build_lif(tau, v_th, v_reset, hard, decay_input, detach, sg_kind, sg_alpha) -> LIFParams:
    sg = Sigmoid(sg_alpha) if sg_kind == "sigmoid" else ATan(sg_alpha)
    return LIFParams(tau, v_th, v_reset if hard else None, decay_input, detach, sg)


def _lif(*args) -> LIFParams:
    """The ``LIFParams`` of the ops' ``(tau, v_th, v_reset, hard, decay_input, detach, sg_kind, sg_alpha)``."""
    return _params_once(_build_lif, args)


def lif_params_args(p: LIFParams) -> tuple:
    """``(tau, v_th, v_reset, hard, decay_input, detach, sg_kind, sg_alpha)`` for the ops."""
    if type(p.surrogate) not in (Sigmoid, ATan):  # by exact type: a subclass may override grad
        raise TypeError(
            f"surrogate: the fused kernels implement exactly Sigmoid and ATan, got {type(p.surrogate).__name__}; "
            f"use backend='torch'"
        )
    return (p.tau, p.v_threshold, p.charge_reset, p.hard_reset, p.decay_input, p.detach_reset,
            p.surrogate.name, float(p.surrogate.alpha))


def revlif_params_args(p: RevLIFParams) -> tuple:
    """``lif_params_args(p.lif) + (alpha, beta, gamma, exact)``."""
    return lif_params_args(p.lif) + (p.alpha, p.beta, p.gamma, p.exact)


def _build_rev(tau, v_th, v_reset, hard, decay_input, detach, sg_kind, sg_alpha, alpha, beta, gamma, exact,
               groups) -> RevLIFParams:
    return RevLIFParams(_lif(tau, v_th, v_reset, hard, decay_input, detach, sg_kind, sg_alpha), groups, alpha, beta, gamma,
                        "exact" if exact else "float")


def _rev(*args) -> RevLIFParams:
    """The ``RevLIFParams`` of the ops' ``lif_params_args + (alpha, beta, gamma, exact, groups)``."""
    return _params_once(_build_rev, args)


def _capturing(t: Tensor) -> bool:
    """``True`` while ``t``'s CUDA stream is being captured into a CUDA graph. The data-dependent
    checks (NaN/Inf scans, the RevLIF reconstruction check) read a GPU value on the host, which a
    capture does not allow (and a replay would not repeat): they are skipped inside a capture; the
    kernels themselves are captured like any other launch."""
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def _no_graph():
    """``no_grad`` inside a ``create_graph=True`` backward (the kernels build no graph; the
    custom backward ops have no autograd formula), a no-op otherwise (nothing to trace)."""
    return torch.no_grad() if torch.is_grad_enabled() else contextlib.nullcontext()


def _grad_in(g: Tensor) -> Tensor:
    """An incoming per-step gradient: kept as it is when it is constant along time (stride 0 on
    dim 0; the CPU wrappers read its first step, the CUDA ones make it contiguous), else made contiguous."""
    if g.dim() >= 1 and g.shape[0] > 1 and g.stride(0) == 0:
        return g
    return g.contiguous()


# ----------------------------------------------------------------------------- LIF


def _lif_fwd_impl(x: Tensor, v0: Tensor, tau: float, v_th: float, v_reset: float, hard: bool, decay_input: bool,
                  detach: bool, sg_kind: str, sg_alpha: float, backend: str) -> Tuple[Tensor, Tensor]:
    p = _lif(tau, v_th, v_reset, hard, decay_input, detach, sg_kind, sg_alpha)
    if backend == "numba":  # the kernel checks while it reads; the scans below only name the culprit
        fin: list = []
        s, vT = _impl(backend).lif_forward(x, v0, p, finite=fin)
        if fin != [True]:
            check_finite_input(x, "x_seq", "LIF")
            check_finite_input(v0, "v0", "LIF")
        return s, vT
    if not _capturing(x):
        check_finite_input(x, "x_seq", "LIF")
        check_finite_input(v0, "v0", "LIF")
    s, vT = _impl(backend).lif_forward(x, v0, p)
    return s, vT


lif_fwd = torch.library.custom_op("edgesnn::lif_fwd", mutates_args=())(_lif_fwd_impl)


@lif_fwd.register_fake
def _(x, v0, *args):
    return torch.empty_like(x), torch.empty_like(v0)


def _lif_bwd_impl(x: Tensor, v0: Tensor, grad_s: Tensor, grad_vT: Tensor, tau: float, v_th: float, v_reset: float,
                  hard: bool, decay_input: bool, detach: bool, sg_kind: str, sg_alpha: float, backend: str) -> Tuple[Tensor, Tensor]:
    p = _lif(tau, v_th, v_reset, hard, decay_input, detach, sg_kind, sg_alpha)
    if backend == "numba":
        fin: list = []
        gx, gv0 = _impl(backend).lif_backward(x, v0, grad_s, grad_vT, p, finite=fin)
        if fin == [True]:
            return gx, gv0
    else:
        gx, gv0 = _impl(backend).lif_backward(x, v0, grad_s, grad_vT, p)
        if _capturing(gx):
            return gx, gv0
    check_finite_grads("LIF", [("the layer input x_seq", gx), ("the initial state v0", gv0)],
                       [("grad of s_seq", grad_s), ("grad of v_T", grad_vT)])
    return gx, gv0


lif_bwd = torch.library.custom_op("edgesnn::lif_bwd", mutates_args=())(_lif_bwd_impl)


@lif_bwd.register_fake
def _(x, v0, grad_s, grad_vT, *args):
    return torch.empty_like(x), torch.empty_like(grad_vT)


def _lif_setup(ctx, inputs, output):
    x, v0, *params = inputs
    # the backward recomputes h from the input: saving x (1x, like h) costs no extra allocation
    ctx.save_for_backward(x, v0)
    ctx.params = params


def _lif_grads(bwd, ctx, grad_s, grad_vT):
    anchors = (*ctx.saved_tensors, grad_s, grad_vT)  # (also what a second backward reaches: first_order_only)
    with outside_transforms(anchors, "LIF", ctx.params[-1]) as (x, v0, grad_s, grad_vT):
        if grad_s is None:
            grad_s = torch.zeros_like(x)
        if grad_vT is None:
            grad_vT = torch.zeros_like(v0)
        # a gradient that is the same at every step (stride 0 along time, e.g. of ``y.sum()``) goes in
        # as it is: the CPU kernel reads its first step only, instead of a [T, ...] copy
        with _no_graph():
            gx, gv0 = bwd(x, v0, _grad_in(grad_s), grad_vT.contiguous(), *ctx.params)
    # the kernels' gradients carry no graph: a second backward through them raises (not zeros)
    return first_order_only((gx, gv0), "LIF", ctx.params[-1], anchors) + (None,) * 9


def _lif_backward(ctx, grad_s, grad_vT):
    return _lif_grads(lif_bwd, ctx, grad_s, grad_vT)


lif_fwd.register_autograd(_lif_backward, setup_context=_lif_setup)


class _EagerLIF(torch.autograd.Function):
    """:func:`lif_fwd` and its backward without the custom-op dispatch (see :func:`lif_apply`)."""

    # forward and setup_context apart: the form torch.func transforms accept (see func_transforms)
    @staticmethod
    def forward(*inputs):
        return _lif_fwd_impl(*inputs)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _lif_setup(ctx, inputs, output)
        ctx.set_materialize_grads(False)  # an unused v_T gets no zero gradient (the backward makes one)

    @staticmethod
    def backward(ctx, grad_s, grad_vT):
        return _lif_grads(_lif_bwd_impl, ctx, grad_s, grad_vT)

    @staticmethod
    def vmap(info, in_dims, *inputs):
        raise vmap_refused("LIF", inputs[-1])


def lif_apply(x: Tensor, v0: Tensor, *params: Union[float, bool, str]) -> Tuple[Tensor, Tensor]:
    """LIF forward with autograd: the same functions as the custom op :func:`lif_fwd` through a
    plain ``autograd.Function`` in eager calls, the op itself while a graph is being traced,
    scripted, exported or compiled (:func:`~edgesnn.functional.checks.eager`).

    ``x [T, B, ...]``, ``v0 [B, ...]``; ``params``: :func:`lif_params_args` then the
    backend name; returns ``(s [T, B, ...], v_T [B, ...])``."""
    if not eager():
        return lif_fwd(x, v0, *params)
    return _EagerLIF.apply(x, v0, *params)


# ----------------------------------------------------------------------------- RevLIF


def _revlif_fwd_impl(xg: Tensor, v0: Tensor, verify: int, tau: float, v_th: float, v_reset: float, hard: bool,
                     decay_input: bool, detach: bool, sg_kind: str, sg_alpha: float, alpha: float, beta: float, gamma: float,
                     exact: bool, backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """RevLIF forward on grouped ``xg [T, B, n, M]``; ``verify`` tells the backward what to check
    (see :func:`revlif_bwd`). Returns ``(y, v_T, bits, counts)``."""
    p = _rev(tau, v_th, v_reset, hard, decay_input, detach, sg_kind, sg_alpha, alpha, beta, gamma, exact, xg.shape[2])
    fused = backend == "numba"  # the kernel checks x while it reads it
    if _capturing(xg):
        y, vT, bits, counts = _impl(backend).revlif_forward(xg, v0, p)
        return _revlif_placeholders(xg, y, vT, bits, counts)
    if not fused:
        check_finite_input(xg, "x_seq", "RevLIF")
    if verify == 2:  # a caller's state: finite, and within the proven bound in exact mode
        bad = fused and not all_finite(v0)  # fused: the same order of errors as unfused (x_seq, v0, then its bound)
        if bad:
            check_finite_input(xg, "x_seq", "RevLIF")
        if not p.exact and (bad or not fused):  # (exact: check_exact_state names a NaN, and an Inf: a finite
            check_finite_input(v0, "v0", "RevLIF")  # state that overflowed when rounded onto the grid)
        try:
            check_exact_state(v0, p)
        except Exception:
            check_finite_input(xg, "x_seq", "RevLIF")  # (a non-finite x_seq is named first)
            raise
    if fused:
        fin: list = []
        y, vT, bits, counts = _impl(backend).revlif_forward(xg, v0, p, finite=fin)
        if fin != [True]:
            check_finite_input(xg, "x_seq", "RevLIF")
    else:
        y, vT, bits, counts = _impl(backend).revlif_forward(xg, v0, p)
    return _revlif_placeholders(xg, y, vT, bits, counts)


def _revlif_placeholders(xg, y, vT, bits, counts):
    if bits is None:
        bits = torch.zeros((1, 1, 1, 1), dtype=torch.uint8, device=xg.device)
    if counts is None:
        counts = torch.zeros((1, 1, 1), dtype=torch.int32, device=xg.device)
    return y, vT, bits, counts


revlif_fwd = torch.library.custom_op("edgesnn::revlif_fwd", mutates_args=())(_revlif_fwd_impl)


@revlif_fwd.register_fake
def _(xg, v0, verify, tau, v_th, v_reset, hard, decay_input, detach, sg_kind, sg_alpha, alpha, beta, gamma, exact, backend):
    T, B, G, M = xg.shape
    if exact:
        bits = xg.new_empty((packed_steps(T), B, G, M), dtype=torch.uint8)
        counts = xg.new_empty((1, 1, 1), dtype=torch.int32)
    else:
        bits = xg.new_empty((1, 1, 1, 1), dtype=torch.uint8)
        counts = xg.new_empty((B, G, M), dtype=torch.int32)
    return torch.empty_like(xg), torch.empty_like(v0), bits, counts


def _revlif_bwd_impl(y: Tensor, vT: Tensor, bits: Tensor, counts: Tensor, v0: Tensor, verify: int, grad_y: Tensor,
                     grad_vT: Tensor, tau: float, v_th: float, v_reset: float, hard: bool, decay_input: bool, detach: bool,
                     sg_kind: str, sg_alpha: float, alpha: float, beta: float, gamma: float, exact: bool,
                     backend: str) -> Tuple[Tensor, Tensor]:
    """Single-pass inverse + VJP. ``verify``: 0 = nothing to check, 1 = the reconstructed initial
    state must be the fresh state, 2 = it must match ``v0`` (a given state; bit for bit in exact
    mode). Then the gradients are checked for NaN/Inf (:class:`NonFiniteGradientError`)."""
    p = _rev(tau, v_th, v_reset, hard, decay_input, detach, sg_kind, sg_alpha, alpha, beta, gamma, exact, y.shape[2])
    fin: list = []
    kw = {"finite": fin} if backend == "numba" else {}  # the kernel checks each final gradient value
    gx, gv0, v0_rec, counts_rec = _impl(backend).revlif_backward(y, vT, bits if exact else None, grad_y, grad_vT, p, **kw)
    if _capturing(gx):
        return gx, gv0
    if verify:
        ref = revlif_initial_state(v0_rec, p) if verify == 1 else v0
        verify_reconstruction(ref, v0_rec, None if exact else counts, counts_rec, p, y.shape[0])
    if fin == [True]:
        return gx, gv0
    # a fresh initial state (verify 1) is no input of the caller's: its gradient is dropped, not checked
    checked = [("the layer input x_seq", gx)] + ([] if verify == 1 else [("the initial state v0", gv0)])
    check_finite_grads("RevLIF", checked, [("grad of y_seq", grad_y), ("grad of v_T", grad_vT)])
    return gx, gv0


revlif_bwd = torch.library.custom_op("edgesnn::revlif_bwd", mutates_args=())(_revlif_bwd_impl)


@revlif_bwd.register_fake
def _(y, vT, bits, counts, v0, verify, grad_y, grad_vT, *args):
    return torch.empty_like(grad_y), torch.empty_like(grad_vT)


def _revlif_setup(ctx, inputs, output):
    xg, v0, verify, *params = inputs
    y, vT, bits, counts = output
    # a given initial state is kept so that the backward verifies against it (on the grid in exact
    # mode: dispatch passes a fresh copy, so nothing else mutates it)
    ctx.save_for_backward(y, vT, bits, counts, v0 if verify == 2 else None)
    ctx.verify = verify
    ctx.params = params


def _revlif_grads(bwd, ctx, grad_y, grad_vT):
    anchors = (*ctx.saved_tensors, grad_y, grad_vT)  # (also what a second backward reaches: first_order_only)
    with outside_transforms(anchors, "RevLIF", ctx.params[-1]) as plain:
        y, vT, bits, counts, v0, grad_y, grad_vT = plain
        if v0 is None:
            v0 = vT.new_zeros((1, 1, 1))
        if grad_y is None:
            grad_y = torch.zeros_like(y)
        if grad_vT is None:
            grad_vT = torch.zeros_like(vT)
        with _no_graph():
            gx, gv0 = bwd(y, vT, bits, counts, v0, ctx.verify, _grad_in(grad_y), grad_vT.contiguous(), *ctx.params)
    return first_order_only((gx, gv0), "RevLIF", ctx.params[-1], anchors) + (None,) * 14


def _revlif_backward(ctx, grad_y, grad_vT, _grad_bits, _grad_counts):
    return _revlif_grads(revlif_bwd, ctx, grad_y, grad_vT)


revlif_fwd.register_autograd(_revlif_backward, setup_context=_revlif_setup)


class _EagerRevLIF(torch.autograd.Function):
    """:func:`revlif_fwd` and its backward without the custom-op dispatch (see :func:`revlif_apply`)."""

    @staticmethod
    def forward(*inputs):
        return _revlif_fwd_impl(*inputs)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _revlif_setup(ctx, inputs, output)
        ctx.mark_non_differentiable(output[2], output[3])  # bits, counts
        ctx.set_materialize_grads(False)  # no zero gradients for bits, counts (or an unused v_T)

    @staticmethod
    def backward(ctx, grad_y, grad_vT, _grad_bits, _grad_counts):
        return _revlif_grads(_revlif_bwd_impl, ctx, grad_y, grad_vT)

    @staticmethod
    def vmap(info, in_dims, *inputs):
        raise vmap_refused("RevLIF", inputs[-1])


def revlif_apply(xg: Tensor, v0: Tensor, verify: int, *params: Union[float, bool, str]
                 ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """RevLIF forward with autograd: the same functions as the custom op :func:`revlif_fwd` through
    a plain ``autograd.Function`` in eager calls, the op itself while a graph is being traced,
    scripted, exported or compiled (:func:`~edgesnn.functional.checks.eager`).

    Grouped ``xg [T, B, n, M]``, ``v0 [B, n, M]``; ``verify`` as in :func:`revlif_bwd`; ``params``:
    :func:`revlif_params_args` then the backend name. Returns ``(y [T, B, n, M], v_T [B, n, M], bits,
    counts)``: packed bits ``uint8 [ceil(T/8), B, n, M]`` (exact mode) or spike counts ``int32 [B, n, M]``
    (float mode), the unused one a 1-element placeholder."""
    if not eager():
        return revlif_fwd(xg, v0, verify, *params)
    return _EagerRevLIF.apply(xg, v0, verify, *params)


# ----------------------------------------------------------------------------- held state


def _state_copy_impl(v: Tensor) -> Tensor:
    return v.clone()


#: ``v.clone()`` as an op the compiler keeps: a compiled node copies a held state with it, so that a
#: state carried out of ``inference_mode`` (an inference tensor, which autograd cannot save) is not
#: what the LIF ops save. A plain ``clone`` is not enough under inductor: its partitioner saves the
#: graph input instead and recomputes the copy in the backward graph.
state_copy = torch.library.custom_op("edgesnn::state_copy", mutates_args=())(_state_copy_impl)


@state_copy.register_fake
def _(v):
    return torch.empty_like(v)


def _state_copy_backward(ctx, grad):
    return grad


state_copy.register_autograd(_state_copy_backward)


_TRITON_LOG.setLevel(_TRITON_LEVEL)  # (the ops are registered)
