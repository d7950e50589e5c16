"""Switching from SpikingJelly by name: what SpikingJelly code does with a node after constructing
it (assigning attributes, reading .v / .v_seq) either works as there or says why, in one line."""

import warnings

import pytest
import torch

from edgesnn.functional import ATan, Sigmoid
from edgesnn.nn import LIF, ParametricLIF, RevLIF
from edgesnn.nn.neurons import ParametricLIF as ParametricLIFFromNeurons
from conftest import rel_err
from _errors import one_line_error

pytest.importorskip("spikingjelly.activation_based")
from spikingjelly.activation_based import neuron as sjn  # noqa: E402
from spikingjelly.activation_based import surrogate as sjs  # noqa: E402


# ----------------------------------------------------------------------------- 1. ParametricLIF attributes


def test_parametric_lif_surrogate_function_assignment_matches_spikingjelly():
    """`p.surrogate_function = surrogate.ATan()` was stored as a child module and ignored (Sigmoid kept)."""
    assert ParametricLIFFromNeurons is ParametricLIF
    ours = ParametricLIF(init_tau=2.5, step_mode="m")
    assert ours.surrogate_function == Sigmoid(4.0)
    ours.surrogate_function = sjs.ATan()
    assert ours.surrogate_function == ATan(2.0) and ours.surrogate == ATan(2.0) and not list(ours.children())
    theirs = sjn.ParametricLIFNode(init_tau=2.5, surrogate_function=sjs.ATan(), step_mode="m")
    x = (torch.randn(6, 3, 7) + 0.8).requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    a, b = ours(x), theirs(x2)
    assert torch.equal(a, b)
    weights = torch.randn_like(a)
    (a * weights).sum().backward()
    (b * weights).sum().backward()
    assert rel_err(x.grad, x2.grad) < 1e-5
    assert abs(float(ours.w.grad) - float(theirs.w.grad)) <= 1e-4 * max(1.0, abs(float(theirs.w.grad)))


def test_parametric_lif_surrogate_assignment_maps_spikingjelly_instances():
    p = ParametricLIF()
    p.surrogate = sjs.SoftSign(alpha=3.0)  # failed only at forward
    assert type(p.surrogate).__name__ == "SoftSign" and p.surrogate.alpha == 3.0 and not list(p.children())
    assert p(torch.ones(2, 2, 2, requires_grad=True)).shape == (2, 2, 2)


def test_parametric_lif_assignments_are_validated_like_the_constructor():
    p = ParametricLIF()
    one_line_error(TypeError, lambda: setattr(p, "decay_input", "no"), "decay_input")
    one_line_error(ValueError, lambda: setattr(p, "v_reset", 5.0), "v_reset", "below v_threshold")
    assert p.decay_input is True and p.v_reset == 0.0  # unchanged after a refused assignment
    x = torch.full((4, 1, 1), 0.9)
    before = p(x).clone()
    p.decay_input, p.detach_reset, p.v_reset = False, True, None
    assert (p.decay_input, p.detach_reset, p.v_reset) == (False, True, None)
    assert not torch.equal(p(x), before)  # decay_input=False: 0.9 per step reaches the threshold at once
    p.v_threshold = 2.0
    assert p.v_threshold == 2.0 and p.state_dict().keys() == {"w"}
    p.tau = 4.0
    assert abs(p.tau - 4.0) < 1e-5 and abs(p.w.item() + torch.log(torch.tensor(3.0)).item()) < 1e-6
    one_line_error(ValueError, lambda: setattr(p, "tau", 1.0), "tau")


def test_parametric_lif_learnable_threshold_assignment_writes_the_parameter():
    p = ParametricLIF(learn_threshold=True)
    param = p.v_threshold
    assert isinstance(param, torch.nn.Parameter)
    p.v_threshold = 0.5
    assert p.v_threshold is param and param.item() == 0.5 and float(p.state_dict()["v_threshold"]) == 0.5
    one_line_error(TypeError, lambda: setattr(p, "v_threshold", torch.tensor(0.7)), "v_threshold", "number")
    with torch.no_grad():
        param.fill_(0.25)  # as training moves it
    one_line_error(ValueError, lambda: setattr(p, "v_reset", 0.3), "v_reset", "v_threshold=0.25")


