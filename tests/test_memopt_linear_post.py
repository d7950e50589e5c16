"""A LIF before linear layers (average pooling, flatten) runs its fused backward kernel in memopt."""

import copy

import pytest
import torch
from torch import nn

import edgesnn
from edgesnn.kernels.dispatch import numba_available
from edgesnn.memopt.layers import child_steps
from edgesnn.memopt.linear_post import linear_post, post_input_grad
from edgesnn.memopt.steps import fused_kind
from edgesnn.models import build_model
from edgesnn.nn import LIF, RevLIF, SeqToANN

POSTS = [
    [nn.AvgPool2d(2)],
    [nn.AvgPool2d(3, stride=2, padding=1)],
    [nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)],
    [nn.AvgPool2d(2, ceil_mode=True)],
    [nn.AvgPool2d((2, 3), stride=(1, 2), divisor_override=5)],
    [nn.AvgPool2d(2), nn.Flatten()],
    [nn.Identity(), nn.AvgPool2d(2), nn.Flatten()],
]


def _steps(mods):
    return [s for m in mods for s in child_steps(SeqToANN(m))]


@pytest.mark.parametrize("mods", POSTS, ids=lambda ms: "-".join(type(m).__name__ for m in ms))
@pytest.mark.parametrize("hw", [(7, 9), (8, 8)])
def test_post_input_grad_is_autograds_bit_for_bit(mods, hw):
    torch.manual_seed(0)
    steps = _steps(mods)
    assert linear_post(steps)
    x = torch.rand(5, 3, *hw, requires_grad=True)
    out = x
    for m in mods:
        out = m(out)
    g = torch.randn_like(out)
    out.backward(g)
    got = post_input_grad(steps, g, x.shape)
    assert got.shape == x.shape and torch.equal(got, x.grad)


def test_only_linear_layers_running_their_own_forward_count():
    class Shifted(nn.AvgPool2d):
        def forward(self, x):
            return super().forward(x) + 1

    assert not linear_post([])
    assert not linear_post(_steps([nn.MaxPool2d(2)]))
    assert not linear_post(_steps([Shifted(2)]))
    assert not linear_post(_steps([nn.AvgPool2d(2), nn.MaxPool2d(2)]))
    assert not linear_post(_steps([nn.AdaptiveAvgPool2d(1)]))
    z = torch.rand(2, 3, 4, 6, 6)
    lif = LIF(backend="numba")
    assert fused_kind(lif, _steps([nn.AvgPool2d(2)]), z) == "lif_linear"
    assert fused_kind(lif, _steps([Shifted(2)]), z) is None
    assert fused_kind(RevLIF(), _steps([nn.AvgPool2d(2)]), z) is None
    assert fused_kind(LIF(backend="torch"), _steps([nn.AvgPool2d(2)]), z) is None
    try:
        from spikingjelly.activation_based import layer
    except ImportError:
        return
    assert fused_kind(lif, child_steps(layer.AvgPool2d(2, step_mode="m")), z) == "lif_linear"


def _grads(model, x, y):
    model.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.skipif(not numba_available(), reason="the fused kernels need numba")
@pytest.mark.parametrize("T,K,fused", [(5, 2, True), (6, 3, True), (3, None, True), (4, 4, False), (1, 1, False)])
def test_average_pool_blocks_run_fused_and_match_the_plain_model(T, K, fused, monkeypatch):
    """The built-in conv net (LIF, average pools, input repeated over T), optimized: where the
    pooled block runs chunk by chunk (several chunks, or held layer outputs: the planner's choice
    at T = 3) the fused path is taken; every way gives the plain model's loss and gradients."""
    from edgesnn.memopt import steps

    torch.manual_seed(1)
    base = build_model("convnet", (2, 12, 12), 4, T, neuron="lif", channels=(6, 8), node={"backend": "numba"})
    with torch.no_grad():
        for m in base.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(3)
    opt = copy.deepcopy(base)
    x = torch.rand(3, 2, 12, 12) * 2
    y = torch.randint(0, 4, (3,))
    ref = _grads(base, x, y)
    edgesnn.optimize_memory(opt, x, chunk=K)
    kinds = []
    real = steps._fused_backward

    def spy(kind, *args, **kw):
        kinds.append(kind)
        return real(kind, *args, **kw)

    monkeypatch.setattr(steps, "_fused_backward", spy)
    got = _grads(opt, x, y)
    assert ("lif_linear" in kinds) == fused
    assert torch.allclose(ref[0], got[0], rtol=1e-5, atol=0)
    scale = max(g.abs().max().item() for g in ref[1])
    for a, b in zip(ref[1], got[1]):
        assert (a - b).abs().max().item() <= 1e-4 * max(a.abs().max().item(), 1e-3 * scale)
