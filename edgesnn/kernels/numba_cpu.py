"""Fused multi-step LIF and RevLIF kernels for the CPU (Numba ``njit``, ``parallel=True``).

Shape of every kernel (SPEC section 3): ``prange`` over blocks of neurons, the time loop inside,
the innermost loop over a contiguous 1-D row slice, no per-call scratch beyond the outputs. The
per-neuron math comes from :mod:`edgesnn.kernels.neuron_math` (shared with the CUDA kernels).

Host wrappers take and return ``torch`` tensors (CPU, float32, zero-copy through ``.numpy()``):

* :func:`lif_forward` / :func:`lif_backward`: LIF over ``[T, K]``; the backward recomputes ``h``
  from the input (autograd keeps the input: 1x, like saving ``h``, with one allocation less).
* :func:`revlif_forward` / :func:`revlif_backward`: the kernel contract of
  :mod:`edgesnn.functional.revlif_autograd` (grouped layout ``[T, B, n, M]``);
  :data:`NUMBA_KERNELS` bundles them as a ``RevLIFKernels``.
"""

from __future__ import annotations

import numpy as np
import torch

from .config import configure_cache

configure_cache()

import numba  # noqa: E402  (after the cache folder is chosen)
from numba import njit, prange  # noqa: E402

from .config import configure_threading_layer  # noqa: E402

configure_threading_layer()

from ..functional.grid import packed_steps  # noqa: E402
from ..functional.lif import LIFParams  # noqa: E402
from ..functional.revlif import RevLIFParams  # noqa: E402
from ..functional.revlif_autograd import RevLIFKernels  # noqa: E402
from . import neuron_math as nm  # noqa: E402

__all__ = ["lif_forward", "lif_backward", "revlif_forward", "revlif_backward", "NUMBA_KERNELS", "warmup", "block_size"]

_dev = nm.compile_all(njit(inline="always", error_model="numpy"))
mul = _dev.mul
charge = _dev.charge
fire = _dev.fire
reset = _dev.reset
step_vjp = _dev.step_vjp
to_grid = _dev.to_grid
quantize_input = _dev.quantize_input
halve = _dev.halve
unhalve = _dev.unhalve

_F0 = np.float32(0.0)
_HALF = np.float32(0.5)


# ----------------------------------------------------------------------------- LIF


@njit(parallel=True, cache=True, error_model="numpy")
def _lif_fwd(x, v0, s, vT, tau, v_th, v_reset, hard, decay_input, blk):
    T, K = x.shape
    nblk = (K + blk - 1) // blk
    for bi in prange(nblk):
        j0 = bi * blk
        j1 = min(j0 + blk, K)
        v = vT[j0:j1]
        v[:] = v0[j0:j1]
        n = j1 - j0
        for t in range(T):
            xr = x[t, j0:j1]
            sr = s[t, j0:j1]
            for j in range(n):
                hh = charge(xr[j], v[j], tau, v_reset, decay_input)
                ss = fire(hh, v_th)
                sr[j] = ss
                v[j] = reset(hh, ss, v_th, v_reset, hard)


@njit(parallel=True, cache=True, error_model="numpy")
def _lif_bwd(x, v0, gs, gvT, gx, gv0, tau, v_th, v_reset, hard, decay_input, detach, in_gain, state_decay,
             kind, a, b, blk):
    """Recompute ``h`` from the saved input into ``gx`` (block-local, cache-resident), then walk back."""
    T, K = x.shape
    nblk = (K + blk - 1) // blk
    for bi in prange(nblk):
        j0 = bi * blk
        j1 = min(j0 + blk, K)
        n = j1 - j0
        g = gv0[j0:j1]
        g[:] = v0[j0:j1]  # g holds the state v during the recompute pass
        for t in range(T):
            xr = x[t, j0:j1]
            hr = gx[t, j0:j1]
            for j in range(n):
                hh = charge(xr[j], g[j], tau, v_reset, decay_input)
                hr[j] = hh
                g[j] = reset(hh, fire(hh, v_th), v_th, v_reset, hard)
        g[:] = gvT[j0:j1]
        for t in range(T - 1, -1, -1):
            gsr = gs[t, j0:j1]
            gxr = gx[t, j0:j1]
            for j in range(n):
                gxx, gvv = step_vjp(gxr[j], gsr[j], g[j], v_th, v_reset, hard, detach, in_gain, state_decay, kind, a, b)
                gxr[j] = gxx
                g[j] = gvv


