"""Fused multi-step LIF and RevLIF kernels for the CPU (Numba ``njit``, ``parallel=True``).

Shape of every kernel (docs/design.md §3): ``prange`` over blocks of neurons, the time loop inside,
the innermost loop over a contiguous 1-D row slice, no per-call scratch beyond the outputs. The
per-neuron math comes from :mod:`edgesnn.kernels.neuron_math` (shared with the CUDA kernels).

Host wrappers take and return ``torch`` tensors (CPU, float32, zero-copy through ``.numpy()``):

* :func:`lif_forward` / :func:`lif_backward`: LIF over ``[T, K]``; the backward recomputes ``h``
  from the input (autograd keeps the input: 1x, like saving ``h``, with one allocation less).
* :func:`revlif_forward` / :func:`revlif_backward`: the kernel contract of
  :mod:`edgesnn.functional.revlif_autograd` (grouped layout ``[T, B, n, M]``), implemented in
  :mod:`edgesnn.kernels.numba_revlif` and re-exported here; :data:`NUMBA_KERNELS` bundles them.

Per call, beyond the kernel itself (what made the public form slow): large outputs come from
:mod:`edgesnn.kernels.buffers` (pages reused across steps instead of fresh page faults); every
kernel checks for NaN/Inf in the loop that reads its input (forward) or writes its gradients
(backward) and reports per-block flags through the wrappers' ``finite`` list, so the custom ops
need no separate ``aminmax`` pass; a per-step gradient that is the same at every step (stride 0
along time: ``y.sum().backward()``) is read as one ``[1, ...]`` row instead of a ``[T, ...]`` copy.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from .config import configure

configure()  # NUMBA_NUM_THREADS checked, cache folder, EDGESNN_WIDE_VECTORS, fork guard: before any kernel is defined

import numba  # noqa: E402
from numba import njit, prange  # noqa: E402

from ..functional.lif import LIFParams  # noqa: E402
from . import buffers as _buffers  # noqa: E402
from . import neuron_math as nm  # noqa: E402
from .launch import launch  # noqa: E402

__all__ = ["lif_forward", "lif_backward", "revlif_forward", "revlif_backward", "NUMBA_KERNELS", "warmup", "block_size"]

from numba import types  # noqa: E402
from numba.core.extending import intrinsic  # noqa: E402


@intrinsic
def _pow2_f32(typingctx, fn):
    """``2**fn`` (float32) for an integer-valued float32 ``fn`` in [-126, 127], built from the
    exponent bits (``fptosi``, add, shift, bitcast): exact, and it vectorizes (AVX2/AVX-512)."""
    if fn != types.float32:
        return None
    sig = types.float32(types.float32)

    def codegen(context, builder, signature, args):
        from llvmlite import ir

        i32 = ir.IntType(32)
        n = builder.fptosi(args[0], i32)
        e = builder.shl(builder.add(n, ir.Constant(i32, 127)), ir.Constant(i32, 23))
        return builder.bitcast(e, ir.FloatType())

    return sig, codegen


@intrinsic
def _fmuladd(typingctx, a, b, c):
    """``a * b + c`` in float32 as ``llvm.fmuladd``: one fused multiply-add where the core has one
    (x86-64 with FMA, every ARMv8), else a multiply and an add. The kernels compile without
    ``fastmath``, so LLVM never fuses on its own; this is used where a rounding step less is
    harmless (the surrogate's ``exp``, backward only)."""
    if not (a == types.float32 and b == types.float32 and c == types.float32):
        return None

    def codegen(context, builder, signature, args):
        from llvmlite import ir

        from numba.core import cgutils

        f32 = ir.FloatType()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32, f32, f32]), "llvm.fmuladd.f32")
        return builder.call(fn, list(args))

    return types.float32(a, b, c), codegen


