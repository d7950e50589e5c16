"""The CPU kernels' reused output buffers (:mod:`edgesnn.kernels.buffers`), their fused NaN/Inf
checks, and the per-step gradient that is the same at every step (``y.sum()``)."""

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

from edgesnn.functional.checks import NonFiniteGradientError, NonFiniteInputError  # noqa: E402
from edgesnn.kernels import buffers  # noqa: E402
from _pool_state import isolated_pool  # noqa: E402  (tests/ helper)
from edgesnn.kernels import dispatch  # noqa: E402
from edgesnn.functional.lif import LIFParams  # noqa: E402
from edgesnn.functional.revlif import RevLIFParams  # noqa: E402
from edgesnn.nn import LIF, RevLIF  # noqa: E402

BIG = (4, 8, 1 << 14)  # 2 MiB float32: pooled


@pytest.fixture(autouse=True)
def _pool():
    with isolated_pool(64 << 20):
        yield


def test_buffer_reused_only_when_nothing_refers_to_it():
    a = buffers.empty(BIG)
    ptr = a.data_ptr()
    assert a._base is None and a.is_contiguous() and a.shape == BIG
    b = buffers.empty(BIG)
    assert b.data_ptr() != ptr  # a is alive
    view = a[1]
    arr = a.numpy()
    del a
    c = buffers.empty(BIG)
    assert c.data_ptr() not in (ptr, b.data_ptr())  # a view and a NumPy array still refer to it
    del view
    d = buffers.empty(BIG)
    assert d.data_ptr() != ptr
    del arr
    e = buffers.empty(BIG)
    assert e.data_ptr() == ptr  # now free: reused
    small = buffers.empty((4, 4))
    assert small.untyped_storage().nbytes() == 64  # small outputs come from the allocator


def test_pool_limit_and_release():
    buffers.set_pool_limit(0)
    a = buffers.empty(BIG)
    ptr = a.data_ptr()
    del a
    assert buffers.pool_bytes() == 0
    buffers.set_pool_limit(3 << 20)  # room for one 2 MiB buffer
    x, y = buffers.empty(BIG), buffers.empty(BIG)
    assert buffers.pool_bytes() == 2 << 20
    del x, y
    assert buffers.release() == 2 << 20 and buffers.pool_bytes() == 0
    with pytest.raises(ValueError, match="max_bytes"):
        buffers.set_pool_limit(-1)
    del ptr


@pytest.mark.parametrize("node_cls", [LIF, RevLIF])
def test_outputs_kept_by_the_caller_are_never_overwritten(node_cls):
    torch.manual_seed(0)
    node = node_cls(backend="numba")
    x1, x2 = torch.randn(BIG) + 0.5, torch.randn(BIG) + 0.5
    xa = x1.clone().requires_grad_()
    y1 = node(xa)
    y1.sum().backward()
    keep_y, keep_g = y1.detach().clone(), xa.grad.clone()
    for _ in range(3):  # later steps reuse freed buffers, never the ones still held
        xb = x2.clone().requires_grad_()
        node(xb).sum().backward()
    assert torch.equal(y1.detach(), keep_y) and torch.equal(xa.grad, keep_g)
    # and the same step again gives the same values
    xc = x1.clone().requires_grad_()
    y3 = node(xc)
    y3.sum().backward()
    assert torch.equal(y3.detach(), keep_y) and torch.equal(xc.grad, keep_g)


@pytest.mark.parametrize("node_cls", [LIF, RevLIF])
def test_constant_over_time_gradient_equals_full_gradient(node_cls):
    torch.manual_seed(1)
    node = node_cls(backend="numba")
    x0 = torch.randn(6, 3, 40) + 0.5
    xa = x0.clone().requires_grad_()
    node(xa).sum().backward()  # grad of the output: ones expanded (stride 0)
    xb = x0.clone().requires_grad_()
    node(xb).backward(torch.ones(6, 3, 40))  # the same values, contiguous
    assert torch.equal(xa.grad, xb.grad)
    row = torch.randn(1, 3, 40)
    xc = x0.clone().requires_grad_()
    node(xc).backward(row.expand(6, 3, 40))  # one step's gradient broadcast along time
    xd = x0.clone().requires_grad_()
    node(xd).backward(row.expand(6, 3, 40).contiguous())
    assert torch.equal(xc.grad, xd.grad)


@pytest.mark.parametrize("where", ["first", "last", "middle"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("kind", ["lif", "revlif-exact", "revlif-float"])
def test_fused_input_check_sees_every_element(kind, value, where):
    T, B, N = 5, 3, 3000  # several blocks
    x = torch.randn(T, B, N)
    idx = {"first": (0, 0, 0), "last": (T - 1, B - 1, N - 1), "middle": (2, 1, 1537)}[where]
    x[idx] = value
    if kind == "lif":
        run = lambda: dispatch.lif_multistep(x, LIFParams(), None, "numba")  # noqa: E731
        layer = "LIF"
    else:
        p = RevLIFParams(groups=3, mode=kind.split("-")[1], **({"beta": 0.75} if kind.endswith("float") else {}))
        run = lambda: dispatch.revlif_multistep(x, p, None, "numba")  # noqa: E731
        layer = "RevLIF"
    with pytest.raises(NonFiniteInputError, match=rf"{layer}: x_seq holds non-finite values"):
        run()


@pytest.mark.parametrize("kind", ["lif", "revlif"])
def test_fused_gradient_check(kind):
    x = torch.randn(4, 2, 3000, requires_grad=True)
    if kind == "lif":
        y, vT = dispatch.lif_multistep(x, LIFParams(), None, "numba")
    else:
        y, vT = dispatch.revlif_multistep(x, RevLIFParams(groups=2), None, "numba")
    g = torch.zeros_like(y)
    g[3, 1, 2999] = float("inf")
    with pytest.raises(NonFiniteGradientError, match="incoming gradient"):
        y.backward(g, retain_graph=True)
    assert x.grad is None
    y.backward(torch.ones_like(y))  # a finite gradient after that still works
    assert torch.isfinite(x.grad).all()


def test_finite_flags_helper():
    from edgesnn.kernels.numba_cpu import all_finite_flags

    assert all_finite_flags(np.zeros(3, np.float32))
    assert not all_finite_flags(np.array([0, np.nan, 0], np.float32))
    assert all_finite_flags(np.zeros(0, np.float32))
