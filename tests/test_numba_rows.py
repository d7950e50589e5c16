"""``edgesnn.kernels.numba_rows.row``: the borrowed row view the RevLIF kernels use instead of slices."""

from __future__ import annotations

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
