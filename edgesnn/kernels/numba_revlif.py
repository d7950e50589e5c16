"""Fused RevLIF kernels for the CPU (Numba ``njit``, ``parallel=True``), split out of
:mod:`edgesnn.kernels.numba_cpu` (which re-exports the host wrappers).

Layout: the grouped ``[T, B, n, M]`` of :mod:`edgesnn.functional.revlif_autograd`. ``prange`` runs
over units ``(b, block of M)``, the time loop is inside. Per step and group the work is split in
*phases*: short loops over the block that each touch 2-4 rows (the big rows of the tensors and
small per-unit scratch rows allocated once per unit, L1-resident). One loop over all ~12 rows does
not vectorize (too many possible aliases for LLVM's runtime checks); the phases do, and the packed
bits are gathered as exact float sums (``bit * 2**k``) and converted to ``uint8`` once per byte.

The arithmetic is the same sequence of float32 operations as the single loop (and as the PyTorch
reference): forward outputs are bit-identical.
"""

from __future__ import annotations

import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types
from numba.core.extending import intrinsic

from ..functional.grid import packed_steps
from ..functional.revlif import RevLIFParams
from ..functional.revlif_autograd import RevLIFKernels
from . import neuron_math as nm
from .numba_cpu import _check_cpu_f32, _np, block_size, charge, fire, halve, mul, quantize_input, reset, step_vjp, to_grid, unhalve

__all__ = ["revlif_forward", "revlif_backward", "NUMBA_KERNELS"]


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
def _revlif_fwd(x, v0, y, vT, bits, counts, tau, v_th, v_reset, hard, decay_input, exact, alpha, beta, gamma, blk):
    """``x, y [T, B, G, M]``, ``v0, vT [B, G, M]``, ``bits [ceil(T/8), B, G, M]`` (exact),
    ``counts [B, G, M]`` (float mode)."""
    T, B, G, M = x.shape
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
        for i in range(G):
            vT[b, i, m0:m1] = v0[b, i, m0:m1]
            if not exact:
                counts[b, i, m0:m1] = 0
        for t in range(T):
            tb = t >> 3
            sh = t & 7
            pw = np.float32(1 << sh)
            for i in range(G):
                xi = x[t, b, i, m0:m1]
                vi = vT[b, i, m0:m1]
                yi = y[t, b, i, m0:m1]
                if i == 0:
                    asrc = x[t, b, G - 1, m0:m1]
                    wsrc = vT[b, G - 1, m0:m1]
                else:
                    asrc = y[t, b, i - 1, m0:m1]
                    wsrc = vT[b, i - 1, m0:m1]
                if exact:
                    ai = acc[i]
                    if i == 0:  # group 1's source is the (quantized) input of group n, kept in Q
                        for j in range(n):
                            q = quantize_input(asrc[j])
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
                            yi[j] = alpha * quantize_input(xi[j]) + S[j]
                    if sh == 7 or t == T - 1:
                        bi_ = bits[tb, b, i, m0:m1]
                        for j in range(n):
                            bi_[j] = np.uint8(ai[j])
                            ai[j] = _F0
                else:
                    ci = counts[b, i, m0:m1]
                    for j in range(n):
                        hh = charge(asrc[j], wsrc[j], tau, v_reset, decay_input)
                        ss = fire(hh, v_th)
                        S[j] = ss
                        U[j] = reset(hh, ss, v_th, v_reset, hard)
                    for j in range(n):
                        xv = xi[j]
                        yv = mul(alpha, xv) + S[j]
                        yi[j] = yv
                        if yv - mul(alpha, xv) >= _HALF:
                            ci[j] += 1
                    for j in range(n):
                        vi[j] = mul(beta, vi[j]) + mul(gamma, U[j])


