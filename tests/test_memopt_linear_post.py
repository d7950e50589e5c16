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
@pytest.mark.parametrize("T,K", [(5, 2), (6, 3), (3, None), (4, 4), (1, 1)])
def test_average_pool_blocks_run_fused_and_match_the_plain_model(T, K, monkeypatch):
    """The built-in conv net (LIF, average pools, input repeated over T), optimized: the pooled
    block's backward takes the fused path whether it runs chunk by chunk (several chunks, or held
    layer outputs: the planner's choice at T = 3) or in one chunk (K = T: it used to run node and
    pool under autograd there, beside the layers' recomputed chunk); every way gives the plain
    model's loss and gradients."""
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
    assert "lif_linear" in kinds
    assert torch.allclose(ref[0], got[0], rtol=1e-5, atol=0)
    scale = max(g.abs().max().item() for g in ref[1])
    for a, b in zip(ref[1], got[1]):
        assert (a - b).abs().max().item() <= 1e-4 * max(a.abs().max().item(), 1e-3 * scale)


@pytest.mark.skipif(not numba_available(), reason="the fused kernels need numba")
@pytest.mark.parametrize("hooked", ["avg_forward_hook", "identity_pre_hook", "max_forward_hook", "instance_forward",
                                    "node_forward_hook", "wrapper_forward_hook", "divisor_override"])
def test_layers_with_hooks_run_as_they_are(hooked):
    """A pooling (or identity) with a forward hook, a pre-hook or its own ``forward`` on the instance
    computes something else than its class's forward: no kernel stands in for it (neither the fused
    LIF + max-pool nor the linear-layer backward) and its output is not packed as spike counts; a
    hooked node or wrapper is left as it is; an average pool with another divisor is not packed as
    counts either. The optimized model gets the plain model's gradients every time."""
    torch.manual_seed(2)
    pool = nn.MaxPool2d(2) if hooked.startswith("max") else nn.AvgPool2d(2, divisor_override=3 if hooked == "divisor_override" else None)
    extra, node, wrapper = nn.Identity(), LIF(backend="numba"), SeqToANN(pool)
    if hooked in ("avg_forward_hook", "max_forward_hook"):
        pool.register_forward_hook(lambda m, i, o: o * 3.0)
    elif hooked == "identity_pre_hook":
        extra.register_forward_pre_hook(lambda m, i: (i[0] * 0.5,))
    elif hooked == "instance_forward":
        plain = pool.forward
        pool.forward = lambda x: plain(x) * 2.0
    elif hooked == "node_forward_hook":
        node.register_forward_hook(lambda m, i, o: o * 0.5)
    elif hooked == "wrapper_forward_hook":
        wrapper.register_forward_hook(lambda m, i, o: o * o + o)  # (not affine: BatchNorm would undo that)
    mods = [SeqToANN(nn.Conv2d(2, 6, 3, padding=1)), SeqToANN(nn.BatchNorm2d(6)), node]
    mods += [SeqToANN(extra)] if hooked == "identity_pre_hook" else []
    mods += [wrapper, SeqToANN(nn.Conv2d(6, 4, 1)), SeqToANN(nn.BatchNorm2d(4)), LIF(backend="numba"),
             SeqToANN(nn.Flatten()), SeqToANN(nn.Linear(64, 5))]
    base = nn.Sequential(*mods)
    with torch.no_grad():
        base[0].module.weight.mul_(3)
    opt = copy.deepcopy(base)
    x = torch.rand(4, 3, 2, 9, 9) * 2
    base(x).square().sum().backward()
    edgesnn.optimize_memory(opt, x, chunk=2)
    block = opt._memopt_blocks[0]
    if block.node is node:  # a hooked node or wrapper is left out of the blocks altogether
        assert hooked not in ("node_forward_hook", "wrapper_forward_hook")
        assert fused_kind(block.node, block.post, torch.zeros(2, 3, 6, 9, 9)) is None or hooked == "divisor_override"
    opt(x).square().sum().backward()
    scale = max(p.grad.abs().max().item() for p in base.parameters())
    for a, b in zip(base.parameters(), opt.parameters()):  # (the conv bias before BatchNorm: ~0)
        assert (a.grad - b.grad).abs().max() <= 1e-4 * max(a.grad.abs().max().item(), 1e-2 * scale)


def test_planner_counts_an_average_pool_on_a_gpu_as_run_under_autograd():
    """The fused kernels are CPU ones: a block traced on another device is planned as node and
    pooling under autograd (the runtime's path there), whatever the CPU probe would say."""
    from edgesnn.planner.network_model import block_shape

    net = nn.Sequential(SeqToANN(nn.Conv2d(2, 4, 3, padding=1)), SeqToANN(nn.BatchNorm2d(4)), LIF(backend="auto"),
                        SeqToANN(nn.AvgPool2d(2)), SeqToANN(nn.Flatten()), SeqToANN(nn.Linear(16, 3)))
    edgesnn.optimize_memory(net, torch.rand(3, 2, 2, 4, 4), chunk=1)
    block = net._memopt_blocks[0]
    cpu = block_shape(block, 0)
    block.trace["device"] = "cuda"
    gpu = block_shape(block, 0)
    assert gpu.unfused_pool and gpu.pool_autograd
    assert cpu.unfused_pool and cpu.pool_autograd == (not numba_available())
