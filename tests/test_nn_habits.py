"""The habits SpikingJelly users bring: step modes and carried state, reset_net, surrogate_function=,
SpikingJelly's surrogates, a learnable tau (ParametricLIF), SeqToANN(conv, bn)."""

import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from edgesnn.functional import ATan, Sigmoid
from edgesnn.functional import surrogate as esg
from edgesnn.kernels import dispatch
from edgesnn.nn import LIF, ParametricLIF, RevLIF, SeqToANN
from conftest import rel_err

sj = pytest.importorskip("spikingjelly.activation_based")
from spikingjelly.activation_based import functional as sjf  # noqa: E402
from spikingjelly.activation_based import layer as sjl  # noqa: E402
from spikingjelly.activation_based import neuron as sjn  # noqa: E402
from spikingjelly.activation_based import surrogate as sjs  # noqa: E402

BACKENDS = ["torch", "reference"] + (["numba"] if dispatch.numba_available() else [])
CHUNKS = (3, 1, 4)  # T = 8 streamed as 3 calls


def _node(kind: str, backend: str, **kw):
    kw.setdefault("step_mode", "m")  # the [8, 3, 4, 5] inputs are [T, B, N, L] (said explicitly: no warning)
    if kind == "lif":
        return LIF(backend=backend, **kw)
    if kind == "revlif-float":
        return RevLIF(groups=2, mode="float", backend=backend, **kw)
    return RevLIF(groups=2, backend=backend, **kw)


def _input(kind: str, requires_grad: bool = True) -> torch.Tensor:
    x = torch.randn(8, 3, 4, 5) * 1.5 + 0.6
    return x.requires_grad_(requires_grad)


def _weighted_loss(out: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    w = torch.linspace(-1.0, 1.0, out[0].numel()).reshape(out.shape[1:])
    return (out * w).sum() + (v * w).sum() * 0.5


# ----------------------------------------------------------------------------- 1. state across calls


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["lif", "revlif", "revlif-float"])
def test_streaming_chunks_equal_one_call(kind, backend):
    """stateful=True multi-step calls over chunks == one call over all T: outputs, final state and
    gradients (which flow back through the carried state, across calls)."""
    x = _input(kind)
    full = _node(kind, backend)
    out_full = full(x)
    assert not hasattr(full, "_v") or full._v is None  # default multi-step: nothing carried
    ref_node = _node(kind, backend, stateful=True)
    out_ref = ref_node(x)
    v_full = ref_node.v
    _weighted_loss(out_ref, v_full).backward()
    g_full = x.grad.clone()
    assert torch.equal(out_full, out_ref)

    x.grad = None
    node = _node(kind, backend, stateful=True)
    outs, t0 = [], 0
    for n in CHUNKS:
        outs.append(node(x[t0:t0 + n]))
        t0 += n
    out = torch.cat(outs)
    assert torch.equal(out, out_ref)
    assert torch.equal(node.v, v_full)
    _weighted_loss(out, node.v).backward()
    assert rel_err(x.grad, g_full) < 1e-5
    assert float(x.grad[0].abs().sum()) > 0  # the first chunk got gradient from later chunks' losses


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["lif", "revlif"])
def test_single_step_mode_equals_multi_step(kind, backend):
    x = _input(kind)
    out_m = _node(kind, backend)(x)
    out_m.sum().backward()
    g_m = x.grad.clone()
    x.grad = None
    node = _node(kind, backend, step_mode="s")
    assert node.stateful
    out_s = torch.stack([node(x[t]) for t in range(x.shape[0])])
    assert out_s.shape == out_m.shape
    assert torch.equal(out_s, out_m)
    out_s.sum().backward()
    assert rel_err(x.grad, g_m) < 1e-5


def test_default_multistep_starts_fresh_each_call():
    """Unchanged behaviour: a multi-step node without stateful=True keeps no state."""
    node = LIF()
    x = torch.randn(4, 2, 6) + 1.0
    a = node(x)
    with pytest.warns(UserWarning, match="keeps no final state"):  # .v is the fresh value, said once
        assert node.v == 0.0
    assert not node.stateful
    with pytest.raises(ValueError, match="stateful=True"):
        node.v = torch.zeros(2, 6)  # would be ignored: refuse instead
    assert torch.equal(node(x), a)
    rev = RevLIF(v_reset=None)
    assert torch.equal(rev(x), rev(x))