# ----------------------------------------------------------------------------- RevLIF


@njit(parallel=True, cache=True, error_model="numpy")
def _revlif_fwd(x, v0, y, vT, bits, counts, tau, v_th, v_reset, hard, decay_input, exact, alpha, beta, gamma, blk):
    T, B, G, M = x.shape
    mblk = (M + blk - 1) // blk
    for unit in prange(B * mblk):
        b = unit // mblk
        m0 = (unit % mblk) * blk
        m1 = min(m0 + blk, M)
        n = m1 - m0
        for i in range(G):
            vT[b, i, m0:m1] = v0[b, i, m0:m1]
            if not exact:
                counts[b, i, m0:m1] = 0
        for t in range(T):
            tb = t >> 3
            sh = t & 7
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
                    bi_ = bits[tb, b, i, m0:m1]
                    keep = 0 if sh == 0 else 255  # first step of a byte overwrites it
                    first = i == 0  # group 1's source is the (quantized) input of group n
                    for j in range(n):
                        a = asrc[j]
                        aq = quantize_input(a)
                        a = aq if first else a
                        hh = charge(a, wsrc[j], tau, v_reset, decay_input)
                        ss = fire(hh, v_th)
                        uu = reset(hh, ss, v_th, v_reset, hard)
                        half, bit = halve(vi[j])
                        yi[j] = alpha * quantize_input(xi[j]) + ss
                        vi[j] = half + to_grid(gamma * uu)
                        bi_[j] = (bi_[j] & keep) | (int(bit) << sh)
                else:
                    ci = counts[b, i, m0:m1]
                    for j in range(n):
                        hh = charge(asrc[j], wsrc[j], tau, v_reset, decay_input)
                        ss = fire(hh, v_th)
                        uu = reset(hh, ss, v_th, v_reset, hard)
                        xv = xi[j]
                        yv = mul(alpha, xv) + ss
                        yi[j] = yv
                        vi[j] = mul(beta, vi[j]) + mul(gamma, uu)
                        if yv - mul(alpha, xv) >= _HALF:
                            ci[j] += 1