def _exp32_cpu(x):
    """:func:`neuron_math.exp32` with the ``2**n`` scale from the exponent bits (exact either way)
    and the range reduction and polynomial as fused multiply-adds: within an ulp of it (both ~1 ulp
    from ``exp``), in about half the instructions (the LIF backward kernel 12% faster)."""
    if x > nm._EXP_HI:
        x = nm._EXP_HI
    if x < -nm._EXP_HI:
        x = -nm._EXP_HI
    fn = _rint(x * nm._LOG2E)
    r = _fmuladd(-fn, nm._LN2_HI, x)
    r = _fmuladd(-fn, nm._LN2_LO, r)
    q = _fmuladd(_fmuladd(_fmuladd(_fmuladd(_fmuladd(nm._P0, r, nm._P1), r, nm._P2), r, nm._P3), r, nm._P4), r, nm._P5)
    q = _fmuladd(q, r * r, r) + nm.ONE
    return q * _pow2_f32(fn)


def _rint_cpu(k):
    """:func:`neuron_math.rint_grid` as one instruction (``np.rint`` -> ``llvm.rint`` -> ``vroundps``):
    round half to even like ``torch.round``, signed zeros included (``rint(-0.3) == -0.0``)."""
    return np.rint(k)


def _floor_cpu(y):
    """:func:`neuron_math.floor_grid` as one instruction (``np.floor``), like ``torch.floor``."""
    return np.floor(y)


_jit_dev = njit(inline="always", error_model="numpy")
_rint = _jit_dev(_rint_cpu)
#: CPU versions of the rounding helpers: the same float32 values as the float-add versions
#: (which CUDA keeps), in 1 instruction instead of ~8; see the functions above.
_dev = nm.compile_all(_jit_dev, overrides={"rint_grid": _rint, "floor_grid": _jit_dev(_floor_cpu),
                                           "exp32": _jit_dev(_exp32_cpu)})
mul = _dev.mul
charge = _dev.charge
fire = _dev.fire
reset = _dev.reset
step_vjp = _dev.step_vjp
step_vjp_from_grad = _dev.step_vjp_from_grad
surrogate_grad = _dev.surrogate_grad
to_grid = _dev.to_grid
quantize_input = _dev.quantize_input
halve = _dev.halve
unhalve = _dev.unhalve
_F0 = np.float32(0.0)



# ----------------------------------------------------------------------------- LIF


# Row loops shared by the LIF kernels here and the fused LIF + pooling kernels
# (:mod:`edgesnn.kernels.numba_lif_pool`): each runs over one block's contiguous slice of ``n``
# neurons and is inlined (so it vectorizes as the loop it replaces did).


@_jit_dev
def lif_start_row(v: np.ndarray, vr0: np.ndarray, F: np.ndarray, n: int) -> None:
    """``v [n] <- vr0 [n]`` (the block's initial state); ``F [n]`` starts as the finite flags of ``vr0``
    (``a - a``: 0, or NaN for NaN/Inf)."""
    for j in range(n):
        a = vr0[j]
        v[j] = a
        F[j] = a - a


@_jit_dev
def lif_step_row(xr: np.ndarray, v: np.ndarray, F: np.ndarray, sr: np.ndarray, n: int, tau: float, v_th: float,
                 v_reset: float, hard: bool, decay_input: bool) -> None:
    """One forward step of ``n`` neurons (rows ``[n]``): charge from ``xr``, spikes into ``sr``, reset ``v``;
    ``F`` gathers ``x - x``. ``tau`` in time steps."""
    for j in range(n):
        xv = xr[j]
        F[j] = F[j] + (xv - xv)
        hh = charge(xv, v[j], tau, v_reset, decay_input)
        ss = fire(hh, v_th)
        sr[j] = ss
        v[j] = reset(hh, ss, v_th, v_reset, hard)


@_jit_dev
def lif_recompute_h(x: np.ndarray, j0: int, v: np.ndarray, h: np.ndarray, h0: int, n: int, tau: float, v_th: float,
                    v_reset: float, hard: bool, decay_input: bool) -> None:
    """All steps from the state in ``v [n]`` (overwritten): ``h`` of neurons ``j0:j0+n`` into
    ``h[:, h0:h0+n]`` (``h [T, ...]``; ``x [T, K]``, or ``[1, K]``: the same input at every step)."""
    bx = x.shape[0] == 1
    for t in range(h.shape[0]):
        xr = x[0 if bx else t, j0:j0 + n]
        hr = h[t, h0:h0 + n]
        for j in range(n):
            hh = charge(xr[j], v[j], tau, v_reset, decay_input)
            hr[j] = hh
            v[j] = reset(hh, fire(hh, v_th), v_th, v_reset, hard)


