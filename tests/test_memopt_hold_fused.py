"""Held layer outputs (no recomputation of the convolution) and the fused LIF + 2x2 max-pool kernels.

A block may hold its layer output from the forward to the backward instead of recomputing it;
its convolution's backward then runs without autograd (:mod:`edgesnn.memopt.layer_grad`). A LIF
followed by a 2x2 max-pool runs as one kernel (:mod:`edgesnn.kernels.numba_lif_pool`). Both must
compute exactly what the unfused, recomputing path computes.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgesnn
from edgesnn.functional.lif import LIFParams
from edgesnn.functional.surrogate import ATan
from edgesnn.memopt.layer_grad import layer_backward, layer_backward_supported
from edgesnn.memopt.layers import child_steps
from edgesnn.nn import LIF, RevLIF, SeqToANN

pytest.importorskip("numba")  # a hard dependency; should it be missing, say so with a skip
from edgesnn.kernels import numba_lif_pool as pool_kernels  # noqa: E402  (edgesnn's own kernels: a broken import fails)

from test_memopt import _assert_bit_identical, _assert_close, _net, _optimized_pair, _step  # noqa: E402

_PARAMS = [LIFParams(), LIFParams(v_reset=None, surrogate=ATan(), detach_reset=True, decay_input=False)]


@pytest.mark.parametrize("p", _PARAMS)
@pytest.mark.parametrize("shape", [(4, 3, 5, 8, 8), (3, 2, 5, 7, 9), (5, 2, 1, 2, 3)])
def test_fused_lif_pool2_is_bit_identical_to_lif_then_max_pool(p, shape):
    from edgesnn.kernels import dispatch

    torch.manual_seed(0)
    T, B, C, H, W = shape
    z = torch.randn(shape) * 2
    v0 = torch.randn(B, C, H, W) * 0.5
    g = torch.randn(T, B, C, H // 2, W // 2)
    gv = torch.randn(B, C, H, W)
    zl, vl = z.clone().requires_grad_(), v0.clone().requires_grad_()
    s, vT = dispatch.lif_multistep(zl, p, vl, "numba")
    o = F.max_pool2d(s.reshape(T * B, C, H, W), 2).reshape(T, B, C, H // 2, W // 2)
    torch.autograd.backward([o, vT], [g, gv])
    o2, vT2 = pool_kernels.lif_pool2_forward(z, v0, p)
    gx, gv0 = pool_kernels.lif_pool2_backward(z, v0, g, gv, p)
    assert torch.equal(o, o2) and torch.equal(vT, vT2)
    assert torch.equal(zl.grad, gx) and torch.equal(vl.grad, gv0)
    # a pooled gradient that is the same at every step may come as one [1, ...] row
    gx1, _ = pool_kernels.lif_pool2_backward(z, v0, g[:1], gv, p)
    gx2, _ = pool_kernels.lif_pool2_backward(z, v0, g[:1].expand_as(g).contiguous(), gv, p)
    assert torch.equal(gx1, gx2)


@pytest.mark.parametrize("p", _PARAMS)
@pytest.mark.parametrize("T", [1, 5])
def test_kernels_read_an_input_expanded_over_time_as_its_copy(p, T):
    """A repeated-input block hands its node ``z0`` expanded over T (stride 0): the LIF and fused
    LIF+pool kernels read its first step at every step, with the results of the materialised copy."""
    from edgesnn.kernels import numba_cpu

    torch.manual_seed(1)
    z0 = torch.randn(2, 3, 6, 5) * 2
    z = z0.unsqueeze(0).expand(T, *z0.shape)
    zc = z.contiguous()
    v0 = torch.randn_like(z0) * 0.5
    gv = torch.randn_like(z0)
    gp = torch.randn(T, 2, 3, 3, 2)
    gs = torch.randn(T, *z0.shape)
    for fwd, bwd, g in ((pool_kernels.lif_pool2_forward, pool_kernels.lif_pool2_backward, gp),
                        (numba_cpu.lif_forward, numba_cpu.lif_backward, gs)):
        o, vT = fwd(z, v0, p)
        oc, vTc = fwd(zc, v0, p)
        gx, gv0 = bwd(z, v0, g, gv, p)
        gxc, gv0c = bwd(zc, v0, g, gv, p)
        assert o.shape == oc.shape and torch.equal(o, oc) and torch.equal(vT, vTc)
        assert gx.shape == zc.shape and torch.equal(gx, gxc) and torch.equal(gv0, gv0c)
        # summed over time inside the kernel: the input gradient of the one repeated input
        acc = torch.randn_like(z0)
        want = acc.clone()
        for t in range(T - 1, -1, -1):  # the kernel's order: last step first, float32
            want += gxc[t]
        gsum, gv0s = bwd(z, v0, g, gv, p, sum_into=acc)
        assert gsum is acc and torch.equal(acc, want) and torch.equal(gv0s, gv0c)
    with pytest.raises(ValueError, match="sum_into"):
        numba_cpu.lif_backward(z, v0, gs, gv, p, sum_into=torch.zeros(3))


def test_fused_kernels_report_non_finite_values():
    z = torch.randn(3, 1, 2, 4, 4)
    z[1, 0, 1, 2, 2] = float("nan")
    fin: list = []
    pool_kernels.lif_pool2_forward(z, torch.zeros(1, 2, 4, 4), LIFParams(), finite=fin)
    assert fin == [False]


@pytest.mark.parametrize("layer,shape", [
    (nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=True), (5, 4, 9, 7)),
    (nn.Conv1d(3, 5, 2, dilation=2), (4, 3, 11)),
    (nn.Linear(7, 3), (6, 7)),
])
def test_layer_backward_matches_autograd(layer, shape):
    torch.manual_seed(1)
    step = child_steps(SeqToANN(layer))[0]
    assert layer_backward_supported(step)
    x = torch.randn(shape, requires_grad=True)
    out = layer(x)
    g = torch.randn_like(out)
    out.backward(g)
    ref = [x.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad(set_to_none=True)
    gx = layer_backward(layer, x.detach(), g, True)
    got = [gx] + [p.grad for p in layer.parameters()]
    for a, b in zip(ref, got):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_layer_backward_refuses_what_it_cannot_do():
    steps = child_steps(SeqToANN(nn.Conv2d(2, 2, 3, padding="same")))
    assert not layer_backward_supported(steps[0])
    steps = child_steps(SeqToANN(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")))
    assert not layer_backward_supported(steps[0])


def _held(model):
    for block in model._memopt_blocks:
        block.hold = True
        block.keep = 0
    return model


@pytest.mark.parametrize("node", [LIF, RevLIF])
@pytest.mark.parametrize("T,K,static", [(7, 3, False), (7, 7, False), (6, 4, True)])
def test_held_blocks_equal_the_plain_model_float64(node, T, K, static):
    torch.manual_seed(2)
    base = _net(node).double()
    opt = copy.deepcopy(base)
    x0 = torch.rand(3, 2, 9, 9, dtype=torch.float64) * 2
    x = x0.unsqueeze(0).expand(T, *x0.shape) if static else torch.rand(T, 3, 2, 9, 9, dtype=torch.float64) * 2
    y = torch.randint(0, 5, (3,))
    ref = _step(base, x, y)
    edgesnn.optimize_memory(opt, x, chunk=K)
    _assert_close(ref, _step(_held(opt), x, y), 1e-10)


def test_holding_changes_no_bit_of_the_chunked_path():
    """The held layer output is the one the recomputation would make (same kernel, same chunk),
    and the layer's backward is the kernel autograd calls: loss and gradients equal bit for bit."""
    recompute, held, x, y = _optimized_pair(3, chunk=3)
    _assert_bit_identical(_step(recompute, x, y), _step(_held(held), x, y), buffers=True)


