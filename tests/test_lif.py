"""LIF node: SpikingJelly semantics, hand-written backward vs autograd, surrogates."""

import math

import pytest
import torch

from edgesnn.functional import ATan, LIFParams, Sigmoid, get_surrogate, lif_multistep, lif_multistep_reference, spike
from conftest import rel_err


def test_hand_computed_trajectory_hard_reset():
    p = LIFParams(tau=2.0, v_threshold=1.0, v_reset=0.0)
    x = torch.full((4, 1, 1), 1.5)
    s, v = lif_multistep_reference(x, p)
    # h1 = 0.75 (no spike) ; h2 = 0.75 + (1.5 - 0.75)/2 = 1.125 -> spike, reset to 0 ; h3 = 0.75 ; h4 = 1.125
    assert s.flatten().tolist() == [0.0, 1.0, 0.0, 1.0]
    assert float(v) == 0.0


def test_threshold_is_inclusive_and_soft_reset_subtracts():
    p = LIFParams(tau=2.0, v_threshold=1.0, v_reset=None)
    x = torch.tensor([2.0, 2.5]).reshape(2, 1, 1)
    s, v = lif_multistep_reference(x, p)
    # h1 = 1.0 -> fires (>=), u = 0.0 ; h2 = 0 + 2.5/2 = 1.25 -> fires, u = 0.25
    assert s.flatten().tolist() == [1.0, 1.0]
    assert float(v) == pytest.approx(0.25)


def test_decay_input_false_charge():
    p = LIFParams(tau=4.0, decay_input=False, v_threshold=10.0)
    x = torch.ones(2, 1, 1)
    _, v = lif_multistep_reference(x, p)
    assert float(v) == pytest.approx(1.0 * 0.75 + 1.0)


@pytest.mark.parametrize("surrogate", [Sigmoid(), ATan()])
def test_spike_is_exact_heaviside_with_surrogate_gradient(surrogate):
    u = torch.linspace(-2, 2, 41, requires_grad=True)
    s = spike(u, surrogate)
    assert torch.equal(s, (u >= 0).float())
    (g,) = torch.autograd.grad(s.sum(), u)
    assert torch.allclose(g, surrogate.grad(u.detach()))


def test_surrogate_formulas_and_names():
    assert float(Sigmoid().grad(torch.tensor(0.0))) == pytest.approx(1.0)  # alpha/4
    assert float(ATan().grad(torch.tensor(0.0))) == pytest.approx(1.0)  # alpha/2
    u = torch.tensor(0.3)
    assert float(ATan(2.0).grad(u)) == pytest.approx(1.0 / (1 + (math.pi / 2 * 2 * 0.3) ** 2))
    assert isinstance(get_surrogate("ATan"), ATan)
    with pytest.raises(ValueError, match="surrogate"):
        get_surrogate("relu")


@pytest.mark.parametrize("surrogate", ["sigmoid", "atan"])
@pytest.mark.parametrize("v_reset", [0.0, None, -0.5])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("decay_input", [True, False])
def test_handwritten_backward_matches_autograd(surrogate, v_reset, detach_reset, decay_input):
    p = LIFParams(tau=1.7, v_reset=v_reset, detach_reset=detach_reset, decay_input=decay_input, surrogate=surrogate)
    x = (torch.randn(16, 3, 5, 7) + 0.6).requires_grad_()
    v0 = torch.rand(3, 5, 7).requires_grad_()
    s1, v1 = lif_multistep_reference(x, p, v0)
    s2, v2 = lif_multistep(x, p, v0)
    assert torch.equal(s1, s2) and torch.equal(v1, v2)
    gs, gv = torch.randn_like(s1), torch.randn_like(v1)
    g1 = torch.autograd.grad((s1 * gs).sum() + (v1 * gv).sum(), (x, v0))
    g2 = torch.autograd.grad((s2 * gs).sum() + (v2 * gv).sum(), (x, v0))
    assert rel_err(g2[0], g1[0]) < 1e-5
    assert rel_err(g2[1], g1[1]) < 1e-5
    assert float(g1[0].abs().max()) > 0


def test_lif_saves_one_tensor_of_input_size():
    from edgesnn.memory import SavedTensorCounter

    x = torch.randn(8, 4, 32, requires_grad=True)
    with SavedTensorCounter() as c:
        s, _ = lif_multistep(x, LIFParams())
    assert c.bytes(exclude=[x, s]) == x.numel() * 4  # h (and the second-order refusal's zero-element anchor)


def test_spikingjelly_parity():
    sj = pytest.importorskip("spikingjelly.activation_based.neuron")
    for v_reset, detach in [(0.0, False), (None, True)]:
        node = sj.LIFNode(tau=2.0, v_reset=v_reset, detach_reset=detach, step_mode="m")
        x = (torch.randn(12, 4, 50) + 0.5).requires_grad_()
        ref = node(x)
        (g_ref,) = torch.autograd.grad(ref.sum(), x)
        s, _ = lif_multistep(x, LIFParams(v_reset=v_reset, detach_reset=detach))
        (g,) = torch.autograd.grad(s.sum(), x)
        assert torch.equal(s, ref)
        assert rel_err(g, g_ref) < 1e-5