@_jit_dev
def backward_scratch(tsum: bool, gx: np.ndarray, scratch: np.ndarray, T: int, j0: int,
                     n: int) -> Tuple[np.ndarray, int]:
    """Where a backward block keeps ``h`` (and then ``grad_x``): its rows of ``gx``, or, summing
    over time (``tsum``), ``[T, n]`` of its thread's row of ``scratch`` (cache-resident, allocated
    once per call: a fresh array per block would page-fault). Returns ``(h, h0)``."""
    if tsum:
        return scratch[numba.get_thread_id(), :T * n].reshape((T, n)), 0
    return gx, j0


@_jit_dev
def add_row(acc: np.ndarray, r: np.ndarray, n: int) -> None:
    """``acc[:n] += r[:n]`` in place (rows ``[n]``)."""
    for j in range(n):
        acc[j] += r[j]


@_jit_dev
def lif_vjp_row(hr: np.ndarray, gsr: np.ndarray, g: np.ndarray, F: np.ndarray, n: int, v_th: float, v_reset: float,
                hard: bool, detach: bool, in_gain: float, state_decay: float, kind: int, a: float, b: float) -> None:
    """One backward step of ``n`` neurons (rows ``[n]``): ``hr`` (``h``) becomes ``grad_x``; ``gsr`` is the
    spikes' gradient; ``g`` carries the state gradient; ``F`` gathers the finite flags."""
    for j in range(n):
        gxx, gvv = step_vjp(hr[j], gsr[j], g[j], v_th, v_reset, hard, detach, in_gain, state_decay, kind, a, b)
        hr[j] = gxx
        F[j] = F[j] + (gxx - gxx)
        g[j] = gvv


@_jit_dev
def finite_flag(F: np.ndarray, g: np.ndarray, n: int) -> float:
    """0 when every gradient of the block (gathered in ``F [n]``) and the final ``g [n]`` are finite, else NaN."""
    acc = _F0
    for j in range(n):
        acc += F[j] + (g[j] - g[j])
    return acc


@njit(parallel=True, cache=True, error_model="numpy")
def _lif_fwd(x, v0, s, vT, nf, tau, v_th, v_reset, hard, decay_input, blk):
    """``nf[block]`` (float32, one per block) is 0 when every ``x`` and ``v0`` of the block is
    finite and NaN otherwise: ``a - a`` is 0 for a finite ``a`` and NaN for NaN/+-Inf, summed per
    lane in the same vectorized loop (the finite check costs no extra pass over ``x``). ``x`` is
    ``[T, K]``, or ``[1, K]`` for an input that is the same at every step."""
    T, K = s.shape
    bx = x.shape[0] == 1
    nblk = (K + blk - 1) // blk
    for bi in prange(nblk):
        j0 = bi * blk
        j1 = min(j0 + blk, K)
        v = vT[j0:j1]
        n = j1 - j0
        F = np.empty(n, np.float32)
        lif_start_row(v, v0[j0:j1], F, n)
        for t in range(T):
            lif_step_row(x[0 if bx else t, j0:j1], v, F, s[t, j0:j1], n, tau, v_th, v_reset, hard, decay_input)
        acc = _F0
        for j in range(n):
            acc += F[j]
        nf[bi] = acc