def test_planner_holds_where_the_peak_allows_and_never_with_a_forced_chunk():
    torch.manual_seed(4)
    x = torch.rand(16, 8, 2, 8, 8)
    model = _net(LIF, channels=(16, 32, 32))
    plan = edgesnn.optimize_memory(model, x)
    holds = [b.hold for b in model._memopt_blocks]
    assert holds == [c.hold for c in plan.blocks]
    assert any(holds) and "hold" in str(plan)
    # the plan's peak counts the held bytes; holding is predicted faster
    from edgesnn.planner import network as N

    shapes = [N.block_shape(b, i) for i, b in enumerate(model._memopt_blocks)]
    chunks, keeps = [b.chunk for b in model._memopt_blocks], [b.keep for b in model._memopt_blocks]
    assert N.predict_peak(shapes, chunks, keeps=keeps, holds=holds)[0] == plan.peak_bytes
    assert plan.peak_bytes <= N.plan_target(shapes, None)
    assert N.predict_time(shapes, chunks, keeps, holds) < N.predict_time(shapes, chunks, keeps)
    forced = _net(LIF, channels=(16, 32, 32))
    edgesnn.optimize_memory(forced, x, chunk=4)
    assert not any(b.hold for b in forced._memopt_blocks)


def test_fused_kernel_only_where_it_computes_what_the_layers_would():
    from edgesnn.memopt.steps import fused_kind

    class Shifted(nn.MaxPool2d):
        def forward(self, x):
            return super().forward(x) + 1

    z = torch.rand(2, 3, 4, 6, 6)
    lif = LIF(backend="numba")
    assert fused_kind(lif, child_steps(SeqToANN(nn.MaxPool2d(2))), z) == "pool2"
    assert fused_kind(lif, [], z) == "lif"
    assert fused_kind(lif, child_steps(SeqToANN(Shifted(2))), z) is None  # its own forward runs
    assert fused_kind(lif, child_steps(SeqToANN(nn.MaxPool2d(3))), z) is None
    assert fused_kind(lif, child_steps(SeqToANN(nn.MaxPool2d(2, ceil_mode=True))), z) is None
    assert fused_kind(LIF(backend="torch"), child_steps(SeqToANN(nn.MaxPool2d(2))), z) is None
    assert fused_kind(RevLIF(), child_steps(SeqToANN(nn.MaxPool2d(2))), z) is None
    assert fused_kind(lif, child_steps(SeqToANN(nn.MaxPool2d(2))), z.double()) is None
    try:
        from spikingjelly.activation_based import layer
    except ImportError:
        return
    assert fused_kind(lif, child_steps(layer.MaxPool2d(2, step_mode="m")), z) == "pool2"