def test_reset_and_spikingjelly_reset_net():
    net = nn.Sequential(SeqToANN(nn.Identity()), LIF(stateful=True), SeqToANN(nn.Identity()), RevLIF(stateful=True))
    x = torch.randn(5, 2, 6) * 2 + 1.5
    first = net(x)
    assert isinstance(net[1].v, torch.Tensor) and net[1].v.shape == (2, 6)
    assert not torch.equal(net(x), first)  # state carried over
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sjf.reset_net(net)
    assert net[1].v == 0.0 and net[3].v == 0.0
    assert torch.equal(net(x), first)
    net[1].reset()
    net[3].reset()
    assert torch.equal(net(x), first)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sjf.detach_net(net)
    assert not net[1].v.requires_grad
    net.double()  # a carried state follows the module's dtype/device
    assert net[1].v.dtype == torch.float64 and net[3].v.dtype == torch.float64
    assert net(x.double()).dtype == torch.float64


def test_spikingjelly_set_step_mode_and_lif_single_step_matches_lifnode():
    ours = LIF(tau=2.0, surrogate_function=sjs.ATan())
    sjf.set_step_mode(ours, "s")
    assert ours.step_mode == "s" and ours.stateful
    theirs = sjn.LIFNode(tau=2.0, surrogate_function=sjs.ATan(), step_mode="s")
    x = (torch.randn(6, 3, 7) + 0.8).requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    a = torch.stack([ours(x[t]) for t in range(6)])
    b = torch.stack([theirs(x2[t]) for t in range(6)])
    assert torch.equal(a, b)
    assert torch.allclose(ours.v, theirs.v, atol=1e-6)
    (a * torch.arange(7.0)).sum().backward()
    (b * torch.arange(7.0)).sum().backward()
    assert rel_err(x.grad, x2.grad) < 1e-5


def test_reset_drops_graph_and_detach_cuts_it():
    x1 = (torch.randn(4, 2, 5) + 1.0).requires_grad_(True)
    x2 = (torch.randn(4, 2, 5) + 1.0).requires_grad_(True)
    node = LIF(backend="torch", stateful=True, v_reset=None)
    node(x1)
    node.detach()
    assert not node.v.requires_grad  # value kept, graph cut
    v_kept = node.v.clone()
    out = node(x2)
    fresh = LIF(backend="torch", stateful=True, v_reset=None)
    fresh.v = v_kept
    assert torch.equal(out, fresh(x2))
    g1, = torch.autograd.grad(out.sum() + node.v.sum(), [x2])
    assert g1 is not None
    assert x1.grad is None
    # without detach, the second call's outputs depend on x1
    node.reset()
    node(x1)
    out = node(x2)
    g, = torch.autograd.grad(out.sum() + node.v.sum(), [x1])
    assert float(g.abs().sum()) > 0
    # reset: the next call starts fresh, its graph does not reach x1
    node.reset()
    assert node.v == 0.0
    out = node(x2)
    assert torch.equal(out, LIF(backend="torch", v_reset=None)(x2))
    assert torch.autograd.grad(out.sum(), [x1], allow_unused=True)[0] is None


def test_carried_state_shape_mismatch_is_explained():
    node = LIF(stateful=True)
    node(torch.randn(3, 4, 5))
    with pytest.raises(ValueError, match=r"carried state .*reset\(\)"):
        node(torch.randn(3, 2, 5))
    node.reset()
    assert node(torch.randn(3, 2, 5)).shape == (3, 2, 5)


@pytest.mark.parametrize("cls", [LIF, RevLIF, ParametricLIF])
def test_two_dim_input_to_multistep_node_suggests_single_step(cls):
    with pytest.raises(ValueError) as info:
        cls()(torch.randn(4, 6))
    msg = str(info.value)
    assert "\n" not in msg and "step_mode='s'" in msg and "(4, 6)" in msg
    with pytest.raises(ValueError, match="stateful=False"):
        cls(step_mode="s", stateful=False)
    with pytest.raises(ValueError, match="step_mode"):
        cls(step_mode="multi")


# ----------------------------------------------------------------------------- 2. surrogate_function=