@njit(parallel=True, cache=True, error_model="numpy")
def _lif_bwd(x, v0, gs, gvT, gx, gsum, scratch, gv0, nf, tau, v_th, v_reset, hard, decay_input, detach, in_gain, state_decay,
             kind, a, b, blk, T, tsum):
    """Recompute ``h`` from the saved input into ``gx`` (block-local, cache-resident), then walk back.

    ``gs`` is ``[T, K]``, or ``[1, K]`` for a gradient that is the same at every step (``y.sum()``).
    ``x`` may be ``[1, K]`` likewise (the same input at every step). ``tsum``: ``grad_x`` summed
    over time is added to ``gsum [K]`` (steps last to first) and ``gx`` is not written.
    ``nf[block]`` is 0 when every ``grad_x`` and ``grad_v0`` of the block is finite, else NaN."""
    K = x.shape[1]
    bcast = gs.shape[0] == 1
    nblk = (K + blk - 1) // blk
    for bi in prange(nblk):
        j0 = bi * blk
        j1 = min(j0 + blk, K)
        n = j1 - j0
        h, h0 = backward_scratch(tsum, gx, scratch, T, j0, n)
        g = gv0[j0:j1]
        g[:] = v0[j0:j1]  # g holds the state v during the recompute pass
        lif_recompute_h(x, j0, g, h, h0, n, tau, v_th, v_reset, hard, decay_input)
        F = np.zeros(n, np.float32)
        g[:] = gvT[j0:j1]
        for t in range(T - 1, -1, -1):
            hr = h[t, h0:h0 + n]
            lif_vjp_row(hr, gs[0 if bcast else t, j0:j1], g, F, n, v_th, v_reset, hard, detach, in_gain,
                        state_decay, kind, a, b)
            if tsum:
                add_row(gsum[j0:j1], hr, n)
        nf[bi] = finite_flag(F, g, n)


# ----------------------------------------------------------------------------- host wrappers


