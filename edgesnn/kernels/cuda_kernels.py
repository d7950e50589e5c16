"""Fused multi-step LIF and RevLIF kernels for CUDA (``numba-cuda``), one thread per neuron.

The per-neuron math is :mod:`edgesnn.kernels.neuron_math` compiled with
``cuda.jit(device=True)``: the same source as the CPU kernels. Each thread runs the whole time
loop for its neuron (LIF) or its ``(b, m)`` column of all ``n`` groups (RevLIF), so the state stays
in registers (LIF) or in the thread's own cache lines (RevLIF).

Host wrappers take ``torch`` tensors. CUDA tensors are handed over zero-copy with
``cuda.as_cuda_array`` and the kernels are launched on PyTorch's current stream. Under the
simulator (``NUMBA_ENABLE_CUDASIM=1``, set before numba is imported) CPU tensors are accepted
too, which is how the tests run these kernels without a GPU.

Forward values equal the CPU kernels bit for bit: NVVM contracts ``a * b + c`` into an FMA by
default, so every inexact product that feeds an add goes through ``neuron_math.mul``, which this
module compiles as ``libdevice.fmul_rn`` (never contracted). Products with a 0/1 spike or a power
of two are exact either way.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from .config import configure

configure()

from numba import config as _nb_config  # noqa: E402
from numba import cuda  # noqa: E402
from numba import float32, int32, uint8, boolean  # noqa: E402

from ..functional.grid import packed_steps  # noqa: E402
from ..functional.lif import LIFParams  # noqa: E402
from ..functional.revlif import RevLIFParams  # noqa: E402
from ..functional.revlif_autograd import RevLIFKernels  # noqa: E402
from . import neuron_math as nm  # noqa: E402

__all__ = ["available", "SIMULATOR", "lif_forward", "lif_backward", "revlif_forward", "revlif_backward",
           "CUDA_KERNELS", "KERNEL_SIGNATURES", "THREADS_PER_BLOCK"]

SIMULATOR = bool(_nb_config.ENABLE_CUDASIM)
THREADS_PER_BLOCK = 256

def _mul_rn(a, b):
    return libdevice.fmul_rn(a, b)


if SIMULATOR:
    _dev = nm.compile_all(cuda.jit(device=True))
else:
    from numba.cuda import libdevice

    _dev = nm.compile_all(cuda.jit(device=True), overrides={"mul": cuda.jit(device=True)(_mul_rn)})
mul = _dev.mul
charge = _dev.charge
fire = _dev.fire
reset = _dev.reset
step_vjp = _dev.step_vjp
to_grid = _dev.to_grid
quantize_input = _dev.quantize_input
halve = _dev.halve
unhalve = _dev.unhalve

_HALF = np.float32(0.5)


def available() -> bool:
    """Whether CUDA kernels can run here (a GPU, or the simulator)."""
    if SIMULATOR:
        return True
    try:
        return bool(cuda.is_available())
    except Exception:  # pragma: no cover
        return False


# ----------------------------------------------------------------------------- kernels (Python sources)


def _lif_fwd(x, v0, s, vT, tau, v_th, v_reset, hard, decay_input):
    """``x`` is ``[T, K]``, or ``[1, K]``: the same input at every step (read from its one step)."""
    j = cuda.grid(1)
    T = s.shape[0]
    K = s.shape[1]
    bx = x.shape[0] == 1
    if j >= K:
        return
    v = v0[j]
    for t in range(T):
        hh = charge(x[0 if bx else t, j], v, tau, v_reset, decay_input)
        ss = fire(hh, v_th)
        s[t, j] = ss
        v = reset(hh, ss, v_th, v_reset, hard)
    vT[j] = v


def _lif_bwd(x, v0, gs, gvT, gx, gv0, tau, v_th, v_reset, hard, decay_input, detach, in_gain, state_decay, kind, a, b):
    """``x`` as in ``_lif_fwd``; ``gx [T, K]``."""
    j = cuda.grid(1)
    T = gx.shape[0]
    K = gx.shape[1]
    bx = x.shape[0] == 1
    if j >= K:
        return
    v = v0[j]
    for t in range(T):  # recompute h into gx
        hh = charge(x[0 if bx else t, j], v, tau, v_reset, decay_input)
        gx[t, j] = hh
        v = reset(hh, fire(hh, v_th), v_th, v_reset, hard)
    g = gvT[j]
    for tt in range(T):
        t = T - 1 - tt
        gxx, g = step_vjp(gx[t, j], gs[t, j], g, v_th, v_reset, hard, detach, in_gain, state_decay, kind, a, b)
        gx[t, j] = gxx
    gv0[j] = g


def _revlif_fwd(x, v0, y, vT, bits, counts, tau, v_th, v_reset, hard, decay_input, exact, alpha, beta, gamma):
    """``x`` is ``[T, B, G, M]``, or ``[1, B, G, M]``: the same input at every step (read from its one step)."""
    col = cuda.grid(1)
    T = y.shape[0]
    B = y.shape[1]
    G = y.shape[2]
    M = y.shape[3]
    bx = x.shape[0] == 1
    if col >= B * M:
        return
    b = col // M
    m = col % M
    for i in range(G):
        vT[b, i, m] = v0[b, i, m]
    if not exact:
        for i in range(G):
            counts[b, i, m] = 0
    for t in range(T):
        tb = t >> 3
        sh = t & 7
        tx = 0 if bx else t  # the step of x read
        for i in range(G):
            if i == 0:
                a = x[tx, b, G - 1, m]
                if exact:
                    a = quantize_input(a)
                w = vT[b, G - 1, m]
            else:
                a = y[t, b, i - 1, m]
                w = vT[b, i - 1, m]
            hh = charge(a, w, tau, v_reset, decay_input)
            ss = fire(hh, v_th)
            uu = reset(hh, ss, v_th, v_reset, hard)
            vi = vT[b, i, m]
            if exact:
                half, bit = halve(vi)
                y[t, b, i, m] = alpha * quantize_input(x[tx, b, i, m]) + ss
                vT[b, i, m] = half + to_grid(gamma * uu)
                if sh == 0:
                    bits[tb, b, i, m] = int(bit)
                else:
                    bits[tb, b, i, m] = bits[tb, b, i, m] | (int(bit) << sh)
            else:
                xv = x[tx, b, i, m]
                yv = mul(alpha, xv) + ss
                y[t, b, i, m] = yv
                vT[b, i, m] = mul(beta, vi) + mul(gamma, uu)
                if yv - mul(alpha, xv) >= _HALF:
                    counts[b, i, m] += 1


def _revlif_bwd(y, vT, bits, gy, gvT, gx, gv0, v0r, counts,
                tau, v_th, v_reset, hard, decay_input, detach, exact, alpha, beta, gamma,
                in_gain, state_decay, kind, ka, kb):
    col = cuda.grid(1)
    T = y.shape[0]
    B = y.shape[1]
    G = y.shape[2]
    M = y.shape[3]
    if col >= B * M:
        return
    b = col // M
    m = col % M
    for i in range(G):
        v0r[b, i, m] = vT[b, i, m]
        gv0[b, i, m] = gvT[b, i, m]
    if not exact:
        for i in range(G):
            counts[b, i, m] = 0
    xl = np.float32(0.0)
    for tt in range(T):
        t = T - 1 - tt
        tb = t >> 3
        sh = t & 7
        for ii in range(G):
            i = G - 1 - ii
            if i > 0:
                a = y[t, b, i - 1, m]
                w = v0r[b, i - 1, m]
            else:
                a = xl
                w = v0r[b, G - 1, m]
            hh = charge(a, w, tau, v_reset, decay_input)
            ss = fire(hh, v_th)
            uu = reset(hh, ss, v_th, v_reset, hard)
            yv = y[t, b, i, m]
            if exact:
                xv = (yv - ss) / alpha
                bit = np.float32((bits[tb, b, i, m] >> sh) & 1)
                v0r[b, i, m] = unhalve(v0r[b, i, m] - to_grid(gamma * uu), bit)
            else:
                xv = (yv - ss) / alpha
                v0r[b, i, m] = (v0r[b, i, m] - mul(gamma, uu)) / beta
                if yv - mul(alpha, xv) >= _HALF:
                    counts[b, i, m] += 1
            if i == G - 1:
                xl = xv
            gyv = gy[t, b, i, m]
            if i < G - 1:
                gyv = gyv + gx[t, b, i, m]
            gvv = gv0[b, i, m]
            ga, gw = step_vjp(hh, gyv, gamma * gvv, v_th, v_reset, hard, detach, in_gain, state_decay, kind, ka, kb)
            gx[t, b, i, m] = alpha * gyv
            gv0[b, i, m] = beta * gvv
            if i > 0:
                gx[t, b, i - 1, m] = ga
                gv0[b, i - 1, m] = gv0[b, i - 1, m] + gw
            else:
                gx[t, b, G - 1, m] = gx[t, b, G - 1, m] + ga
                gv0[b, G - 1, m] = gv0[b, G - 1, m] + gw


_f2 = float32[:, ::1]
_f1 = float32[::1]
_f4 = float32[:, :, :, ::1]
_f3 = float32[:, :, ::1]
_u4 = uint8[:, :, :, ::1]
_i3 = int32[:, :, ::1]
_b = boolean
_s = float32

#: Explicit signatures: compiled eagerly on first use, and what the PTX check compiles for each cc.
KERNEL_SIGNATURES = {
    "lif_fwd": (_lif_fwd, (_f2, _f1, _f2, _f1, _s, _s, _s, _b, _b)),
    "lif_bwd": (_lif_bwd, (_f2, _f1, _f2, _f1, _f2, _f1, _s, _s, _s, _b, _b, _b, _s, _s, int32, _s, _s)),
    "revlif_fwd": (_revlif_fwd, (_f4, _f3, _f4, _f3, _u4, _i3, _s, _s, _s, _b, _b, _b, _s, _s, _s)),
    "revlif_bwd": (_revlif_bwd, (_f4, _f3, _u4, _f4, _f3, _f4, _f3, _f3, _i3,
                                 _s, _s, _s, _b, _b, _b, _b, _s, _s, _s, _s, _s, int32, _s, _s)),
}

_KERNELS = {}


def _kernel(name):
    k = _KERNELS.get(name)
    if k is None:
        fn, sig = KERNEL_SIGNATURES[name]
        k = cuda.jit(sig)(fn) if not SIMULATOR else cuda.jit(fn)
        _KERNELS[name] = k
    return k


# ----------------------------------------------------------------------------- host wrappers


def _arr(t: torch.Tensor):
    """Device view of a tensor (zero-copy), or a NumPy array under the simulator."""
    if t.is_cuda:
        return cuda.as_cuda_array(t.detach())
    if SIMULATOR:
        return t.detach().numpy()
    raise TypeError(f"the cuda backend needs CUDA tensors (or NUMBA_ENABLE_CUDASIM=1), got a tensor on {t.device}")


_STREAMS = {}


def _stream(device):
    """numba view of PyTorch's current stream on ``device`` (cached per stream handle)."""
    handle = torch.cuda.current_stream(device).cuda_stream
    st = _STREAMS.get(handle)
    if st is None:
        st = _STREAMS[handle] = cuda.external_stream(handle)
    return st