@pytest.mark.parametrize(
    "sj_sg, expected",
    [(sjs.ATan(), ATan(2.0)), (sjs.Sigmoid(), Sigmoid(4.0)), (sjs.Sigmoid(alpha=2.5), Sigmoid(2.5)),
     (sjs.PiecewiseQuadratic(), esg.PiecewiseQuadratic(1.0)), (sjs.SoftSign(alpha=3.0), esg.SoftSign(3.0))],
)
def test_surrogate_function_alias_maps_spikingjelly_instances(sj_sg, expected):
    assert LIF(surrogate_function=sj_sg).params.surrogate == expected
    assert RevLIF(surrogate_function=sj_sg).params.lif.surrogate == expected
    assert LIF(surrogate=sj_sg).params.surrogate == expected
    assert ParametricLIF(surrogate_function=sj_sg).surrogate == expected
    assert LIF(surrogate_function="atan").params.surrogate == ATan()
    assert type(LIF(surrogate_function=ATan(3.0)).params.surrogate) is ATan


def test_surrogate_function_errors():
    with pytest.raises(TypeError, match="not both"):
        LIF(surrogate="atan", surrogate_function=sjs.ATan())
    with pytest.raises(TypeError, match="PiecewiseLeakyReLU"):
        LIF(surrogate_function=sjs.PiecewiseLeakyReLU())
    with pytest.raises(ValueError, match="spiking=False"):
        LIF(surrogate_function=sjs.ATan(spiking=False))
    assert LIF().params.surrogate == Sigmoid(4.0)


def test_edgesnn_does_not_import_spikingjelly():
    code = "import sys, edgesnn, edgesnn.nn, edgesnn.models; assert 'spikingjelly' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- 3. surrogates


@pytest.mark.parametrize("name", ["ATan", "Sigmoid", "PiecewiseQuadratic", "PiecewiseExp", "SoftSign", "SuperSpike", "Erf",
                                  "NonzeroSignLogAbs"])
@pytest.mark.parametrize("alpha", [None, 0.7, 3.0])
def test_surrogate_gradients_match_spikingjelly(name, alpha):
    sj_sg = getattr(sjs, name)() if alpha is None else getattr(sjs, name)(alpha=alpha)
    ours = LIF(surrogate_function=sj_sg).params.surrogate
    assert ours.alpha == sj_sg.alpha  # same default alpha
    u = torch.cat([torch.linspace(-3, 3, 601, dtype=torch.float64), torch.tensor([0.0, 1.0 / sj_sg.alpha], dtype=torch.float64)])
    u = u.requires_grad_(True)
    s = sj_sg(u)
    (g_sj,) = torch.autograd.grad(s.sum(), [u])
    assert torch.allclose(ours.grad(u.detach()), g_sj, rtol=1e-12, atol=1e-12)
    # and through edgesnn's spike(): exact Heaviside forward with that gradient
    u2 = u.detach().clone().requires_grad_(True)
    s2 = esg.spike(u2, ours)
    assert torch.equal(s2, s.detach())
    (g2,) = torch.autograd.grad(s2.sum(), [u2])
    assert torch.allclose(g2, g_sj, rtol=1e-12, atol=1e-12)
    assert esg.get_surrogate(ours.name) == type(ours)()


@pytest.mark.parametrize("sg", [sjs.SoftSign(), sjs.PiecewiseQuadratic(), sjs.Erf()])
def test_lif_with_new_surrogate_matches_spikingjelly_lifnode(sg):
    """End to end: multi-step LIF with a non-kernel surrogate (torch path) vs SpikingJelly's LIFNode."""
    x = (torch.randn(6, 3, 7) + 0.8).requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    a = LIF(tau=3.0, v_reset=None, surrogate_function=sg)(x)
    b = sjn.LIFNode(tau=3.0, v_reset=None, surrogate_function=sg, step_mode="m")(x2)
    assert torch.equal(a, b)
    (a * torch.arange(7.0)).sum().backward()
    (b * torch.arange(7.0)).sum().backward()
    assert rel_err(x.grad, x2.grad) < 1e-5


# ----------------------------------------------------------------------------- 4. learnable tau / threshold