@njit(parallel=True, cache=True, error_model="numpy")
def _revlif_bwd(y, vT, bits, gy, gvT, gx, gv0, v0r, counts, xs,
                tau, v_th, v_reset, hard, decay_input, detach, exact, alpha, beta, gamma,
                in_gain, state_decay, kind, ka, kb, blk):
    T, B, G, M = y.shape
    mblk = (M + blk - 1) // blk
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
        xl = xs[b, m0:m1]
        xdummy = np.empty(n, np.float32)
        zeros = np.zeros(n, np.float32)
        for t in range(T - 1, -1, -1):
            tb = t >> 3
            sh = t & 7
            for i in range(G - 1, -1, -1):
                # every choice that depends on the group is made here, outside the neuron loop
                yi = y[t, b, i, m0:m1]
                vi = v0r[b, i, m0:m1]
                gyi = gy[t, b, i, m0:m1]
                gxi = gx[t, b, i, m0:m1]
                gvi = gv0[b, i, m0:m1]
                xdst = xl if i == G - 1 else xdummy  # group n's input feeds group 1's source
                acc = zeros if i == G - 1 else gxi  # gradient accumulated from group i + 1
                if i > 0:
                    asrc = y[t, b, i - 1, m0:m1]
                    wsrc = v0r[b, i - 1, m0:m1]
                    gx_prev = gx[t, b, i - 1, m0:m1]
                    gv_prev = gv0[b, i - 1, m0:m1]
                    gbase = zeros
                else:
                    asrc = xl
                    wsrc = v0r[b, G - 1, m0:m1]
                    gx_prev = gx[t, b, G - 1, m0:m1]
                    gv_prev = gv0[b, G - 1, m0:m1]
                    gbase = gx_prev
                if exact:
                    bi_ = bits[tb, b, i, m0:m1]
                    for j in range(n):
                        hh = charge(asrc[j], wsrc[j], tau, v_reset, decay_input)
                        ss = fire(hh, v_th)
                        uu = reset(hh, ss, v_th, v_reset, hard)
                        xdst[j] = (yi[j] - ss) / alpha
                        vi[j] = unhalve(vi[j] - to_grid(gamma * uu), np.float32((bi_[j] >> sh) & 1))
                        gyv = gyi[j] + acc[j]
                        gvv = gvi[j]
                        ga, gw = step_vjp(hh, gyv, gamma * gvv, v_th, v_reset, hard, detach, in_gain, state_decay, kind, ka, kb)
                        gxi[j] = alpha * gyv
                        gvi[j] = beta * gvv
                        gx_prev[j] = gbase[j] + ga
                        gv_prev[j] = gv_prev[j] + gw
                else:
                    ci = counts[b, i, m0:m1]
                    for j in range(n):
                        hh = charge(asrc[j], wsrc[j], tau, v_reset, decay_input)
                        ss = fire(hh, v_th)
                        uu = reset(hh, ss, v_th, v_reset, hard)
                        yv = yi[j]
                        xv = (yv - ss) / alpha
                        xdst[j] = xv
                        vi[j] = (vi[j] - mul(gamma, uu)) / beta
                        ci[j] += 1 if yv - mul(alpha, xv) >= _HALF else 0
                        gyv = gyi[j] + acc[j]
                        gvv = gvi[j]
                        ga, gw = step_vjp(hh, gyv, gamma * gvv, v_th, v_reset, hard, detach, in_gain, state_decay, kind, ka, kb)
                        gxi[j] = alpha * gyv
                        gvi[j] = beta * gvv
                        gx_prev[j] = gbase[j] + ga
                        gv_prev[j] = gv_prev[j] + gw


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


def _f(v) -> np.float32:
    return np.float32(v)


def lif_forward(x: torch.Tensor, v0: torch.Tensor, p: LIFParams):
    """LIF over ``x [T, ...]`` from ``v0 [...]``: returns ``(s, v_T)``.

    Nothing is saved: the backward recomputes ``h`` from ``x`` and ``v0`` (which autograd keeps),
    so the forward allocates only its output.
    """
    x = _check_cpu_f32(x, "x_seq")
    v0 = _check_cpu_f32(v0, "v0")
    T = x.shape[0]
    K = x.numel() // T
    s = torch.empty_like(x)
    vT = torch.empty_like(v0)
    _lif_fwd(_np(x).reshape(T, K), _np(v0).reshape(K), _np(s).reshape(T, K), _np(vT).reshape(K), _f(p.tau),
             _f(p.v_threshold), _f(p.charge_reset), bool(p.hard_reset), bool(p.decay_input), block_size(K))
    return s, vT