@njit(parallel=True, cache=True, error_model="numpy")
def _revlif_bwd(y, vT, bits, gy, gvT, gx, gv0, v0r, counts, tau, v_th, v_reset, hard, decay_input, detach, exact,
                alpha, beta, gamma, in_gain, state_decay, kind, ka, kb, blk):
    """Inverse + VJP, walking back from ``vT``; ``gx [T, B, G, M]``, ``gv0, v0r [B, G, M]`` out."""
    T, B, G, M = y.shape
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
        GV = np.empty(n, np.float32)  # grad of the source state (added to its row after the loop)
        for t in range(T - 1, -1, -1):
            tb = t >> 3
            sh = t & 7
            for i in range(G - 1, -1, -1):
                yi = y[t, b, i, m0:m1]
                vi = v0r[b, i, m0:m1]
                gyi = gy[t, b, i, m0:m1]
                gxi = gx[t, b, i, m0:m1]
                gvi = gv0[b, i, m0:m1]
                if i > 0:
                    asrc = y[t, b, i - 1, m0:m1]
                    wsrc = v0r[b, i - 1, m0:m1]
                    gx_prev = gx[t, b, i - 1, m0:m1]
                    gv_prev = gv0[b, i - 1, m0:m1]
                else:
                    asrc = xl
                    wsrc = v0r[b, G - 1, m0:m1]
                    gx_prev = gx[t, b, G - 1, m0:m1]
                    gv_prev = gv0[b, G - 1, m0:m1]
                # 1. recompute h from the source, invert the own state (and, for group n, the input)
                if exact:
                    bi_ = bits[tb, b, i, m0:m1]
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
                    ci = counts[b, i, m0:m1]
                    for j in range(n):
                        yv = yi[j]
                        xv = (yv - fire(H[j], v_th)) / alpha
                        ci[j] += 1 if yv - mul(alpha, xv) >= _HALF else 0
                    for j in range(n):
                        vi[j] = (vi[j] - U[j]) / beta
                # 3. VJP: grad_y (+ what group i + 1 sent back), then the LIF step
                if i == G - 1:
                    for j in range(n):
                        gyv = gyi[j]
                        gvv = gvi[j]
                        gxi[j] = alpha * gyv
                        gvi[j] = beta * gvv
                        ga, gw = step_vjp(H[j], gyv, gamma * gvv, v_th, v_reset, hard, detach, in_gain, state_decay, kind, ka, kb)
                        GY[j] = ga
                        GV[j] = gw
                else:
                    for j in range(n):
                        gyv = gyi[j] + gxi[j]
                        gvv = gvi[j]
                        gxi[j] = alpha * gyv
                        gvi[j] = beta * gvv
                        ga, gw = step_vjp(H[j], gyv, gamma * gvv, v_th, v_reset, hard, detach, in_gain, state_decay, kind, ka, kb)
                        GY[j] = ga
                        GV[j] = gw
                for j in range(n):
                    gv_prev[j] = gv_prev[j] + GV[j]
                if i > 0:
                    for j in range(n):
                        gx_prev[j] = GY[j]
                else:
                    for j in range(n):
                        gx_prev[j] = gx_prev[j] + GY[j]


def revlif_forward(xg: torch.Tensor, v0: torch.Tensor, p: RevLIFParams):
    """Kernel contract forward: ``(y, v_T, bits | None, counts | None)`` for ``xg [T, B, n, M]``,
    ``v0 [B, n, M]``; ``bits [ceil(T/8), B, n, M]`` uint8 (exact), ``counts [B, n, M]`` int32 (float)."""
    xg = _check_cpu_f32(xg, "x_seq")
    v0 = _check_cpu_f32(v0, "v0")
    T, B, G, M = xg.shape
    lif = p.lif
    y = torch.empty_like(xg)
    vT = torch.empty_like(v0)
    bits = torch.empty((packed_steps(T), B, G, M) if p.exact else (1, 1, 1, 1), dtype=torch.uint8)
    counts = torch.empty((1, 1, 1) if p.exact else (B, G, M), dtype=torch.int32)
    _revlif_fwd(_np(xg), _np(v0), _np(y), _np(vT), _np(bits), _np(counts), *nm.charge_args(lif),
                *nm.mix_args(p), block_size(M))
    return y, vT, (bits if p.exact else None), (None if p.exact else counts)


def revlif_backward(y, v_T, bits, grad_y, grad_v_T, p: RevLIFParams):
    """Kernel contract backward: ``(grad_x [T, B, n, M], grad_v0 [B, n, M], v0_rec [B, n, M], counts_rec | None)``."""
    y = _check_cpu_f32(y, "y")
    v_T = _check_cpu_f32(v_T, "v_T")
    grad_y = _check_cpu_f32(grad_y, "grad_y")
    grad_v_T = _check_cpu_f32(grad_v_T, "grad_v_T")
    T, B, G, M = y.shape
    lif = p.lif
    if p.exact:
        if bits is None:
            raise ValueError("bits: exact mode needs the packed bits from the forward")
        bits = bits.contiguous()
    else:
        bits = torch.zeros((1, 1, 1, 1), dtype=torch.uint8)
    gx = torch.empty_like(y)
    gv0 = torch.empty_like(v_T)
    v0r = torch.empty_like(v_T)
    counts = torch.empty((1, 1, 1) if p.exact else (B, G, M), dtype=torch.int32)
    _revlif_bwd(_np(y), _np(v_T), _np(bits), _np(grad_y), _np(grad_v_T), _np(gx), _np(gv0), _np(v0r), _np(counts),
                *nm.charge_args(lif), bool(lif.detach_reset), *nm.mix_args(p), *nm.vjp_args(lif), block_size(M))
    return gx, gv0, v0r, (None if p.exact else counts)


NUMBA_KERNELS = RevLIFKernels("numba", revlif_forward, revlif_backward)