def _plif_loop(x, w, v_th, v_reset, decay_input, sg, detach_reset):
    """Independent autograd loop of SpikingJelly's PLIF equations (1/tau = sigmoid(w))."""
    k = torch.sigmoid(w)
    v = torch.full_like(x[0], 0.0 if v_reset is None else v_reset)
    out = []
    for t in range(x.shape[0]):
        vr = 0.0 if v_reset is None else v_reset
        h = v + (x[t] - (v - vr)) * k if decay_input else v - (v - vr) * k + x[t]
        u = h - v_th
        heav = (u >= 0).to(x.dtype)
        s = heav + (u - u.detach()) * sg.grad(u).detach()
        sr = s.detach() if detach_reset else s
        v = sr * v_reset + (1 - sr) * h if v_reset is not None else h - sr * v_th
        out.append(s)
    return torch.stack(out), v


@pytest.mark.parametrize("v_reset, decay_input, detach_reset", [(0.0, True, False), (None, True, False), (-0.2, False, True)])
def test_parametric_lif_gradients_match_autograd_loop(v_reset, decay_input, detach_reset):
    node = ParametricLIF(init_tau=3.0, v_reset=v_reset, decay_input=decay_input, detach_reset=detach_reset,
                         learn_threshold=True, surrogate="atan").double()
    x = (torch.randn(7, 4, 6, dtype=torch.float64) * 1.5 + 0.7).requires_grad_(True)
    out = node(x)
    assert abs(node.tau - 3.0) < 1e-6
    w = node.w.detach().clone().requires_grad_(True)
    v_th = node.v_threshold.detach().clone().requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    ref, _ = _plif_loop(x2, w, v_th, v_reset, decay_input, ATan(), detach_reset)
    assert torch.equal(out, ref)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    assert rel_err(x.grad, x2.grad) < 1e-10
    assert abs(float(node.w.grad) - float(w.grad)) <= 1e-10 * max(1.0, abs(float(w.grad)))
    assert abs(float(node.v_threshold.grad) - float(v_th.grad)) <= 1e-10 * max(1.0, abs(float(v_th.grad)))
    assert float(node.w.grad) != 0.0 and float(node.v_threshold.grad) != 0.0


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_parametric_lif_matches_spikingjelly_plif(step_mode):
    ours = ParametricLIF(init_tau=2.5, surrogate_function=sjs.Sigmoid(), step_mode=step_mode)
    theirs = sjn.ParametricLIFNode(init_tau=2.5, surrogate_function=sjs.Sigmoid(), step_mode=step_mode)
    assert torch.equal(ours.w.detach(), theirs.w.detach())
    x = (torch.randn(6, 3, 7) + 0.8).requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    if step_mode == "m":
        a, b = ours(x), theirs(x2)
    else:
        a = torch.stack([ours(x[t]) for t in range(6)])
        b = torch.stack([theirs(x2[t]) for t in range(6)])
    assert torch.equal(a, b)
    weights = torch.randn_like(a)
    (a * weights).sum().backward()
    (b * weights).sum().backward()
    assert rel_err(x.grad, x2.grad) < 1e-5
    assert abs(float(ours.w.grad) - float(theirs.w.grad)) <= 1e-4 * max(1.0, abs(float(theirs.w.grad)))
    sjf.reset_net(theirs)
    ours.reset()
    assert ours.v == theirs.v == 0.0


def test_parametric_lif_state_dict_and_optimizer_learns_tau():
    node = ParametricLIF(init_tau=2.0, learn_threshold=True)
    sd = node.state_dict()
    assert set(sd) == {"w", "v_threshold"}
    other = ParametricLIF(init_tau=4.0, learn_threshold=True)
    other.load_state_dict(sd, strict=True)
    assert abs(other.tau - 2.0) < 1e-6
    assert set(ParametricLIF().state_dict()) == {"w"}
    with pytest.raises(ValueError, match="reference"):
        ParametricLIF(backend="numba")
    opt = torch.optim.SGD(node.parameters(), lr=0.5)
    x = torch.randn(5, 8, 4) + 0.8
    node(x).mean().backward()
    opt.step()
    assert node.tau != 2.0 and float(node.v_threshold.detach()) != 1.0


def test_plain_nodes_keep_an_empty_state_dict():
    """Non-learnable tau/threshold stay constructor arguments (as in SpikingJelly's LIFNode, whose
    state_dict is empty too), so existing checkpoints load with strict=True."""
    from edgesnn.models import build_model

    assert LIF().state_dict() == {} and RevLIF().state_dict() == {}
    assert dict(sjn.LIFNode().state_dict()) == {}
    a = build_model("mlp", (1, 8, 8), 10, 2, "revlif:2")
    b = build_model("mlp", (1, 8, 8), 10, 2, "revlif:2")
    b.load_state_dict(a.state_dict(), strict=True)


