"""Finite inputs at the edges of a dtype's range: the plain-autograd paths (the ``reference`` backend,
ParametricLIF) give the hand-written backwards' finite gradients, and an exact-mode state too large for
the grid is named as out of bounds, not as non-finite."""

from __future__ import annotations

import warnings

import pytest
import torch

from edgesnn.kernels import dispatch
from edgesnn.nn import LIF, ParametricLIF, RevLIF

BACKENDS = ["reference", "torch"] + (["numba"] if dispatch.numba_available() else [])


def _grads(node, x, w):
    x = x.clone().requires_grad_()
    (node(x) * w).sum().backward()
    return x.grad


@pytest.mark.parametrize("dtype,x,w", [
    (torch.float32, [3e38, 0.0], [0.0, 1000.0]),  # a hard reset's grad_u * (v_reset - h) overflows float32
    (torch.float16, [2000.0, 2.0], [0.0, 200.0]),  # ... and float16 at ordinary sizes
])
def test_an_overflowed_reset_product_times_a_zero_slope_is_zero_not_nan(dtype, x, w):
    """autograd formed grad_u * (v_reset - h) = +-Inf and multiplied by the surrogate's slope, exactly 0 that far
    from the threshold: NaN in ``x.grad`` (and ParametricLIF's ``w.grad``), silently, where the torch and
    numba backends give 0."""
    x, w = torch.tensor(x, dtype=dtype).reshape(2, 1, 1), torch.tensor(w, dtype=dtype).reshape(2, 1, 1)
    want = _grads(LIF(backend="torch"), x, w)
    assert torch.isfinite(want).all()
    assert torch.equal(_grads(LIF(backend="reference"), x, w), want)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        node = ParametricLIF().to(dtype)
    assert torch.equal(_grads(node, x, w), want)
    assert torch.isfinite(node.w.grad).all()


def test_the_zero_slope_keeps_second_order_gradients():
    """The reference backend's second-order gradients (the surrogate's curvature) are unchanged where the slope
    is not 0: gradcheck-style comparison against finite differences of the first-order gradient."""
    torch.manual_seed(0)
    x = (torch.randn(3, 2, 4, dtype=torch.float64) * 2).requires_grad_()
    node = LIF(backend="reference", detach_reset=True)
    assert torch.autograd.gradgradcheck(lambda a: node(a), (x,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_exact_state_past_the_grid_range_is_out_of_bounds(backend):
    """``to_grid`` multiplies by 2^16: a finite float32 state from about 5.2e33 became Inf there and was reported
    as holding non-finite values; it is named like any state past the bound (1e30 already was)."""
    for value in (1e30, 1e34):
        node = RevLIF(stateful=True, backend=backend)
        node.v = torch.full((2, 8), value)
        with pytest.raises(ValueError, match=r"^v0: mode='exact' keeps the state within \|v\| <= 255 .* got max \|v0\| "
                                             r"(= 1e\+30|beyond 5\.192e\+33) there$"):
            node(torch.randn(3, 2, 8))
    node = RevLIF(stateful=True, backend=backend)
    node.v = torch.full((2, 8), float("inf"))
    with pytest.raises(ValueError, match=r"^RevLIF: v0 holds non-finite values \(0 NaN, 16 \+-Inf"):
        node(torch.randn(3, 2, 8))
