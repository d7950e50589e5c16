"""``checkpoint_over_time``: a model's own per-time-step code, run a few time steps at a time and
recomputed the same way in backward.

:func:`~edgesnn.memopt.optimize.optimize_memory` rewrites the layers it knows (convolution, linear,
BatchNorm, pooling, LIF/RevLIF nodes). Code of the model's own between them, such as a spiking
self-attention's matrix products and head reshapes, stays plain, and autograd keeps its
intermediates for all T: in a Spikformer-style model (2 blocks, 64 channels, 4 heads, batch 8,
T = 16) that was 83% of what the optimized model saved. Wrapped in :func:`checkpoint_over_time`,
such code keeps only its inputs (1 bit per element when they hold spikes) and never builds more
than ``chunk`` time steps of its intermediates, in forward or in backward.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..functional.checks import autocast_on, check_flag, check_int, eager
from ..functional.second_order import func_transform_depth
from .forward_state import ForwardState, as_in_forward, capture
from .packing import SavedInput, _version, is_time_invariant, save_input

__all__ = ["checkpoint_over_time"]


def checkpoint_over_time(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor, chunk: int = 1,
                         check: bool = True) -> torch.Tensor:
    """``fn(*inputs)`` computed ``chunk`` time steps at a time; backward recomputes each chunk.

    Args:
        fn: a function of ``[k, ...]`` tensors (steps ``t0:t0+k`` of every input) returning one
            ``[k, ...]`` tensor, that treats every time step on its own: no state carried over T,
            no operation across dim 0, no random numbers (Dropout), no BatchNorm in training mode,
            no spiking node (in any mode), no in-place change of its inputs. An ``nn.Module`` gets
            its parameters' gradients (recomputed in its forward's train/eval mode); other tensors
            it uses must not need a gradient. As with ``torch.utils.checkpoint``, ``fn`` itself runs
            again in backward: module hooks it calls, including ones registered after the forward,
            run again there.
        inputs: tensors ``[T, ...]`` with the same T (dim 0). Floating inputs that hold only 0 and
            1 (spikes; not -0.0) are kept for backward as 1 bit per element, an input repeated over T as a
            view (``expand``) once, any other as it is (a reference, not a copy).
        chunk: time steps per call of ``fn`` (>= 1): the intermediates of ``chunk`` steps are
            alive at a time.
        check: compare ``fn`` on ``2 * chunk`` steps at once (the last two whole chunks; all T
            when T < 2 * chunk) with its chunks (one line error when they differ: ``fn`` mixes time
            steps); costs ``min(T, 2 * chunk)`` steps of forward.

    Returns:
        ``[T, ...]``: what ``fn(*inputs)`` returns, gradients included (``fn``'s parameters
        accumulate theirs as usual). Under tracing, compiling, ONNX export or fake tensors (the
        shape trace of ``optimize_memory``) it is ``fn(*inputs)`` itself.

    Raises:
        ValueError: one line naming ``fn``, ``inputs`` or ``chunk`` and what was expected.
        RuntimeError: in backward, when ``fn``'s parameters or buffers (or an input kept as it is)
            changed in place since the forward, for a second backward, or for ``create_graph=True``;
            inside a ``torch.func`` transform, at once.
    """
    chunk = check_int(chunk, "chunk", 1)
    check = check_flag(check, "check")  # (None or 0.0 switched the time-mixing check off without a word)
    if not callable(fn):
        raise ValueError(f"fn: expected a function or module of [k, ...] tensors, got {type(fn).__name__}")
    T = _check_inputs(inputs)
    if T == 0 or not eager() or any(_is_fake(x) for x in inputs):
        return fn(*inputs)
    if autocast_on(inputs[0]):
        raise ValueError("fn: checkpoint_over_time does not run under torch.autocast (its recomputation would not "
                         "see it); cast the inputs and fn instead")
    if func_transform_depth():
        raise RuntimeError("checkpoint_over_time: torch.func transforms (grad, vjp, vmap, jvp, ...) are not supported "
                           "(its backward recomputes fn under plain autograd); call fn itself inside the transform")
    if isinstance(fn, nn.Module):
        _refuse_per_run_layers(fn)
    params = _trainable_parameters(fn)
    if not torch.is_grad_enabled() or not any(x.requires_grad for x in (*inputs, *params)):
        return _chunked_forward(fn, inputs, T, chunk, check, probe_grad=torch.is_grad_enabled())
    return _OverTime.apply(fn, chunk, check, len(inputs), *inputs, *params)


def _check_inputs(inputs: Sequence[torch.Tensor]) -> int:
    if not inputs:
        raise ValueError("inputs: expected at least one [T, ...] tensor")
    for i, x in enumerate(inputs):
        if not isinstance(x, torch.Tensor) or x.dim() < 1:
            raise ValueError(f"inputs[{i}]: expected a [T, ...] tensor, got {type(x).__name__ if not isinstance(x, torch.Tensor) else 'a 0-d tensor'}")
    T = inputs[0].shape[0]
    bad = next((i for i, x in enumerate(inputs) if x.shape[0] != T), None)
    if bad is not None:
        raise ValueError(f"inputs[{bad}]: expected T = {T} time steps (dim 0) like inputs[0], got {inputs[bad].shape[0]}")
    return T


def _is_fake(x: torch.Tensor) -> bool:
    if x.device.type == "meta":
        return True
    try:
        from torch._subclasses.fake_tensor import is_fake
    except ImportError:  # pragma: no cover - every supported PyTorch has it
        return False
    return bool(is_fake(x))


def _trainable_parameters(fn: Callable[..., torch.Tensor]) -> Tuple[torch.Tensor, ...]:
    return tuple(p for p in fn.parameters() if p.requires_grad) if isinstance(fn, nn.Module) else ()


def _refuse_per_run_layers(fn: nn.Module) -> None:
    """A module whose result depends on the whole run (a spiking node in any mode, BatchNorm in
    training mode) or on the random stream (Dropout in training mode)."""
    from .report import spiking_node

    for name, m in fn.named_modules():
        where = f"fn's {type(m).__name__} at '{name}'" if name else f"fn ({type(m).__name__})"
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            raise ValueError(f"{where}: BatchNorm in training mode normalises over every time step; "
                             "keep it outside checkpoint_over_time (optimize_memory chunks it exactly)")
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0:
            raise ValueError(f"{where}: a recomputation would draw a new Dropout mask; keep it outside checkpoint_over_time")
        if spiking_node(m) or (type(m).__module__.startswith("spikingjelly") and type(m).__name__.endswith("Node")):
            raise ValueError(f"{where}: a spiking node carries its state over T; keep it outside checkpoint_over_time "
                             "(optimize_memory handles nodes)")


def _rng_states(device: torch.device) -> List[torch.Tensor]:
    states = [torch.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return states


def _chunked_forward(fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], T: int, chunk: int,
                     check: bool, probe_grad: bool = False) -> torch.Tensor:
    """``fn`` over ``[t0:t0+chunk]`` of every input in turn, into one ``[T, ...]`` output. With
    ``probe_grad`` the first chunk runs under autograd on inputs (and an ``nn.Module``'s own
    parameters) without gradients: an output that needs one comes from tensors ``fn`` closes over."""
    rng = _rng_states(inputs[0].device)
    versions = [_version(x) for x in inputs]
    out: Optional[torch.Tensor] = None
    for t0 in range(0, T, chunk):
        t1 = min(t0 + chunk, T)
        with torch.set_grad_enabled(probe_grad and t0 == 0):
            y = _call_detached(fn, [x[t0:t1].detach() for x in inputs], probe_grad and t0 == 0)
        _refuse_input_changes(inputs, versions)
        if isinstance(y, torch.Tensor) and y.requires_grad:
            raise ValueError("fn: uses tensors that need a gradient other than its inputs and its own parameters (a "
                             "module it closes over?); pass an nn.Module holding them as fn, or their gradients "
                             "would be lost")
        if not isinstance(y, torch.Tensor) or y.dim() < 1 or y.shape[0] != t1 - t0 or (
                out is not None and y.shape[1:] != out.shape[1:]):
            got = f"shape {list(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"fn: expected one [k, ...] tensor for a chunk of k = {t1 - t0} time steps "
                             f"(the same [...] for every chunk), got {got}")
        if out is None:
            out = y.new_empty((T, *y.shape[1:]))
        out[t0:t1] = y
        del y
    if any(not torch.equal(a, b) for a, b in zip(rng, _rng_states(inputs[0].device))):
        raise ValueError("fn: draws random numbers (Dropout?); a recomputation would draw others: keep that part "
                         "outside checkpoint_over_time")
    assert out is not None
    if check and T > chunk:
        _check_window(fn, inputs, out, T, chunk)
        _refuse_input_changes(inputs, versions)
    return out


def _call_detached(fn: Callable[..., torch.Tensor], xs: List[torch.Tensor], probe: bool) -> torch.Tensor:
    """``fn(*xs)``; for a probe of an ``nn.Module``, with its parameters detached (only tensors it
    closes over can then make the output need a gradient)."""
    if probe and isinstance(fn, nn.Module):
        detached = {name: p.detach() for name, p in fn.named_parameters()}
        return torch.func.functional_call(fn, detached, tuple(xs))
    return fn(*xs)


def _refuse_input_changes(inputs: Sequence[torch.Tensor], versions: List[Optional[int]]) -> None:
    """One line error when ``fn`` modified an input in place (its recomputation would see other values)."""
    for i, (x, v) in enumerate(zip(inputs, versions)):
        if v is not None and x._version != v:
            raise ValueError(f"fn: modifies inputs[{i}] in place (e.g. mul_); its chunks and their recomputation "
                             "would see other values: use the out-of-place operation (mul)")


def _check_window(fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], out: torch.Tensor, T: int,
                  chunk: int) -> None:
    """``fn`` on ``min(T, 2 * chunk)`` steps at once against ``out``'s chunks there: the last two
    whole chunks (a spiking run's first steps are often silent and would hide a mixing ``fn``)."""
    t0 = chunk * ((T - 2 * chunk) // chunk) if T >= 2 * chunk else 0
    t1 = min(t0 + 2 * chunk, T)
    whole, parts = fn(*(x[t0:t1].detach() for x in inputs)), out[t0:t1]
    if not isinstance(whole, torch.Tensor) or whole.shape != parts.shape or not _close(whole, parts):
        raise ValueError(f"fn: gives other values on {t1 - t0} time steps at once than in chunks of {chunk}: it "
                         "mixes time steps (an operation across dim 0, state carried over T, BatchNorm in training "
                         "mode?); checkpoint_over_time needs a function of each time step on its own")


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to rounding: a batched product over 2 chunks may round unlike 2 calls (tolerance
    relative to the largest magnitude, at least 8 units in the last place of the dtype).

    ``torch.allclose`` with ``atol = rtol * max|b|`` (finite values of ``b``), decided first by
    ``max |a - b| <= atol`` where that holds (it implies every element is close; a NaN or Inf in
    ``a - b`` fails it): 3 passes over the data instead of about 10."""
    if not a.is_floating_point():
        return torch.equal(a, b)
    if not b.numel():
        return True
    rtol = max(1e-4, 8 * torch.finfo(a.dtype).eps)
    finite = b.detach().abs().nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)  # an Inf or NaN would void the tolerance
    atol = rtol * max(float(finite.amax()), 1e-30)
    del finite
    if a.dtype == b.dtype and float((a.detach() - b.detach()).abs_().amax()) <= atol:
        return True
    return torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True)


#: the integer dtype of the same size as each floating dtype (its bits compared exactly)
_BITS_AS_INT = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
                torch.float64: torch.int64}
#: the bits of 1.0 in each of them (+0.0 is all zero bits)
_ONE_BITS = {dtype: int(torch.ones((), dtype=dtype).view(int_dtype)) for dtype, int_dtype in _BITS_AS_INT.items()}
#: elements compared at a time on a CPU (whole time steps; small temporaries, stops at the first
#: slice that is not 0/1)
_CODEC_SLICE = 1 << 16


def _codec(x: torch.Tensor) -> str:
    """``bits`` for a floating tensor of 0s and 1s (kept exactly at 1 bit per element), else ``dense``
    (also for -0.0, which unpacks as +0.0 and can change ``fn``: ``1 / x``, ``copysign``).

    Tested on the bit patterns: every element is the pattern of +0.0 (all zero) or of 1.0 (each
    has one encoding), two comparisons per element instead of five value operations."""
    if not x.is_floating_point() or not x.numel():
        return "dense"
    if x.dtype not in _BITS_AS_INT:  # (float8 types: as values)
        return "bits" if bool(((x == 1) | ((x == 0) & ~torch.signbit(x))).all()) else "dense"
    xi = x.detach().view(_BITS_AS_INT[x.dtype])
    one = _ONE_BITS[x.dtype]
    # steps per slice: on a CPU about _CODEC_SLICE elements; elsewhere all (one device sync per call)
    k = max(1, _CODEC_SLICE // (x.numel() // x.shape[0])) if x.device.type == "cpu" else x.shape[0]
    for t0 in range(0, x.shape[0], k):
        part = xi[t0:t0 + k]
        ok = part == 0
        ok |= part == one
        if not bool(ok.all()):
            return "dense"
    return "bits"


def _module_state(fn: Callable[..., torch.Tensor]) -> ForwardState:
    """What an ``nn.Module`` ``fn``'s recomputation depends on besides its inputs: each submodule's
    training flag, and each parameter's and buffer's version (nothing for a plain function)."""
    modules = [("", fn)] if isinstance(fn, nn.Module) else []
    return capture(modules, "checkpoint_over_time recomputes fn in backward", all_buffers=True)


#: dtypes whose chunk gradients are summed in float32 (:meth:`_OverTime._recompute`)
_LOW_PRECISION = (torch.float16, torch.bfloat16)


class _OverTime(torch.autograd.Function):
    """Forward: :func:`_chunked_forward` with the inputs saved compactly. Backward: per chunk,
    unpack the inputs, run ``fn`` again under autograd and take the input and parameter gradients."""

    @staticmethod
    def forward(ctx, fn, chunk, check, n_inputs, *tensors):  # type: ignore[override]
        inputs, params = tensors[:n_inputs], tensors[n_inputs:]
        T = inputs[0].shape[0]
        out = _chunked_forward(fn, inputs, T, chunk, check, probe_grad=True)
        ctx.fn, ctx.chunk, ctx.T, ctx.params = fn, chunk, T, params
        # an input repeated over T is kept once whatever its codec: not scanned
        ctx.saved = [save_input(x, "dense" if is_time_invariant(x) else _codec(x)) for x in inputs]
        ctx.state = _module_state(fn)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        saved: List[SavedInput] = ctx.saved
        if saved is None:
            raise RuntimeError("checkpoint_over_time: backward ran twice; pass retain_graph=False or call the function again")
        if torch.is_grad_enabled():
            raise RuntimeError("checkpoint_over_time: no double backward (create_graph=True): its gradients would "
                               "miss their own gradients; call fn plainly there")
        for s in saved:
            s.check_unmodified()
        with as_in_forward(ctx.state, "fn"):
            return _OverTime._recompute(ctx, saved, grad_out)

    @staticmethod
    def _recompute(ctx, saved: List[SavedInput], grad_out: torch.Tensor) -> tuple:
        """Per chunk: ``fn`` again under autograd, the input and parameter gradients of ``grad_out``."""
        n = len(saved)
        need_in = ctx.needs_input_grad[4:4 + n]
        need_p = ctx.needs_input_grad[4 + n:]
        params = [p for p, need in zip(ctx.params, need_p) if need]
        grads_in = [torch.zeros(s.shape, dtype=s.dtype, device=s.data.device) if need else None
                    for s, need in zip(saved, need_in)]
        grads_p: List[Optional[torch.Tensor]] = [None] * len(params)
        for t0 in range(0, ctx.T, ctx.chunk):
            t1 = min(t0 + ctx.chunk, ctx.T)
            xs = [s.chunk(t0, t1).detach().requires_grad_(need) for s, need in zip(saved, need_in)]
            with torch.enable_grad():
                y = ctx.fn(*xs)
            if not y.requires_grad:  # this chunk's output uses no parameter or input that needs a gradient
                continue
            wanted = [x for x, need in zip(xs, need_in) if need] + params
            gs = torch.autograd.grad(y, wanted, grad_out[t0:t1], allow_unused=True)
            it = iter(gs)
            for g_all, need in zip(grads_in, need_in):
                if need:
                    g = next(it)
                    if g is not None:
                        g_all[t0:t1] = g
            for j in range(len(params)):
                g = next(it)
                if g is not None:  # summed in float32 at least: a float16 / bfloat16 sum over the chunks
                    g = g.float() if g.dtype in _LOW_PRECISION else g  # erred 3-5x more than one backward
                    grads_p[j] = g if grads_p[j] is None else grads_p[j] + g
            del xs, y, gs
        ctx.saved = None
        grads_p = [g.to(p.dtype) if g is not None else None for g, p in zip(grads_p, params)]
        it_p = iter(grads_p)
        out_p = [next(it_p) if need else None for need in need_p]
        return (None, None, None, None, *grads_in, *out_p)
