"""BatchNorm's training backward for the CPU (Numba): the two per-channel sums and the input
gradient, each one pass over ``[n, C, S]`` (samples, channels, positions) read in place.

The PyTorch form (``dy.sum(dims, dtype=torch.float64)``, ``(xhat * dy).sum(...)``, then
``da.sub_(c1).sub_(xhat.mul_(c2)).mul_(scale)``) converts each full tensor to float64 before
summing and makes four passes for the input gradient; here the sums accumulate in float64 as the
values are read and the input gradient is one pass with the same float operations in the same
order (bit-identical to the PyTorch form). The sums' order differs (they are float64 sums of
float32 values: the results agree to ~1e-16 relative).
"""

from __future__ import annotations

import numpy as np

from .config import configure_cache, configure_threading_layer

configure_cache()  # as numba_cpu does: the kernels' cache folder, before numba compiles anything

from numba import njit, prange  # noqa: E402

configure_threading_layer()

__all__ = ["grad_sums", "input_grad_"]


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
    _grad_sums(dy, xhat, s1, s2)


def input_grad_(da: np.ndarray, xhat: np.ndarray, c1: np.ndarray, c2: np.ndarray, scale: np.ndarray) -> None:
    """BatchNorm's input gradient in place of ``da [n, C, S]`` (``c1, c2, scale``: ``[C]``, ``da``'s dtype)."""
    _input_grad(da, xhat, c1, c2, scale)
