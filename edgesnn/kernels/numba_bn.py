"""BatchNorm in training mode for the CPU (Numba), over ``[n, C, S]`` (samples, channels,
positions) read in place: the exact statistics of :class:`edgesnn.memopt.batchnorm.ExactStats`
(``seq_sum``, ``seq_sqdev``), and the backward's two per-channel sums and input gradient.

The backward, each one pass: the PyTorch form (``dy.sum(dims, dtype=torch.float64)``, ``(xhat * dy).sum(...)``, then
``da.sub_(c1).sub_(xhat.mul_(c2)).mul_(scale)``) converts each full tensor to float64 before
summing and makes four passes for the input gradient; here the sums accumulate in float64 as the
values are read and the input gradient is one pass with the same float operations in the same
order (bit-identical to the PyTorch form). The sums' order differs (they are float64 sums of
float32 values: the results agree to ~1e-16 relative).
"""

from __future__ import annotations

import numpy as np

from .config import configure

configure()  # as numba_cpu does: NUMBA_NUM_THREADS, cache folder, wide vectors, fork guard, before any kernel

from numba import njit, prange  # noqa: E402

from .launch import launch  # noqa: E402

__all__ = ["seq_sum", "seq_sqdev", "grad_sums", "input_grad_"]


# prange over groups of 8 channels, 8 independent float64 chains per thread (the adds are
# latency-bound: 8 chains run ~2x faster than 4 on large planes); each channel's own order is
# PyTorch's: sample by sample, position by position.
@njit(parallel=True, cache=True)
def seq_sum(a: np.ndarray, acc: np.ndarray, repeat: int) -> None:
    """``acc[c] +=`` the sum of channel ``c`` of ``a [n, C, S]`` (contiguous), read ``repeat`` times; ``acc``:
    float64 ``[C]``, updated in place, each channel summed in PyTorch's order."""
    n, C, S = a.shape
    for g in prange((C + 7) // 8):
        c = 8 * g
        if c + 8 <= C:
            s0, s1, s2, s3 = acc[c], acc[c + 1], acc[c + 2], acc[c + 3]
            s4, s5, s6, s7 = acc[c + 4], acc[c + 5], acc[c + 6], acc[c + 7]
            for ri in range(repeat * n):
                i = ri % n
                for j in range(S):
                    s0 += a[i, c, j]
                    s1 += a[i, c + 1, j]
                    s2 += a[i, c + 2, j]
                    s3 += a[i, c + 3, j]
                    s4 += a[i, c + 4, j]
                    s5 += a[i, c + 5, j]
                    s6 += a[i, c + 6, j]
                    s7 += a[i, c + 7, j]
            acc[c], acc[c + 1], acc[c + 2], acc[c + 3] = s0, s1, s2, s3
            acc[c + 4], acc[c + 5], acc[c + 6], acc[c + 7] = s4, s5, s6, s7
        else:
            for cc in range(c, C):
                s = acc[cc]
                for ri in range(repeat * n):
                    i = ri % n
                    for j in range(S):
                        s += a[i, cc, j]
                acc[cc] = s

@njit(inline="always")
def _sq(x, m):
    d = x - m
    return d * d

@njit(parallel=True, cache=True)
def seq_sqdev(a: np.ndarray, mean: np.ndarray, acc: np.ndarray, repeat: int) -> None:
    """``acc[c] +=`` the sum of ``(a - mean[c])^2`` over channel ``c`` of ``a [n, C, S]``, read ``repeat``
    times (difference and square in ``a``'s dtype, ``mean [C]`` in it too); ``acc``: float64 ``[C]``, in place."""
    n, C, S = a.shape
    for g in prange((C + 7) // 8):
        c = 8 * g
        if c + 8 <= C:
            m0, m1, m2, m3 = mean[c], mean[c + 1], mean[c + 2], mean[c + 3]
            m4, m5, m6, m7 = mean[c + 4], mean[c + 5], mean[c + 6], mean[c + 7]
            s0, s1, s2, s3 = acc[c], acc[c + 1], acc[c + 2], acc[c + 3]
            s4, s5, s6, s7 = acc[c + 4], acc[c + 5], acc[c + 6], acc[c + 7]
            for ri in range(repeat * n):
                i = ri % n
                for j in range(S):
                    s0 += _sq(a[i, c, j], m0)
                    s1 += _sq(a[i, c + 1, j], m1)
                    s2 += _sq(a[i, c + 2, j], m2)
                    s3 += _sq(a[i, c + 3, j], m3)
                    s4 += _sq(a[i, c + 4, j], m4)
                    s5 += _sq(a[i, c + 5, j], m5)
                    s6 += _sq(a[i, c + 6, j], m6)
                    s7 += _sq(a[i, c + 7, j], m7)
            acc[c], acc[c + 1], acc[c + 2], acc[c + 3] = s0, s1, s2, s3
            acc[c + 4], acc[c + 5], acc[c + 6], acc[c + 7] = s4, s5, s6, s7
        else:
            for cc in range(c, C):
                m = mean[cc]
                s = acc[cc]
                for ri in range(repeat * n):
                    i = ri % n
                    for j in range(S):
                        s += _sq(a[i, cc, j], m)
                acc[cc] = s


@njit(parallel=True, cache=True, fastmath={"reassoc", "nsz"})
def _grad_sums(dy, xhat, s1, s2):
    """``s1[c] += sum(dy[:, c])``, ``s2[c] += sum(dy[:, c] * xhat[:, c])`` (product in the values'
    dtype, sums in float64; reassociated so the sums vectorize)."""
    n, C, S = dy.shape
    for c in prange(C):
        a1 = 0.0
        a2 = 0.0
        for i in range(n):
            d = dy[i, c]
            h = xhat[i, c]
            for j in range(S):
                a1 += d[j]
                a2 += d[j] * h[j]
        s1[c] += a1
        s2[c] += a2


@njit(parallel=True, cache=True)
def _input_grad(da, xhat, c1, c2, scale):
    """In place: ``da = ((da - c1) - xhat * c2) * scale`` per channel, each operation rounded."""
    n, C, S = da.shape
    for task in prange(n * C):
        i = task // C
        c = task - i * C
        a = c1[c]
        b = c2[c]
        k = scale[c]
        d = da[i, c]
        h = xhat[i, c]
        for j in range(S):
            d[j] = ((d[j] - a) - h[j] * b) * k


def grad_sums(dy: np.ndarray, xhat: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> None:
    """Add ``dy [n, C, S]``'s per-channel sums to ``s1`` and of ``dy * xhat`` to ``s2`` (float64 ``[C]``)."""
    launch(_grad_sums)(dy, xhat, s1, s2)


def input_grad_(da: np.ndarray, xhat: np.ndarray, c1: np.ndarray, c2: np.ndarray, scale: np.ndarray) -> None:
    """BatchNorm's input gradient in place of ``da [n, C, S]`` (``c1, c2, scale``: ``[C]``, ``da``'s dtype)."""
    launch(_input_grad)(da, xhat, c1, c2, scale)
