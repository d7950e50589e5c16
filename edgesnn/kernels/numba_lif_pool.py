"""LIF followed by a 2x2, stride-2 max-pool, fused (Numba CPU): the shape of VGG-like SNN blocks.

Spikes are 0 or 1, so the pooled output of a window is 1 when any of its four neurons fires, and
the max-pool's gradient goes to the window's *first* neuron that fires (row-major), or to its
first neuron when none fires: exactly where PyTorch's CPU ``max_pool2d`` routes it (it keeps the
first maximum it meets). Fusing saves the full-resolution spike tensor, the pooling pass, its
``int64`` indices and the separate forward that the unfused backward runs under autograd (the
backward kernel recomputes the membrane potential from the node input, like
:func:`edgesnn.kernels.numba_cpu.lif_backward`).

Layout: node input ``x [T, R, H, W]`` (``R`` = batch x channels, NCHW-contiguous per step),
pooled output ``[T, R, H // 2, W // 2]`` (floor mode: an odd last row or column is dropped, its
neurons get no spike gradient). Values are bit-identical to ``lif_forward`` + ``F.max_pool2d``,
and gradients to their autograd backward.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from ..functional.lif import LIFParams
from . import buffers as _buffers
from .launch import launch
from . import neuron_math as nm
from .numba_cpu import (_F0, _check_cpu_f32, _grad_x_args, _jit_dev, _np, _report, _steps_or_one, _sum_target,
                        add_row, backward_scratch, block_size, bwd_block_size, finite_flag, fire, lif_recompute_h,
                        lif_start_row, lif_step_row, lif_vjp_row)

from numba import njit, prange  # noqa: E402  (numba_cpu configured threading and the cache)

__all__ = ["lif_pool2_forward", "lif_pool2_backward"]

_F1 = np.float32(1.0)


def _rows_per_block(n_per_row: int, blk: int) -> int:
    return max(1, blk // max(1, n_per_row))


@_jit_dev
def _geometry(K, H, W, rows):
    """``(H*W, H//2, W//2, pooled plane, images R, parallel blocks)`` of ``K`` neurons in ``H x W``
    images, ``rows`` images per block."""
    HW = H * W
    Hp = H // 2
    Wp = W // 2
    R = K // HW
    return HW, Hp, Wp, Hp * Wp, R, (R + rows - 1) // rows


@_jit_dev
def _block_span(bi, rows, R, HW):
    """Block ``bi``: images ``r0:r1``, its first neuron ``j0`` and neuron count ``n``."""
    r0 = bi * rows
    r1 = min(r0 + rows, R)
    return r0, r1, r0 * HW, (r1 - r0) * HW


@njit(parallel=True, cache=True, error_model="numpy")
def _lif_pool2_fwd(x, v0, out, vT, nf, tau, v_th, v_reset, hard, decay_input, H, W, rows):
    """``x [T, R*H*W]``, ``out [T, R*Hp*Wp]``: spikes pooled 2x2 as they are made. Parallel
    blocks hold whole rows ``r`` (one ``H x W`` image each), so every window lies in one block.
    ``x`` may be ``[1, R*H*W]``: the same input at every step."""
    T = out.shape[0]
    K = x.shape[1]
    bx = x.shape[0] == 1
    HW, Hp, Wp, HWp, R, nblk = _geometry(K, H, W, rows)
    for bi in prange(nblk):
        r0, r1, j0, n = _block_span(bi, rows, R, HW)
        v = vT[j0:j0 + n]
        F = np.empty(n, np.float32)
        sl = np.empty(n, np.float32)
        lif_start_row(v, v0[j0:j0 + n], F, n)
        for t in range(T):
            lif_step_row(x[0 if bx else t, j0:j0 + n], v, F, sl, n, tau, v_th, v_reset, hard, decay_input)
            orow = out[t, r0 * HWp:r1 * HWp]
            for r in range(r1 - r0):
                for i in range(Hp):
                    for jj in range(Wp):
                        p = r * HW + 2 * i * W + 2 * jj
                        orow[r * HWp + i * Wp + jj] = max(max(sl[p], sl[p + 1]), max(sl[p + W], sl[p + W + 1]))
        acc = _F0
        for j in range(n):
            acc += F[j]
        nf[bi] = acc


@njit(parallel=True, cache=True, error_model="numpy")
def _lif_pool2_bwd(x, v0, gp, gvT, gx, gsum, scratch, gv0, nf, tau, v_th, v_reset, hard, decay_input, detach, in_gain,
                   state_decay, kind, a, b, H, W, rows, T, tsum):
    """Recompute ``h`` into ``gx`` (block-local), then walk back; each step's spike gradient is the
    pooled gradient routed to the window's first firing neuron (else its first neuron). ``x`` may
    be ``[1, K]`` (the same input at every step); ``tsum``: ``grad_x`` summed over time is added to
    ``gsum [K]`` (steps last to first) and ``gx`` is not written."""
    K = x.shape[1]
    bcast = gp.shape[0] == 1
    HW, Hp, Wp, HWp, R, nblk = _geometry(K, H, W, rows)
    for bi in prange(nblk):
        r0, r1, j0, n = _block_span(bi, rows, R, HW)
        h, h0 = backward_scratch(tsum, gx, scratch, T, j0, n)
        g = gv0[j0:j0 + n]
        g[:] = v0[j0:j0 + n]  # g holds the state v during the recompute pass
        lif_recompute_h(x, j0, g, h, h0, n, tau, v_th, v_reset, hard, decay_input)
        F = np.zeros(n, np.float32)
        gs = np.zeros(n, np.float32)  # neurons outside every window (odd H or W) keep 0
        g[:] = gvT[j0:j0 + n]
        for t in range(T - 1, -1, -1):
            hr = h[t, h0:h0 + n]
            gpr = gp[0 if bcast else t, r0 * HWp:r1 * HWp]
            for ri in range((r1 - r0) * Hp):  # window row i of image r: rows 2i, 2i + 1
                r = ri // Hp
                p0 = r * HW + 2 * (ri - r * Hp) * W
                for jj in range(Wp):
                    p = p0 + 2 * jj
                    # branch-free routing: s_k is 1 for the window's first firing neuron k, s0 also
                    # when none fires (0/1 products and differences are exact)
                    f0 = fire(hr[p], v_th)
                    f1 = fire(hr[p + 1], v_th)
                    f2 = fire(hr[p + W], v_th)
                    f3 = fire(hr[p + W + 1], v_th)
                    none = _F1 - f0
                    s1 = none * f1
                    none = none - s1
                    s2 = none * f2
                    none = none - s2
                    s3 = none * f3
                    s0 = f0 + (none - s3)
                    gq = gpr[ri * Wp + jj]
                    gs[p] = gq if s0 > _F0 else _F0
                    gs[p + 1] = gq if s1 > _F0 else _F0
                    gs[p + W] = gq if s2 > _F0 else _F0
                    gs[p + W + 1] = gq if s3 > _F0 else _F0
            lif_vjp_row(hr, gs, g, F, n, v_th, v_reset, hard, detach, in_gain, state_decay, kind, a, b)
            if tsum:
                add_row(gsum[j0:j0 + n], hr, n)
        nf[bi] = finite_flag(F, g, n)


def _shape(x: torch.Tensor):
    if x.dim() < 4 or x.shape[-1] < 2 or x.shape[-2] < 2:
        raise ValueError(f"x_seq: expected [T, ..., H, W] with H, W >= 2, got {tuple(x.shape)}")
    T, H, W = x.shape[0], x.shape[-2], x.shape[-1]
    return T, x.numel() // T, H, W


def lif_pool2_forward(
    x: torch.Tensor, v0: torch.Tensor, p: LIFParams, *, finite: Optional[list] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """LIF over ``x [T, ..., H, W]`` from ``v0 [..., H, W]``, spikes max-pooled 2x2 (stride 2).

    Returns ``(pooled [T, ..., H // 2, W // 2], v_T)``; ``finite`` (a list) gets a bool appended:
    every value of ``x`` and ``v0`` was finite. An ``x`` expanded over time (stride 0 along T: one
    input repeated) is read from its first step, not copied.
    """
    T, K, H, W = _shape(x)
    out = _buffers.empty(tuple(x.shape[:-2]) + (H // 2, W // 2))
    x = _steps_or_one(x, "x_seq")
    v0 = _check_cpu_f32(v0, "v0")
    vT = torch.empty_like(v0)
    rows = _rows_per_block(H * W, block_size(K))
    nf = np.zeros(max(1, -(-(K // (H * W)) // rows)), np.float32)
    launch(_lif_pool2_fwd)(_np(x).reshape(x.shape[0], K), _np(v0).reshape(K), _np(out).reshape(T, -1),
                           _np(vT).reshape(K), nf, *nm.charge_args(p), H, W, rows)
    _report(finite, nf)
    return out, vT


def lif_pool2_backward(x: torch.Tensor, v0: torch.Tensor, grad_pooled: torch.Tensor, grad_vT: torch.Tensor,
                       p: LIFParams, *, finite: Optional[list] = None,
                       sum_into: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Backward of :func:`lif_pool2_forward` from its inputs: returns ``(grad_x, grad_v0)``.

    ``grad_pooled`` is ``[T, ..., H // 2, W // 2]`` (or ``[1, ...]``: the same at every step);
    ``finite`` (a list) gets a bool appended: every value of both gradients is finite. ``x`` may be
    expanded over time, as in :func:`lif_pool2_forward`. ``sum_into`` (``[..., H, W]``, float32,
    contiguous): ``grad_x`` summed over time is added to it in place (the gradient of one input
    repeated at every step, never materialised over ``T``) and it is returned as ``grad_x``.
    """
    T, K, H, W = _shape(x)
    gsum = _sum_target(sum_into, x.shape)
    gx = _buffers.empty(x.shape) if gsum is None else None
    x = _steps_or_one(x, "x_seq")
    v0 = _check_cpu_f32(v0, "v0")
    grad_pooled = _check_cpu_f32(grad_pooled, "grad_pooled")
    grad_vT = _check_cpu_f32(grad_vT, "grad_v_T")
    gv0 = torch.empty_like(grad_vT)
    rows = _rows_per_block(H * W, bwd_block_size(K, T))
    nf = np.zeros(max(1, -(-(K // (H * W)) // rows)), np.float32)
    launch(_lif_pool2_bwd)(_np(x).reshape(x.shape[0], K), _np(v0).reshape(K),
                           _np(grad_pooled).reshape(grad_pooled.shape[0], -1), _np(grad_vT).reshape(K),
                           *_grad_x_args(gx, gsum, T, K, rows * H * W), _np(gv0).reshape(K), nf, *nm.charge_args(p),
                           bool(p.detach_reset), *nm.vjp_args(p), H, W, rows, T, gsum is not None)
    _report(finite, nf)
    return (gsum if gsum is not None else gx), gv0