# ----------------------------------------------------------------------------- 5. SeqToANN(conv, bn)


def test_seq_to_ann_takes_several_modules_like_spikingjelly():
    conv, bn = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
    ours = SeqToANN(conv, bn)
    assert isinstance(ours.module, nn.Sequential) and ours.module[1] is bn
    theirs = sjl.SeqToANNContainer(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4))
    ours.load_state_dict(theirs.state_dict(), strict=True)  # SpikingJelly checkpoints load
    assert torch.equal(conv.weight, theirs[0].weight)
    x = torch.randn(3, 2, 2, 5, 5)
    out = ours(x)
    assert out.shape == (3, 2, 4, 5, 5)
    assert torch.allclose(out, theirs(x), atol=1e-6)
    assert torch.allclose(bn.running_mean, theirs[1].running_mean, atol=1e-6)
    ours.load_state_dict(ours.state_dict(), strict=True)
    one = SeqToANN(nn.Linear(3, 3))
    assert list(one.state_dict()) == ["module.weight", "module.bias"]  # one module: edgesnn's keys, unchanged
    sj_one = sjl.SeqToANNContainer(nn.Linear(3, 3))
    nested = nn.Sequential(one)
    nested.load_state_dict(nn.Sequential(sj_one).state_dict(), strict=True)
    assert torch.equal(one.module.weight, sj_one[0].weight)
    with pytest.raises(TypeError, match="at least one"):
        SeqToANN()


def test_spikingjelly_attributes_read_and_set_the_parameters():
    """Assigning SpikingJelly's attributes changes the node (it was silently ignored), re-validated."""
    x = torch.full((6, 1, 1), 0.8)
    for node in (LIF(), RevLIF(groups=2)):
        before = node(x.expand(6, 1, 2)).clone()
        node.v_threshold = 0.5
        assert node.v_threshold == 0.5 and not torch.equal(node(x.expand(6, 1, 2)), before)
        node.tau, node.detach_reset, node.decay_input, node.v_reset = 3.0, True, False, None
        lif = node.params if isinstance(node, LIF) else node.params.lif
        assert (lif.tau, lif.detach_reset, lif.decay_input, lif.v_reset) == (3.0, True, False, None)
        node.surrogate_function = sjs.ATan()  # a SpikingJelly surrogate (an nn.Module): mapped, not a child
        assert type(node.surrogate_function).__name__ == "ATan" and not list(node.children())
        with pytest.raises(TypeError, match="decay_input"):
            node.decay_input = "no"
    with pytest.raises(ValueError, match="v_threshold"):
        RevLIF(groups=2).v_threshold = 100.0  # exact mode keeps |v_threshold| <= 16


def test_ambiguous_4d_input_warns_once_unless_the_step_mode_is_given():
    node = LIF()
    with pytest.warns(UserWarning, match="step_mode='s'"):
        node(torch.randn(4, 2, 3, 3))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        node(torch.randn(4, 2, 3, 3))  # once per node
        LIF(step_mode="m")(torch.randn(4, 2, 3, 3))
        LIF()(torch.randn(4, 2, 3))  # 3-D [T, B, N] and 5-D [T, B, C, H, W]: no warning
        LIF()(torch.randn(4, 2, 1, 3, 3))
    with pytest.raises(ValueError, match="store_v_seq"):
        LIF(store_v_seq=True)
    with pytest.raises(ValueError, match="'cuda'"):
        LIF(backend="cupy")


def test_a_two_dim_multi_step_input_is_refused_with_spikingjellys_fix():
    """SpikingJelly takes a ``[T, N]`` multi-step input; the error suggested ``x.unsqueeze(0)`` or
    ``step_mode='s'``, both silently different on such data. The fix it names now gives SpikingJelly's
    spikes."""
    torch.manual_seed(0)
    x = torch.randn(8, 100) + 0.8
    with pytest.raises(ValueError, match=r"^LIF\(step_mode='m'\) .*\[T, N\]\) add the batch dim with x\.unsqueeze\(1\)"):
        LIF()(x)
    want = sjn.LIFNode(step_mode="m")(x)
    assert torch.equal(LIF()(x.unsqueeze(1)).squeeze(1), want)