def lif_backward(x: torch.Tensor, v0: torch.Tensor, grad_s: torch.Tensor, grad_vT: torch.Tensor, p: LIFParams):
    """Backward of :func:`lif_forward` from its inputs: returns ``(grad_x, grad_v0)``."""
    x = _check_cpu_f32(x, "x_seq")
    v0 = _check_cpu_f32(v0, "v0")
    grad_s = _check_cpu_f32(grad_s, "grad_s")
    grad_vT = _check_cpu_f32(grad_vT, "grad_v_T")
    T = x.shape[0]
    K = x.numel() // T
    gx = torch.empty_like(x)
    gv0 = torch.empty_like(grad_vT)
    kind, a, b = nm.surrogate_constants(p.surrogate)
    _lif_bwd(_np(x).reshape(T, K), _np(v0).reshape(K), _np(grad_s).reshape(T, K), _np(grad_vT).reshape(K),
             _np(gx).reshape(T, K), _np(gv0).reshape(K), _f(p.tau), _f(p.v_threshold), _f(p.charge_reset),
             bool(p.hard_reset), bool(p.decay_input), bool(p.detach_reset), _f(p.input_gain), _f(p.state_decay),
             kind, a, b, bwd_block_size(K, T))
    return gx, gv0


def revlif_forward(xg: torch.Tensor, v0: torch.Tensor, p: RevLIFParams):
    """Kernel contract forward: ``(y, v_T, bits | None, counts | None)`` for ``xg [T, B, n, M]``."""
    xg = _check_cpu_f32(xg, "x_seq")
    v0 = _check_cpu_f32(v0, "v0")
    T, B, G, M = xg.shape
    lif = p.lif
    y = torch.empty_like(xg)
    vT = torch.empty_like(v0)
    bits = torch.empty((packed_steps(T), B, G, M) if p.exact else (1, 1, 1, 1), dtype=torch.uint8)
    counts = torch.empty((1, 1, 1) if p.exact else (B, G, M), dtype=torch.int32)
    _revlif_fwd(_np(xg), _np(v0), _np(y), _np(vT), _np(bits), _np(counts), _f(lif.tau), _f(lif.v_threshold),
                _f(lif.charge_reset), bool(lif.hard_reset), bool(lif.decay_input), bool(p.exact),
                _f(p.alpha), _f(p.beta), _f(p.gamma), block_size(M))
    return y, vT, (bits if p.exact else None), (None if p.exact else counts)


def revlif_backward(y, v_T, bits, grad_y, grad_v_T, p: RevLIFParams):
    """Kernel contract backward: ``(grad_x, grad_v0, v0_rec, counts_rec | None)``."""
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
    xs = torch.empty((B, M), dtype=torch.float32)
    kind, ka, kb = nm.surrogate_constants(lif.surrogate)
    _revlif_bwd(_np(y), _np(v_T), _np(bits), _np(grad_y), _np(grad_v_T), _np(gx), _np(gv0), _np(v0r), _np(counts), _np(xs),
                _f(lif.tau), _f(lif.v_threshold), _f(lif.charge_reset), bool(lif.hard_reset), bool(lif.decay_input),
                bool(lif.detach_reset), bool(p.exact), _f(p.alpha), _f(p.beta), _f(p.gamma),
                _f(lif.input_gain), _f(lif.state_decay), kind, ka, kb, block_size(M))
    return gx, gv0, v0r, (None if p.exact else counts)


NUMBA_KERNELS = RevLIFKernels("numba", revlif_forward, revlif_backward)


def warmup() -> None:
    """Compile (or load from the cache) every CPU kernel specialisation used at run time."""
    from ..functional.surrogate import ATan

    x = torch.randn(9, 2, 2, 3)
    for lp in (LIFParams(), LIFParams(v_reset=None, surrogate=ATan(), detach_reset=True, decay_input=False)):
        s, vT = lif_forward(x, torch.zeros(2, 2, 3), lp)
        lif_backward(x, torch.zeros(2, 2, 3), torch.ones_like(s), torch.zeros_like(vT), lp)
        for mode in ("exact", "float"):
            rp = RevLIFParams(lif=lp, mode=mode, **({} if mode == "exact" else {"beta": 0.75}))
            y, vT, bits, counts = revlif_forward(x, torch.zeros(2, 2, 3), rp)
            revlif_backward(y, vT, bits, torch.ones_like(y), torch.zeros_like(vT), rp)