# ----------------------------------------------------------------------------- 2. store_v_seq / v_seq


@pytest.mark.parametrize("cls", [LIF, RevLIF, ParametricLIF])
def test_store_v_seq_assignment_is_refused_like_the_constructor(cls):
    node = cls()
    assert node.v_seq is None and node.store_v_seq is False  # SpikingJelly's defaults
    node.store_v_seq = False
    one_line_error(ValueError, lambda: setattr(node, "store_v_seq", True), "store_v_seq", "stateful=True")
    one_line_error(TypeError, lambda: setattr(node, "store_v_seq", "yes"), "store_v_seq")
    assert node.store_v_seq is False and node.v_seq is None


# ----------------------------------------------------------------------------- 3. .v after a stateless multi-step call


@pytest.mark.parametrize("cls", [LIF, RevLIF, ParametricLIF])
def test_v_after_a_stateless_multistep_call_warns_once_and_only_there(cls):
    node = cls(step_mode="m")
    x = torch.randn(4, 2, 6) + 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert node.v == 0.0  # nothing ran yet: the fresh value is right
    node(x)
    with pytest.warns(UserWarning, match="keeps no final state") as record:
        assert node.v == 0.0
    msg = str(record[0].message)
    assert "\n" not in msg and "stateful=True" in msg
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        node.v  # once per node
        node(x)
        node.v
        # no warning where .v is right: after reset() (SpikingJelly's reset_net) or v = v_reset, stateful nodes
        fresh = cls(step_mode="m")
        fresh(x)
        fresh.reset()
        assert fresh.v == 0.0
        fresh(x)
        fresh.v = 0.0
        assert fresh.v == 0.0
        streaming = cls(step_mode="m", stateful=True)
        streaming(x)
        assert isinstance(streaming.v, torch.Tensor) and streaming.v.shape == (2, 6)
        single = cls(step_mode="s")
        single(x[0])
        assert isinstance(single.v, torch.Tensor)


# ----------------------------------------------------------------------------- 4. SpikingJelly surrogate subclasses


def test_spikingjelly_surrogate_subclass_is_refused_with_guidance():
    class MySig(sjs.Sigmoid):
        pass

    msg = one_line_error(TypeError, lambda: LIF(surrogate_function=MySig()), "surrogate_function: MySig", "exact class",
                          "Sigmoid", "Surrogate")
    assert not msg.startswith("surrogate:")
    one_line_error(TypeError, lambda: RevLIF(surrogate=MySig()), "surrogate: MySig", "exact class")
    one_line_error(TypeError, lambda: ParametricLIF(surrogate_function=MySig()), "surrogate_function: MySig")
    node = LIF()
    one_line_error(TypeError, lambda: setattr(node, "surrogate_function", MySig()), "surrogate_function: MySig")
    assert node.surrogate_function == Sigmoid(4.0)


def test_surrogate_errors_name_the_parameter_passed():
    one_line_error(TypeError, lambda: LIF(surrogate_function=42), "surrogate_function: expected a name")
    one_line_error(ValueError, lambda: LIF(surrogate_function="nope"), "surrogate_function: unknown name")
    one_line_error(TypeError, lambda: LIF(surrogate=sjs.PiecewiseLeakyReLU()), "surrogate: SpikingJelly's PiecewiseLeakyReLU")


# ----------------------------------------------------------------------------- 6. RevLIF groups, single step


def test_revlif_single_step_groups_error_describes_the_callers_input():
    msg = one_line_error(ValueError, lambda: RevLIF(step_mode="s")(torch.randn(3, 5)),
                          "groups: 2 does not divide the channel count 5", "dim 1 of the single-step input", "(3, 5)")
    assert "(1, 3, 5)" not in msg and "x_seq" not in msg
    msg = one_line_error(ValueError, lambda: RevLIF(step_mode="s", groups=3)(torch.randn(2, 4, 6, 6)), "dim 1", "(2, 4, 6, 6)")
    assert "(1, 2, 4, 6, 6)" not in msg