def _launch(name, nthreads, device, *args):
    k = _kernel(name)
    blocks = max(1, -(-nthreads // THREADS_PER_BLOCK))
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        stream = _stream(device)
        if index == 0 and len(cuda.gpus) == 1:
            k[blocks, THREADS_PER_BLOCK, stream](*args)
        else:
            with cuda.gpus[index]:
                k[blocks, THREADS_PER_BLOCK, stream](*args)
    else:
        k[blocks, THREADS_PER_BLOCK](*args)


def _check(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.dtype != torch.float32:
        raise TypeError(f"{name}: the cuda backend runs float32 tensors, got {t.dtype}")
    return t.contiguous()


def lif_forward(x: torch.Tensor, v0: torch.Tensor, p: LIFParams) -> Tuple[torch.Tensor, torch.Tensor]:
    """LIF over ``x [T, ...]`` from ``v0 [...]`` (float32, CUDA): ``(s [T, ...], v_T [...])`` as
    :func:`edgesnn.kernels.numba_cpu.lif_forward`; an ``x`` expanded over time (stride 0 along T) is
    read from its first step, not copied."""
    shape = x.shape
    x = _steps_or_one(x)
    v0 = _check(v0, "v0")
    T = shape[0]
    K = x.numel() // x.shape[0] if x.shape[0] else 0
    s = torch.empty(shape, dtype=x.dtype, device=x.device)
    vT = torch.empty_like(v0)
    if K:
        _launch("lif_fwd", K, x.device, _arr(x.view(x.shape[0], K)), _arr(v0.view(K)), _arr(s.view(T, K)),
                _arr(vT.view(K)), *nm.charge_args(p))
    return s, vT


def _steps_or_one(x: torch.Tensor) -> torch.Tensor:
    """``x_seq [T, ...]`` checked and contiguous, or its first step alone (``[1, ...]``) when it is the
    same at every step (stride 0 along T), so that no ``[T, ...]`` copy is made."""
    return _check(x[:1] if x.dim() >= 1 and x.shape[0] > 1 and x.stride(0) == 0 else x, "x_seq")


def lif_backward(
    x: torch.Tensor, v0: torch.Tensor, grad_s: torch.Tensor, grad_vT: torch.Tensor, p: LIFParams
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Backward of :func:`lif_forward` from its inputs (``grad_s [T, ...]``, ``grad_vT [...]``):
    ``(grad_x [T, ...], grad_v0 [...])``; ``x`` may be expanded over time, as in :func:`lif_forward`."""
    shape = x.shape
    x = _steps_or_one(x)
    v0 = _check(v0, "v0")
    grad_s = _check(grad_s, "grad_s")
    grad_vT = _check(grad_vT, "grad_v_T")
    T = shape[0]
    K = x.numel() // x.shape[0] if x.shape[0] else 0
    gx = torch.empty(shape, dtype=x.dtype, device=x.device)
    gv0 = torch.empty_like(grad_vT)
    if K:
        _launch("lif_bwd", K, x.device, _arr(x.view(x.shape[0], K)), _arr(v0.view(K)), _arr(grad_s.view(T, K)),
                _arr(grad_vT.view(K)), _arr(gx.view(T, K)), _arr(gv0.view(K)), *nm.charge_args(p),
                bool(p.detach_reset), *nm.vjp_args(p))
    return gx, gv0


def revlif_forward(
    xg: torch.Tensor, v0: torch.Tensor, p: RevLIFParams
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Kernel contract forward (see :mod:`edgesnn.functional.revlif_autograd`): ``(y [T, B, n, M], v_T
    [B, n, M], bits | None, counts | None)`` for float32 CUDA ``xg [T, B, n, M]``, ``v0 [B, n, M]``;
    ``bits [ceil(T/8), B, n, M]`` uint8 (exact), ``counts [B, n, M]`` int32 (float). An ``xg`` expanded
    over time (stride 0 along T: one input repeated) is read from its first step, not copied."""
    shape = xg.shape
    xg = _steps_or_one(xg)
    v0 = _check(v0, "v0")
    T, B, G, M = shape
    lif = p.lif
    dev = xg.device
    y = torch.empty(shape, dtype=xg.dtype, device=dev)
    vT = torch.empty_like(v0)
    bits = torch.empty((packed_steps(T), B, G, M) if p.exact else (1, 1, 1, 1), dtype=torch.uint8, device=dev)
    counts = torch.empty((1, 1, 1) if p.exact else (B, G, M), dtype=torch.int32, device=dev)
    if B * M:
        _launch("revlif_fwd", B * M, dev, _arr(xg), _arr(v0), _arr(y), _arr(vT), _arr(bits), _arr(counts),
                *nm.charge_args(lif), *nm.mix_args(p))
    return y, vT, (bits if p.exact else None), (None if p.exact else counts)


def revlif_backward(
    y: torch.Tensor,
    v_T: torch.Tensor,
    bits: Optional[torch.Tensor],
    grad_y: torch.Tensor,
    grad_v_T: torch.Tensor,
    p: RevLIFParams,
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Kernel contract backward: ``(grad_x [T, B, n, M], grad_v0 [B, n, M], v0_rec [B, n, M], counts_rec
    [B, n, M] int32 | None)`` from ``y, grad_y [T, B, n, M]``, ``v_T, grad_v_T [B, n, M]`` and the forward's
    ``bits`` (exact mode)."""
    y = _check(y, "y")
    v_T = _check(v_T, "v_T")
    grad_y = _check(grad_y, "grad_y")
    grad_v_T = _check(grad_v_T, "grad_v_T")
    T, B, G, M = y.shape
    lif = p.lif
    dev = y.device
    if p.exact:
        if bits is None:
            raise ValueError("bits: exact mode needs the packed bits from the forward")
        bits = bits.contiguous()
    else:
        bits = torch.zeros((1, 1, 1, 1), dtype=torch.uint8, device=dev)
    gx = torch.empty_like(y)
    gv0 = torch.empty_like(v_T)
    v0r = torch.empty_like(v_T)
    counts = torch.empty((1, 1, 1) if p.exact else (B, G, M), dtype=torch.int32, device=dev)
    if B * M:
        _launch("revlif_bwd", B * M, dev, _arr(y), _arr(v_T), _arr(bits), _arr(grad_y), _arr(grad_v_T), _arr(gx),
                _arr(gv0), _arr(v0r), _arr(counts), *nm.charge_args(lif),
                bool(lif.detach_reset), *nm.mix_args(p), *nm.vjp_args(lif))
    return gx, gv0, v0r, (None if p.exact else counts)


CUDA_KERNELS = RevLIFKernels("cuda", revlif_forward, revlif_backward)