def block_size(K: int) -> int:
    """Neurons per parallel block: ~16k, fewer when that leaves threads idle (multiple of 64)."""
    nthr = numba.get_num_threads()
    blk = -(-K // (4 * nthr))
    blk = max(1024, min(16384, blk))
    return ((blk + 63) // 64) * 64


def bwd_block_size(K: int, T: int) -> int:
    """Backward block: small enough that the recomputed ``h`` of a block (T x blk x 4 B) stays in L2."""
    blk = max(256, min(block_size(K), (1 << 20) // (4 * max(T, 1))))
    return ((blk + 63) // 64) * 64


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def _check_cpu_f32(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.device.type != "cpu" or t.dtype != torch.float32:
        raise TypeError(f"{name}: the numba backend runs float32 CPU tensors, got {t.dtype} on {t.device}")
    return t.contiguous()


def _steps_or_one(g: torch.Tensor, name: str) -> torch.Tensor:
    """A per-step gradient ``[T, ...]`` as a contiguous tensor, or its first step alone
    (``[1, ...]``) when it is the same at every step (stride 0 along time: the expanded gradient
    of ``y.sum()``), so that no ``[T, ...]`` copy is made."""
    if g.dim() >= 1 and g.shape[0] > 1 and g.stride(0) == 0:
        return _check_cpu_f32(g[:1], name)
    return _check_cpu_f32(g, name)


def all_finite_flags(nf: np.ndarray) -> bool:
    """``True`` when the per-block flags ``nf [blocks]`` of a kernel say every value was finite (all 0,
    not NaN)."""
    return bool(np.isfinite(nf.sum(dtype=np.float32))) if nf.size else True


def _report(finite: Optional[list], nf: np.ndarray) -> None:
    if finite is not None:
        finite.append(all_finite_flags(nf))


def lif_forward(
    x: torch.Tensor, v0: torch.Tensor, p: LIFParams, *, finite: Optional[list] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """LIF over ``x [T, ...]`` from ``v0 [...]``: returns ``(s, v_T)``.

    Nothing is saved: the backward recomputes ``h`` from ``x`` and ``v0`` (which autograd keeps),
    so the forward allocates only its output (from :mod:`edgesnn.kernels.buffers`: reused pages).
    ``finite``: a list that gets one bool appended: every value of ``x`` and ``v0`` was finite
    (checked by the kernel while it reads them). An ``x`` expanded over time (stride 0 along T:
    one input repeated) is read once per step from its first step, not copied.
    """
    shape = x.shape
    x = _steps_or_one(x, "x_seq")
    v0 = _check_cpu_f32(v0, "v0")
    T = shape[0]
    K = x.numel() // x.shape[0]
    s = _buffers.empty(shape)
    vT = torch.empty_like(v0)
    blk = block_size(K)
    nf = np.empty(max(1, -(-K // blk)), np.float32)
    nf[:] = 0
    launch(_lif_fwd)(_np(x).reshape(x.shape[0], K), _np(v0).reshape(K), _np(s).reshape(T, K), _np(vT).reshape(K),
                     nf, *nm.charge_args(p), blk)
    _report(finite, nf)
    return s, vT


def lif_backward(x: torch.Tensor, v0: torch.Tensor, grad_s: torch.Tensor, grad_vT: torch.Tensor, p: LIFParams,
                 *, finite: Optional[list] = None,
                 sum_into: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Backward of :func:`lif_forward` from its inputs: returns ``(grad_x, grad_v0)``; ``finite``
    (a list) gets a bool appended: every value of both gradients is finite. ``x`` may be expanded
    over time, as in :func:`lif_forward`. ``sum_into`` (``[...]``, float32, contiguous): ``grad_x``
    summed over time is added to it in place (the gradient of one input repeated at every step,
    never materialised over ``T``) and it is returned as ``grad_x``."""
    shape = x.shape
    x = _steps_or_one(x, "x_seq")
    v0 = _check_cpu_f32(v0, "v0")
    T = shape[0]
    K = x.numel() // x.shape[0]
    grad_s = _steps_or_one(grad_s, "grad_s")
    grad_vT = _check_cpu_f32(grad_vT, "grad_v_T")
    gsum = _sum_target(sum_into, shape)
    gx = _buffers.empty(shape) if gsum is None else None
    gv0 = torch.empty_like(grad_vT)
    blk = bwd_block_size(K, T)
    nf = np.empty(max(1, -(-K // blk)), np.float32)
    nf[:] = 0
    launch(_lif_bwd)(_np(x).reshape(x.shape[0], K), _np(v0).reshape(K), _np(grad_s).reshape(grad_s.shape[0], K),
                     _np(grad_vT).reshape(K), *_grad_x_args(gx, gsum, T, K, blk), _np(gv0).reshape(K), nf,
                     *nm.charge_args(p), bool(p.detach_reset), *nm.vjp_args(p), blk, T, gsum is not None)
    _report(finite, nf)
    return (gsum if gsum is not None else gx), gv0


def _sum_target(sum_into: Optional[torch.Tensor], shape) -> Optional[torch.Tensor]:
    if sum_into is None:
        return None
    if (sum_into.shape != tuple(shape[1:]) or sum_into.dtype != torch.float32 or sum_into.device.type != "cpu"
            or not sum_into.is_contiguous()):
        raise ValueError(f"sum_into: expected a contiguous float32 CPU tensor of shape {tuple(shape[1:])}, "
                         f"got {tuple(sum_into.shape)} {sum_into.dtype} on {sum_into.device}")
    return sum_into


def _grad_x_args(gx: Optional[torch.Tensor], gsum: Optional[torch.Tensor], T: int, K: int, blk: int):
    """``(gx [T, K], gsum [K], scratch)`` arrays for a backward kernel writing ``gx``, or summing
    into ``gsum`` with ``scratch`` (``T x blk`` per pool thread); the unused ones are small stand-ins."""
    if gsum is not None:
        scratch = _buffers.empty((numba.config.NUMBA_NUM_THREADS, T * blk))  # pooled: no fresh pages per call
        return np.empty((1, 1), np.float32), _np(gsum).reshape(K), _np(scratch)
    return _np(gx).reshape(T, K), np.empty(1, np.float32), np.empty((1, 1), np.float32)


# The RevLIF kernels live in numba_revlif (module size) and import the device functions above, so
# they are re-exported lazily (PEP 562): an eager import here made ``import numba_revlif`` in a
# fresh interpreter fail (numba_revlif -> numba_cpu -> numba_revlif, partially initialised).
_REVLIF_NAMES = ("NUMBA_KERNELS", "revlif_backward", "revlif_forward")


def __getattr__(name):
    if name in _REVLIF_NAMES:
        from . import numba_revlif

        return getattr(numba_revlif, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def warmup() -> None:
    """Compile (or load from the cache) every CPU kernel specialisation used at run time, in this
    process (:mod:`edgesnn.kernels.warmup_parts`; ``edgesnn warmup --jobs N`` spreads the parts)."""
    from .warmup_parts import run_all

    run_all()
