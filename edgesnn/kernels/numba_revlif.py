"""Fused RevLIF kernels for the CPU (Numba ``njit``, ``parallel=True``), split out of
:mod:`edgesnn.kernels.numba_cpu` (which re-exports the host wrappers).

Layout: the grouped ``[T, B, n, M]`` of :mod:`edgesnn.functional.revlif_autograd`. ``prange`` runs
over units ``(b, block of M)``, the time loop is inside. Per step and group the work is split in
*phases*: short loops over the block that each touch 2-4 rows (the big rows of the tensors and
small per-unit scratch rows allocated once per unit, L1-resident). One loop over all ~12 rows does
not vectorize (too many possible aliases for LLVM's runtime checks); the phases do, and the packed
bits are gathered as exact float sums (``bit * 2**k``) and converted to ``uint8`` once per byte.
Each step first asks for the next step's rows (:mod:`edgesnn.kernels.numba_prefetch`: they lie in
other pages, where the hardware prefetchers start cold). The rows the loops work on are borrowed
views (:func:`edgesnn.kernels.numba_rows.row`), not slices: a slice is an atomic increment and
decrement of the parent's shared reference count, ~10 per group and step in every unit. The
prefetch requests keep ordinary slices: through borrowed rows LLVM dropped the write prefetches
from the backward and it ran 25% slower from memory (``[64, 1, 1e6]``, kernels alone).

The arithmetic is the same sequence of float32 operations as the single loop (and as the PyTorch
reference): forward outputs are bit-identical.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from llvmlite import ir

from .config import configure

configure()  # before Numba is imported: NUMBA_NUM_THREADS check, cache folder, CPU features

from numba import njit, prange, types  # noqa: E402
from numba.core.extending import intrinsic  # noqa: E402

from ..functional.grid import packed_steps  # noqa: E402
from ..functional.revlif import RevLIFParams  # noqa: E402
from ..functional.revlif_autograd import RevLIFKernels  # noqa: E402
from . import neuron_math as nm  # noqa: E402
from . import buffers as _buffers  # noqa: E402
from .launch import launch  # noqa: E402
from .numba_prefetch import SHORT_ROW_BYTES, prefetch_row_read, prefetch_row_write  # noqa: E402
from .numba_cpu import _check_cpu_f32, _np, _report, _steps_or_one, block_size, charge, fire, halve, mul, quantize_input, reset, step_vjp_from_grad, surrogate_grad, to_grid, unhalve  # noqa: E402
from .numba_rows import row  # noqa: E402

__all__ = ["revlif_forward", "revlif_backward", "revlif_block_size", "NUMBA_KERNELS"]

#: Neurons per parallel unit on long sequences (see :func:`revlif_block_size`).
LONG_SEQUENCE_BLOCK = 256
#: Sequences at least this long use :data:`LONG_SEQUENCE_BLOCK`.
LONG_SEQUENCE_STEPS = 32
#: Backward units of at most this many neurons compute the surrogate derivative in a loop of its own
#: (see ``_vjp_rows``).
SPLIT_SURROGATE_UNITS = 1024


def revlif_block_size(M: int, T: int) -> int:
    """Neurons per parallel unit of the RevLIF kernels, for ``M`` neurons per group and ``T`` steps.

    A unit keeps its block's rows of every step in the L1 cache: per step the forward touches
    about ``6 n + 3`` rows (``x``, ``y``, state, bits in progress, the scratch rows and the next
    step's prefetched rows for ``n`` groups), the backward about ``8 n + 7``. With 256 neurons
    (1 KiB rows) that is 15-23 KiB for two groups, within the 32-64 KiB L1 of the x86-64 and ARMv8
    cores edgesnn targets; with 1024 (the LIF blocks) it was 60-94 KiB and spilled to L2. Small
    units pay a cold start (their first step's rows are not prefetched), which a long sequence
    amortizes: from ``T = 32`` on the units are 256 neurons (kernels alone on ``[T, B, N]`` with
    T = 32-128, buffers larger than the last-level cache, 2 threads, AMD EPYC VM: forward 11-15%
    faster, backward 1-10%; in the public form on ``[64, 16, 4096]`` forward 1.65 -> 1.20 ms,
    backward 2.78 -> 2.34 ms); shorter sequences keep :func:`~edgesnn.kernels.numba_cpu.block_size`
    (at T = 8 the small units were 11% slower forward).
    """
    return LONG_SEQUENCE_BLOCK if T >= LONG_SEQUENCE_STEPS else block_size(M)


@intrinsic
def _bit_f32(typingctx, byte, sh):
    """Bit ``sh`` of a ``uint8`` as float32 0./1., in 32-bit lanes (Numba's own integer ops
    widen to 64 bits, which halves the vector width)."""
    if byte != types.uint8 or not isinstance(sh, types.Integer):
        return None
    sig = types.float32(byte, sh)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        v = builder.zext(args[0], i32)
        k = builder.trunc(args[1], i32) if args[1].type.width > 32 else builder.zext(args[1], i32)
        bit = builder.and_(builder.lshr(v, k), ir.Constant(i32, 1))
        return builder.uitofp(bit, ir.FloatType())

    return sig, codegen

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_HALF = np.float32(0.5)


@njit(parallel=True, cache=True, error_model="numpy")
def _revlif_fwd(x, v0, y, vT, bits, counts, nf, tau, v_th, v_reset, hard, decay_input, exact, alpha, beta, gamma, blk):
    """``x, y [T, B, G, M]``, ``v0, vT [B, G, M]``, ``bits [ceil(T/8), B, G, M]`` (exact),
    ``counts [B, G, M]`` (float mode). ``x`` may be ``[1, B, G, M]``: the same input at every step
    (read from its one step). ``nf[unit]`` is 0 when every ``x`` of the unit is finite, else NaN
    (``x - x`` summed per lane in the loops that read ``x`` anyway)."""
    T, B, G, M = y.shape
    bx = x.shape[0] == 1
    mblk = (M + blk - 1) // blk
    for unit in prange(B * mblk):
        b = unit // mblk
        m0 = (unit % mblk) * blk
        m1 = min(m0 + blk, M)
        n = m1 - m0
        S = np.empty(n, np.float32)  # spikes of the group in work
        U = np.empty(n, np.float32)  # its reset potential term (float mode)
        Q = np.empty(n, np.float32)  # quantized input of group n (group 1's source)
        acc = np.zeros((G, n), np.float32)  # packed bits in progress, as exact float sums
        F = np.zeros(n, np.float32)  # finite check of x: stays 0 unless a NaN/Inf was read
        pf = 4 * n <= SHORT_ROW_BYTES  # short rows: prefetch the next step's (numba_prefetch)
        for i in range(G):
            vT[b, i, m0:m1] = v0[b, i, m0:m1]
            if not exact:
                counts[b, i, m0:m1] = 0
        for t in range(T):
            tb = t >> 3
            sh = t & 7
            tx = 0 if bx else t  # the step of x read
            pw = np.float32(1 << sh)
            if pf and t + 1 < T:  # the next step's rows are in another page: ask for them now
                for i in range(G):
                    if not bx:  # (a repeated input's one step stays cached)
                        prefetch_row_read(x[t + 1, b, i, m0:m1])
                    prefetch_row_write(y[t + 1, b, i, m0:m1])
            for i in range(G):
                xi = row(x, (tx, b, i), m0, m1)
                vi = row(vT, (b, i), m0, m1)
                yi = row(y, (t, b, i), m0, m1)
                if i == 0:
                    asrc = row(x, (tx, b, G - 1), m0, m1)
                    wsrc = row(vT, (b, G - 1), m0, m1)
                else:
                    asrc = row(y, (t, b, i - 1), m0, m1)
                    wsrc = row(vT, (b, i - 1), m0, m1)
                if exact:
                    ai = row(acc, (i,), 0, n)
                    if i == 0:  # group 1's source is the (quantized) input of group n, kept in Q
                        for j in range(n):
                            xa = asrc[j]
                            F[j] = F[j] + (xa - xa)
                            q = quantize_input(xa)
                            Q[j] = q
                            hh = charge(q, wsrc[j], tau, v_reset, decay_input)
                            ss = fire(hh, v_th)
                            S[j] = ss
                            half, bit = halve(vi[j])
                            vi[j] = half + to_grid(gamma * reset(hh, ss, v_th, v_reset, hard))
                            ai[j] = ai[j] + bit * pw
                    else:
                        for j in range(n):
                            hh = charge(asrc[j], wsrc[j], tau, v_reset, decay_input)
                            ss = fire(hh, v_th)
                            S[j] = ss
                            half, bit = halve(vi[j])
                            vi[j] = half + to_grid(gamma * reset(hh, ss, v_th, v_reset, hard))
                            ai[j] = ai[j] + bit * pw
                    if i == G - 1:
                        for j in range(n):
                            yi[j] = alpha * Q[j] + S[j]
                    else:
                        for j in range(n):
                            xv = xi[j]
                            F[j] = F[j] + (xv - xv)
                            yi[j] = alpha * quantize_input(xv) + S[j]
                    if sh == 7 or t == T - 1:
                        bi_ = row(bits, (tb, b, i), m0, m1)
                        for j in range(n):
                            bi_[j] = np.uint8(ai[j])
                            ai[j] = _F0
                else:
                    ci = row(counts, (b, i), m0, m1)
                    for j in range(n):
                        hh = charge(asrc[j], wsrc[j], tau, v_reset, decay_input)
                        ss = fire(hh, v_th)
                        S[j] = ss
                        U[j] = reset(hh, ss, v_th, v_reset, hard)
                    for j in range(n):
                        xv = xi[j]
                        F[j] = F[j] + (xv - xv)
                        yv = mul(alpha, xv) + S[j]
                        yi[j] = yv
                        if yv - mul(alpha, xv) >= _HALF:
                            ci[j] += 1
                    for j in range(n):
                        vi[j] = mul(beta, vi[j]) + mul(gamma, U[j])
        tot = _F0
        for j in range(n):
            tot += F[j]
        nf[unit] = tot


@njit(inline="always", error_model="numpy")
def _vjp_rows(n, last, gyi, gxi, gvi, H, SG, GY, GV, F, alpha, beta, gamma, v_th, v_reset, hard, detach, in_gain,
              state_decay, kind, ka, kb, split):
    """The backward's VJP phase for one group's rows: ``grad_y`` (plus, for all but the ``last``
    group, what the next group sent back in ``gxi``), then the LIF step's VJP into ``GY``, ``GV``.

    ``split`` (a constant at each call, so each call compiles to its own loops): the surrogate
    derivative first, for the whole row, in a loop of its own (``SG``). Its ``exp`` and division
    are one long dependent chain per element; alone in a loop the core overlaps more elements'
    chains. On units of up to :data:`SPLIT_SURROGATE_UNITS` neurons the backward ran 6-10%
    faster; on the 4096-16384-neuron units of short sequences, where the extra row no longer
    stays in L1, 3-7% slower (kernels alone, 2 threads, AMD EPYC VM)."""
    if split:
        for j in range(n):
            SG[j] = surrogate_grad(H[j] - v_th, kind, ka, kb)
    if last:
        for j in range(n):
            gyv = gyi[j]
            gvv = gvi[j]
            gxi[j] = alpha * gyv
            gvi[j] = beta * gvv
            g = SG[j] if split else surrogate_grad(H[j] - v_th, kind, ka, kb)
            ga, gw = step_vjp_from_grad(H[j], g, gyv, gamma * gvv, v_th, v_reset, hard, detach, in_gain, state_decay)
            GY[j] = ga
            GV[j] = gw
    else:  # its grad_x is final here
        for j in range(n):
            gyv = gyi[j] + gxi[j]
            gvv = gvi[j]
            gxv = alpha * gyv
            gxi[j] = gxv
            F[j] = F[j] + (gxv - gxv)
            gvi[j] = beta * gvv
            g = SG[j] if split else surrogate_grad(H[j] - v_th, kind, ka, kb)
            ga, gw = step_vjp_from_grad(H[j], g, gyv, gamma * gvv, v_th, v_reset, hard, detach, in_gain, state_decay)
            GY[j] = ga
            GV[j] = gw


@njit(parallel=True, cache=True, error_model="numpy")
def _revlif_bwd(y, vT, bits, gy, gvT, gx, gv0, v0r, counts, nf, tau, v_th, v_reset, hard, decay_input, detach, exact,
                alpha, beta, gamma, in_gain, state_decay, kind, ka, kb, blk):
    """Inverse + VJP, walking back from ``vT``; ``gx [T, B, G, M]``, ``gv0, v0r [B, G, M]`` out.

    ``gy`` is ``[T, B, G, M]``, or ``[1, B, G, M]`` for a gradient that is the same at every step.
    ``nf[unit]`` is 0 when every ``grad_x`` and ``grad_v0`` of the unit is finite, else NaN (each
    final ``grad_x`` value is checked where it is written)."""
    T, B, G, M = y.shape
    bcast = gy.shape[0] == 1
    mblk = (M + blk - 1) // blk
    inv_alpha = _F1 / alpha
    for unit in prange(B * mblk):
        b = unit // mblk
        m0 = (unit % mblk) * blk
        m1 = min(m0 + blk, M)
        n = m1 - m0
        for i in range(G):
            v0r[b, i, m0:m1] = vT[b, i, m0:m1]
            gv0[b, i, m0:m1] = gvT[b, i, m0:m1]
            if not exact:
                counts[b, i, m0:m1] = 0
        xl = np.empty(n, np.float32)  # reconstructed input of group n (group 1's source)
        H = np.empty(n, np.float32)  # recomputed h
        U = np.empty(n, np.float32)  # reset term (float mode)
        BF = np.empty(n, np.float32)  # kept bit (exact) as 0./1.
        GY = np.empty(n, np.float32)  # grad of the source
        split = n <= SPLIT_SURROGATE_UNITS  # see _vjp_rows
        SG = np.empty(n if split else 1, np.float32)  # surrogate derivative at h
        GV = np.empty(n, np.float32)  # grad of the source state (added to its row after the loop)
        F = np.zeros(n, np.float32)  # finite check of the final gradients
        pf = 4 * n <= SHORT_ROW_BYTES  # short rows: prefetch the previous step's (numba_prefetch)
        for t in range(T - 1, -1, -1):
            tb = t >> 3
            sh = t & 7
            if pf and t > 0:  # the previous step's rows (another page each): ask for them now
                for i in range(G):
                    prefetch_row_read(y[t - 1, b, i, m0:m1])
                    prefetch_row_write(gx[t - 1, b, i, m0:m1])
                    if not bcast:
                        prefetch_row_read(gy[t - 1, b, i, m0:m1])
            for i in range(G - 1, -1, -1):
                yi = row(y, (t, b, i), m0, m1)
                vi = row(v0r, (b, i), m0, m1)
                gyi = row(gy, (0 if bcast else t, b, i), m0, m1)
                gxi = row(gx, (t, b, i), m0, m1)
                gvi = row(gv0, (b, i), m0, m1)
                if i > 0:
                    asrc = row(y, (t, b, i - 1), m0, m1)
                    wsrc = row(v0r, (b, i - 1), m0, m1)
                    gx_prev = row(gx, (t, b, i - 1), m0, m1)
                    gv_prev = row(gv0, (b, i - 1), m0, m1)
                else:
                    asrc = xl
                    wsrc = row(v0r, (b, G - 1), m0, m1)
                    gx_prev = row(gx, (t, b, G - 1), m0, m1)
                    gv_prev = row(gv0, (b, G - 1), m0, m1)
                # 1. recompute h from the source, invert the own state (and, for group n, the input)
                if exact:
                    bi_ = row(bits, (tb, b, i), m0, m1)
                    for j in range(n):
                        BF[j] = _bit_f32(bi_[j], sh)
                    for j in range(n):
                        hh = charge(asrc[j], wsrc[j], tau, v_reset, decay_input)
                        H[j] = hh
                        uq = to_grid(gamma * reset(hh, fire(hh, v_th), v_th, v_reset, hard))
                        vi[j] = unhalve(vi[j] - uq, BF[j])
                    if i == G - 1:  # alpha = 2^-k: dividing is multiplying by the exact 2^k
                        for j in range(n):
                            xl[j] = (yi[j] - fire(H[j], v_th)) * inv_alpha
                else:
                    for j in range(n):
                        hh = charge(asrc[j], wsrc[j], tau, v_reset, decay_input)
                        H[j] = hh
                        U[j] = mul(gamma, reset(hh, fire(hh, v_th), v_th, v_reset, hard))
                    if i == G - 1:
                        for j in range(n):
                            xl[j] = (yi[j] - fire(H[j], v_th)) / alpha
                    ci = row(counts, (b, i), m0, m1)
                    for j in range(n):
                        yv = yi[j]
                        xv = (yv - fire(H[j], v_th)) / alpha
                        ci[j] += 1 if yv - mul(alpha, xv) >= _HALF else 0
                    for j in range(n):
                        vi[j] = (vi[j] - U[j]) / beta
                # 3. VJP: grad_y (+ what group i + 1 sent back), then the LIF step
                if split:
                    _vjp_rows(n, i == G - 1, gyi, gxi, gvi, H, SG, GY, GV, F, alpha, beta, gamma, v_th, v_reset, hard,
                              detach, in_gain, state_decay, kind, ka, kb, True)
                else:
                    _vjp_rows(n, i == G - 1, gyi, gxi, gvi, H, SG, GY, GV, F, alpha, beta, gamma, v_th, v_reset, hard,
                              detach, in_gain, state_decay, kind, ka, kb, False)
                for j in range(n):
                    gv_prev[j] = gv_prev[j] + GV[j]
                if i > 0:
                    for j in range(n):
                        gx_prev[j] = GY[j]
                else:  # group n's grad_x is final here
                    for j in range(n):
                        r = gx_prev[j] + GY[j]
                        gx_prev[j] = r
                        F[j] = F[j] + (r - r)
        tot = _F0
        for i in range(G):
            gvr = row(gv0, (b, i), m0, m1)
            for j in range(n):
                tot += F[j] + (gvr[j] - gvr[j])
        nf[unit] = tot


def revlif_forward(
    xg: torch.Tensor, v0: torch.Tensor, p: RevLIFParams, *, finite: Optional[list] = None
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Kernel contract forward: ``(y, v_T, bits | None, counts | None)`` for ``xg [T, B, n, M]``,
    ``v0 [B, n, M]``; ``bits [ceil(T/8), B, n, M]`` uint8 (exact), ``counts [B, n, M]`` int32 (float).
    ``finite`` (a list) gets a bool appended: every value of ``xg`` was finite (checked in the kernel).
    An ``xg`` expanded over time (stride 0 along T: one input repeated) is read from its first step
    at every step, not copied (the same outputs, bit for bit)."""
    shape = xg.shape
    xg = _steps_or_one(xg, "x_seq")
    v0 = _check_cpu_f32(v0, "v0")
    T, B, G, M = shape
    lif = p.lif
    y = _buffers.empty(shape)
    vT = torch.empty_like(v0)
    bits = _buffers.empty((packed_steps(T), B, G, M) if p.exact else (1, 1, 1, 1), dtype=torch.uint8)
    counts = torch.empty((1, 1, 1) if p.exact else (B, G, M), dtype=torch.int32)
    blk = revlif_block_size(M, T)
    nf = np.zeros(max(1, B * (-(-M // blk))), np.float32)
    launch(_revlif_fwd)(_np(xg), _np(v0), _np(y), _np(vT), _np(bits), _np(counts), nf, *nm.charge_args(lif),
                        *nm.mix_args(p), blk)
    out = (y, vT, (bits if p.exact else None), (None if p.exact else counts))
    _report(finite, nf)
    return out


def revlif_backward(
    y: torch.Tensor,
    v_T: torch.Tensor,
    bits: Optional[torch.Tensor],
    grad_y: torch.Tensor,
    grad_v_T: torch.Tensor,
    p: RevLIFParams,
    *,
    finite: Optional[list] = None,
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Kernel contract backward: ``(grad_x [T, B, n, M], grad_v0 [B, n, M], v0_rec [B, n, M], counts_rec | None)``
    ``finite`` (a list) gets a bool appended: every value of ``grad_x`` and ``grad_v0`` is finite."""
    y = _check_cpu_f32(y, "y")
    v_T = _check_cpu_f32(v_T, "v_T")
    grad_y = _steps_or_one(grad_y, "grad_y")
    grad_v_T = _check_cpu_f32(grad_v_T, "grad_v_T")
    T, B, G, M = y.shape
    lif = p.lif
    if p.exact:
        if bits is None:
            raise ValueError("bits: exact mode needs the packed bits from the forward")
        bits = bits.contiguous()
    else:
        bits = torch.zeros((1, 1, 1, 1), dtype=torch.uint8)
    gx = _buffers.empty(y.shape)
    gv0 = torch.empty_like(v_T)
    v0r = torch.empty_like(v_T)
    counts = torch.empty((1, 1, 1) if p.exact else (B, G, M), dtype=torch.int32)
    blk = revlif_block_size(M, T)
    nf = np.zeros(max(1, B * (-(-M // blk))), np.float32)
    launch(_revlif_bwd)(_np(y), _np(v_T), _np(bits), _np(grad_y), _np(grad_v_T), _np(gx), _np(gv0), _np(v0r),
                        _np(counts), nf, *nm.charge_args(lif), bool(lif.detach_reset), *nm.mix_args(p),
                        *nm.vjp_args(lif), blk)
    out = (gx, gv0, v0r, (None if p.exact else counts))
    _report(finite, nf)
    return out


NUMBA_KERNELS = RevLIFKernels("numba", revlif_forward, revlif_backward)
