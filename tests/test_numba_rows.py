"""The RevLIF kernels' row helpers: ``edgesnn.kernels.numba_rows.row`` (the borrowed row view they use
instead of slices) and the prefetch requests of ``edgesnn.kernels.numba_prefetch``."""

from __future__ import annotations

import platform

import numpy as np
import pytest

pytest.importorskip("numba")
from numba import njit  # noqa: E402
from numba.core.errors import TypingError  # noqa: E402

from edgesnn.kernels.numba_rows import row  # noqa: E402


@njit
def _row_sum_and_scale(a, index, start, stop, k):
    """Sum of ``row(a, index, start, stop)`` before the row is scaled in place by ``k``."""
    r = row(a, index, start, stop)
    tot = 0.0
    for j in range(r.shape[0]):
        tot += r[j]
        r[j] = r[j] * k
    return tot, r.shape[0]


@pytest.mark.parametrize("shape, index", [((7,), ()), ((3, 9), (2,)), ((2, 3, 11), (1, 2)), ((3, 2, 2, 13), (2, 0, 1))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
def test_row_reads_and_writes_the_same_elements_as_a_slice(shape, index, dtype):
    a = (np.arange(np.prod(shape)) % 97).astype(dtype).reshape(shape)
    ref = a.copy()
    start, stop = 2, shape[-1] - 1
    tot, n = _row_sum_and_scale(a, index, start, stop, dtype(2))
    view = ref[index + (slice(start, stop),)]
    assert n == view.shape[0] == stop - start
    assert tot == float(view.astype(np.float64).sum())
    view *= dtype(2)  # the same elements changed in place, nothing else
    assert np.array_equal(a, ref)


def test_row_of_an_empty_range_is_empty():
    a = np.ones((2, 5), np.float32)
    tot, n = _row_sum_and_scale(a, (1,), 3, 3, np.float32(0))
    assert (tot, n) == (0.0, 0) and np.all(a == 1)


def test_row_refuses_non_contiguous_arrays_and_wrong_index_lengths():
    with pytest.raises(TypingError):
        _row_sum_and_scale(np.ones((4, 6), np.float32).T, (1,), 0, 2, np.float32(1))  # Fortran order
    with pytest.raises(TypingError):
        _row_sum_and_scale(np.ones((4, 6), np.float32)[:, ::2], (1,), 0, 2, np.float32(1))  # strided
    with pytest.raises(TypingError):
        _row_sum_and_scale(np.ones((2, 4, 6), np.float32), (1,), 0, 2, np.float32(1))  # one leading index short


def test_prefetch_helpers_emit_prefetches_and_change_nothing():
    """``prefetch_row_read`` / ``prefetch_row_write`` compile to the core's prefetch instructions
    and leave every value as it was (empty rows, byte rows and strided views included)."""
    from edgesnn.kernels.numba_prefetch import prefetch_row_read, prefetch_row_write

    @njit(cache=False)
    def touch(a, bits):
        for t in range(a.shape[0]):
            prefetch_row_read(a[t])
            prefetch_row_write(a[t, ::3])
            prefetch_row_read(a[t, :0])
            prefetch_row_write(bits[t])
        return a.sum(), bits.sum()

    a = np.arange(4 * 1000, dtype=np.float32).reshape(4, 1000)
    bits = (np.arange(4 * 300) % 251).astype(np.uint8).reshape(4, 300)
    a0, bits0 = a.copy(), bits.copy()
    total, nbits = touch(a, bits)
    assert total == a0.sum() and nbits == bits0.sum()
    assert np.array_equal(a, a0) and np.array_equal(bits, bits0)
    asm = next(iter(touch.inspect_asm().values())).lower()
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        # a write prefetch is prefetchw where the core has it (x86-64 since ~2014), else prefetcht0
        assert "prefetcht0" in asm and ("prefetchw" in asm or asm.count("prefetcht0") >= 2)
    elif machine in ("aarch64", "arm64"):
        assert "prfm" in asm
    else:
        pytest.skip(f"no prefetch instruction names known for {machine}")
