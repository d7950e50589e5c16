"""Spiking-node API audit: inputs a user can pass that were silently wrong or failed with a confusing error."""

import copy
import pickle

import pytest
import torch

from edgesnn.functional import surrogate as esg
from edgesnn.functional.checks import NonFiniteInputError
from edgesnn.nn import LIF, ParametricLIF, RevLIF, SeqToANN


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("dtype,big", [(torch.float16, 6e4), (torch.float32, 3e38)])
def test_membrane_state_overflow_is_an_error_not_silently_stopped_spikes(backend, dtype, big):
    # a finite input whose state overflows: the old nodes spiked twice, then the NaN state never fired again
    x = torch.full((6, 1, 2), big, dtype=dtype)
    node = LIF(v_reset=None, decay_input=False, backend=backend)
    with torch.no_grad(), pytest.raises(NonFiniteInputError) as e:
        node(x)
    msg = _one_line(e)
    assert "membrane state overflowed" in msg and "x_seq" in msg
    stateful = LIF(v_reset=None, decay_input=False, backend=backend, stateful=True)
    with pytest.raises(NonFiniteInputError):
        stateful(x)
    assert not isinstance(stateful.v, torch.Tensor)  # the NaN state is not kept


def test_state_overflow_is_refused_by_parametric_lif_and_float_mode_revlif():
    with pytest.raises(NonFiniteInputError, match="overflowed float16"):
        ParametricLIF(v_reset=None, decay_input=False)(torch.full((6, 1, 2), 6e4, dtype=torch.float16))
    rev = RevLIF(mode="float", alpha=1.0, beta=1.0, gamma=1.0, v_reset=None, decay_input=False, backend="torch")
    with torch.no_grad(), pytest.raises(NonFiniteInputError, match="overflowed float32"):
        rev(torch.full((6, 1, 2), 3e38))


def test_ordinary_inputs_still_run_on_every_dtype():
    x = torch.randn(4, 2, 6) * 3
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        assert LIF(backend="torch")(x.to(dtype)).dtype == dtype
    assert torch.equal(LIF(backend="torch")(x), LIF(backend="reference")(x))


def test_parametric_lif_tau_assignment_goes_through_a_parametrization_of_w():
    """With ``w`` parametrized, ``node.w`` is computed afresh at each read: writing tau into it in
    place changed a temporary, so the assignment did nothing while the node's settings said it had."""
    from torch.nn.utils import parametrize

    class Half(torch.nn.Module):
        def forward(self, raw: torch.Tensor) -> torch.Tensor:
            return raw / 2

        def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
            return w * 2

    node = ParametricLIF(init_tau=2.0)
    parametrize.register_parametrization(node, "w", Half())
    node.tau = 5.0
    assert node.tau == pytest.approx(5.0)
    x = torch.randn(6, 2, 4) * 2
    torch.testing.assert_close(node(x), ParametricLIF(init_tau=5.0)(x))


def test_parametric_lif_assignment_after_tau_trained_close_to_one():
    node = ParametricLIF()
    with torch.no_grad():
        node.w.fill_(20.0)  # tau = 1 + 2e-9: sigmoid(20) is 1.0 in float32
    assert node.tau > 1.0
    node.v_reset = -0.5  # used to raise 'tau: expected a finite number > 1 ..., got 1.0'
    assert node.v_reset == -0.5
    assert float(node.w.detach()) == 20.0  # the learned tau was not rewritten
    node.tau = 3.0
    assert node.tau == pytest.approx(3.0)


def test_parametric_lif_assignment_after_training_left_the_constructors_range():
    """A learnable threshold trained below ``v_reset``, or a loaded ``w`` whose tau is past float32's range, made
    every later assignment fail on a value the caller did not assign ('v_reset: expected a value below ...')."""
    node = ParametricLIF(v_threshold=0.1, learn_threshold=True)
    with torch.no_grad():
        node.v_threshold.fill_(-0.2)  # (what an optimizer step can do)
    node.detach_reset = True
    assert node.detach_reset is True and float(node.v_threshold.detach()) == pytest.approx(-0.2)
    with pytest.raises(ValueError, match=r"^tau: "):  # (an assigned value is still checked)
        node.tau = 0.5
    node = ParametricLIF()
    node.load_state_dict({"w": torch.tensor(-100.0)})
    node.decay_input = False
    assert node.decay_input is False and float(node.w.detach()) == -100.0
    node = ParametricLIF(v_threshold=0.3, learn_threshold=True)  # (learned values within range: checked against them)
    with pytest.raises(ValueError, match=r"^v_reset: expected a value below v_threshold=0\.3"):
        node.v_reset = 0.5


@pytest.mark.parametrize("make", [lambda: LIF(step_mode="s"), lambda: RevLIF(stateful=True), lambda: ParametricLIF(step_mode="s")])
def test_deepcopy_of_a_node_holding_a_state_with_a_graph(make):
    node = make()
    x = torch.randn(3, 2, 4, requires_grad=True)
    node(x[0] if node.step_mode == "s" else x)
    assert node.v.grad_fn is not None
    twin = copy.deepcopy(node)  # raised torch's 'Only Tensors created explicitly by the user' error
    assert torch.equal(twin.v, node.v) and twin.v.grad_fn is None
    assert node.v.grad_fn is not None  # the original keeps its graph
    again = pickle.loads(pickle.dumps(node))
    assert torch.equal(again.v, node.v)
    step = x[1] if node.step_mode == "s" else x
    assert torch.equal(twin(step), node(step))


@pytest.mark.parametrize("bad", [None, "x"])
def test_non_tensor_inputs_are_one_line_type_errors(bad):
    for module in (LIF(), RevLIF(step_mode="s"), ParametricLIF(), SeqToANN(torch.nn.Linear(4, 3))):
        with pytest.raises(TypeError) as e:
            module(bad)
        assert "expected a" in _one_line(e)


@pytest.mark.parametrize("cls", [esg.Sigmoid, esg.ATan])
def test_a_surrogate_class_says_pass_an_instance(cls):
    for kw in ("surrogate", "surrogate_function"):
        with pytest.raises(TypeError) as e:
            LIF(**{kw: cls})
        msg = _one_line(e)
        assert msg.startswith(f"{kw}:") and f"pass an instance, e.g. {cls.__name__}()" in msg
