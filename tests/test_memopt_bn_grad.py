"""BatchNorm's training backward pieces (:func:`grad_sums`, :func:`input_grad_`): the Numba kernels
against the PyTorch form they replace."""

import pytest
import torch

from edgesnn.memopt import batchnorm as bnm
from edgesnn.memopt.batchnorm import channel_view, grad_sums, input_grad_, reduce_dims

SHAPES = [(64, 16, 8, 8), (7, 5, 3, 3), (9, 3, 5, 1), (10, 6), (4, 3, 1, 1)]


def _torch_sums(dy, xhat):
    dims = reduce_dims(dy)
    return dy.sum(dims, dtype=torch.float64), (xhat * dy).sum(dims, dtype=torch.float64)


def _torch_input_grad(da, xhat, c1, c2, scale):
    return da.sub_(channel_view(c1, da)).sub_(xhat.mul_(channel_view(c2, da))).mul_(channel_view(scale, da))


def _data(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    dy = torch.randn(*shape, generator=g, dtype=dtype) * 3 + 0.5
    xhat = torch.randn(*shape, generator=g, dtype=dtype)
    C = shape[1]
    c1, c2, scale = (torch.randn(C, generator=g, dtype=dtype) for _ in range(3))
    return dy, xhat, c1, c2, scale


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grad_sums_match_torch_and_leave_inputs(shape, dtype):
    dy, xhat, *_ = _data(shape, dtype)
    dy0, xhat0 = dy.clone(), xhat.clone()
    assert bnm._numba_ok(dy, xhat)  # the kernel path is the one under test
    s1, s2 = grad_sums(dy, xhat)
    r1, r2 = _torch_sums(dy, xhat)
    assert s1.dtype == s2.dtype == torch.float64 and s1.shape == (shape[1],)
    # float64 sums in another order: equal to ~1e-16 relative of the summed magnitudes
    for got, want, mag in ((s1, r1, dy.abs()), (s2, r2, (dy * xhat).abs())):
        bound = 1e-13 * mag.double().sum(reduce_dims(dy)) + 1e-300
        assert torch.all((got - want).abs() <= bound)
    assert torch.equal(dy, dy0) and torch.equal(xhat, xhat0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_input_grad_bit_identical_to_torch(shape, dtype):
    da, xhat, c1, c2, scale = _data(shape, dtype, seed=1)
    want = _torch_input_grad(da.clone(), xhat.clone(), c1, c2, scale)
    got = da.clone()
    out = input_grad_(got, xhat.clone(), c1, c2, scale)
    assert out is got
    assert torch.equal(got, want)


def test_non_contiguous_and_no_numba_take_the_torch_form(monkeypatch):
    dy, xhat, c1, c2, scale = _data((6, 4, 5, 5), torch.float32, seed=2)
    t = dy.transpose(2, 3)  # not contiguous: the torch form
    assert not bnm._numba_ok(t, xhat)
    r1, r2 = _torch_sums(t, xhat)
    s1, s2 = grad_sums(t, xhat)
    assert torch.equal(s1, r1) and torch.equal(s2, r2)
    from edgesnn.kernels import dispatch

    monkeypatch.setattr(dispatch, "numba_available", lambda: False)
    assert not bnm._numba_ok(dy, xhat)
    want = _torch_input_grad(dy.clone(), xhat.clone(), c1, c2, scale)
    assert torch.equal(input_grad_(dy.clone(), xhat.clone(), c1, c2, scale), want)


@pytest.mark.parametrize("front", ["bn_first", "flatten_bn1d", "revlif_pool_bn"])
def test_a_block_starting_with_batchnorm_leaves_its_input_alone(front):
    """A chunked block with no layer before its BatchNorm (or only a view, or behind a RevLIF whose
    output is kept dense) normalizes a fresh tensor, never its saved input: the caller's input stays
    as it was and the gradients are the plain model's."""
    import copy

    from torch import nn

    import edgesnn
    from edgesnn.nn import LIF, RevLIF, SeqToANN as S

    torch.manual_seed(0)
    if front == "bn_first":
        m = nn.Sequential(S(nn.BatchNorm2d(4)), LIF(), S(nn.Conv2d(4, 4, 3, padding=1, bias=False)), S(nn.BatchNorm2d(4)),
                          LIF(), S(nn.AvgPool2d(2)), S(nn.Flatten()), S(nn.Linear(64, 5)))
        x = torch.rand(6, 3, 4, 8, 8) * 4
    elif front == "flatten_bn1d":
        m = nn.Sequential(S(nn.Flatten()), S(nn.BatchNorm1d(48)), RevLIF(), S(nn.Linear(48, 5)))
        x = torch.rand(6, 3, 3, 4, 4) * 4
    else:
        m = nn.Sequential(S(nn.Conv2d(2, 4, 3, padding=1)), S(nn.BatchNorm2d(4)), RevLIF(), S(nn.AvgPool2d(2)),
                          S(nn.BatchNorm2d(4)), LIF(), S(nn.Flatten()), S(nn.Linear(64, 5)))
        x = torch.rand(6, 3, 2, 8, 8) * 4
    m = m.double()
    x = x.double()
    y = torch.randint(0, 5, (3,))
    opt = copy.deepcopy(m)
    edgesnn.optimize_memory(opt, x, chunk=2)
    grads = []
    for model in (m, opt):
        xx = x.clone().requires_grad_(True)
        nn.functional.cross_entropy(model(xx).mean(0), y).backward()
        assert torch.equal(xx.detach(), x)
        grads.append([xx.grad] + [p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), (a - b).abs().max()
    plain = x.clone()
    nn.functional.cross_entropy(opt(plain).mean(0), y).backward()
    assert torch.equal(plain, x)
