"""Audit of the nn nodes as a user drives them: attribute assignment, parameter validation, errors."""

import pickle

import pytest
import torch
from torch import nn

from edgesnn.nn import LIF, ParametricLIF, RevLIF, SeqToANN


def _x(shape=(4, 2, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * 2


@pytest.mark.parametrize("changes", [
    {"mode": "float"},
    {"mode": "float", "alpha": 0.3, "beta": 0.4},
    {"gamma": 0.25},
    {"alpha": 0.5},
    {"groups": 4},
])
def test_revlif_hyper_parameter_assignment_is_used_like_the_constructor(changes):
    """Assigning groups / alpha / beta / gamma / mode changes the node (it used to set a plain attribute the node never read)."""
    x = _x()
    node = RevLIF()
    for name, value in changes.items():
        setattr(node, name, value)
    built = RevLIF(**changes)
    assert node.params == built.params
    for name, value in changes.items():
        assert getattr(node, name) == value
    assert torch.equal(node(x), built(x))
    assert node.extra_repr() == built.extra_repr()


def test_revlif_hyper_parameter_assignment_is_validated():
    node = RevLIF()
    with pytest.raises(ValueError, match=r"^mode='exact' requires alpha"):
        node.alpha = 0.3
    with pytest.raises(ValueError, match=r"^mode: expected one of"):
        node.mode = "EXACT"
    with pytest.raises(ValueError, match=r"^groups: expected an integer from 2 to 65536"):
        node.groups = 1
    with pytest.raises(ValueError, match=r"^gamma: expected a value in \(0, 1\]"):
        node.gamma = 0.0
    assert node.params == RevLIF().params  # a refused assignment leaves the node as it was
    node.groups = 3
    with pytest.raises(ValueError, match="group"):
        node(_x((2, 2, 8)))  # 8 channels do not split into 3 groups


def test_revlif_assignment_survives_pickle_and_state_round_trip():
    node = RevLIF(stateful=True)
    node.mode, node.alpha = "float", 0.3
    node(_x())
    copy = pickle.loads(pickle.dumps(node))
    assert copy.params.mode == "float" and copy.params.alpha == 0.3 and torch.equal(copy.v, node.v)
    x = _x(seed=1)
    assert torch.equal(copy(x), node(x))


def test_revlif_repr_shows_the_surrogate_alpha_and_reset_options_like_lif():
    node = RevLIF(surrogate="atan", decay_input=False, detach_reset=True)
    r = node.extra_repr()
    assert "surrogate=atan(alpha=2.0)" in r and "decay_input=False" in r and "detach_reset=True" in r


@pytest.mark.parametrize("cls", [LIF, RevLIF, ParametricLIF])
@pytest.mark.parametrize("value", ["no", None, 2])
def test_check_finite_is_a_flag(cls, value):
    """check_finite='no' used to switch the scan on (a non-empty string is true), silently."""
    with pytest.raises(TypeError, match=r"^check_finite: expected True or False"):
        cls(check_finite=value)
    assert cls(check_finite=1).check_finite is True


def test_parametric_learn_threshold_is_a_flag():
    """learn_threshold='no' used to create a learnable threshold."""
    with pytest.raises(TypeError, match=r"^learn_threshold: expected True or False, got 'no'"):
        ParametricLIF(learn_threshold="no")
    assert [n for n, _ in ParametricLIF(learn_threshold=0).named_parameters()] == ["w"]


def test_parametric_init_tau_error_names_init_tau():
    with pytest.raises(ValueError, match=r"^init_tau: expected a finite number > 1"):
        ParametricLIF(init_tau=1.0)
    with pytest.raises(ValueError, match=r"^v_reset: expected a value below"):
        ParametricLIF(v_reset=2.0)  # other errors keep their own name


def test_seq_to_ann_list_input_is_a_one_line_type_error():
    s = SeqToANN(nn.Linear(3, 2))
    with pytest.raises(TypeError, match=r"^SeqToANN: expected a \[T, B, \.\.\.\] tensor or a tuple of them, got list"):
        s([torch.zeros(2, 1, 3)])


def test_revlif_is_still_importable_from_neurons_and_pickles_by_either_path():
    from edgesnn.nn import neurons

    assert neurons.RevLIF is RevLIF
    node = pickle.loads(pickle.dumps(neurons.RevLIF(groups=4)))
    assert node.groups == 4


@pytest.mark.parametrize("cls, bad", [(LIF, "cupy"), (RevLIF, "gpu"), (ParametricLIF, "numba")])
def test_backend_assignment_is_checked_like_the_constructor(cls, bad):
    """``node.backend = ...`` was a plain attribute: LIF / RevLIF failed at the next call,
    ParametricLIF ignored it (always the reference path) whatever was assigned."""
    with pytest.raises(ValueError, match=r"^backend: ") as ctor:
        cls(backend=bad)
    node = cls()
    with pytest.raises(ValueError, match=r"^backend: ") as assigned:
        node.backend = bad
    assert str(assigned.value) == str(ctor.value) and node.backend == "auto"
    node.backend = "reference"
    assert node.backend == "reference"
    assert ("backend='reference'" in repr(node)) == (cls is not ParametricLIF)  # (its repr names no backend: always the reference)
    x = torch.rand(3, 2, 4)
    ref = cls(backend="reference")
    torch.testing.assert_close(node(x), ref(x), rtol=0, atol=0)


def test_nodes_pickled_with_a_plain_backend_attribute_still_load():
    node = LIF()
    state = dict(vars(node))
    state.pop("_backend")
    state["backend"] = "torch"  # how edgesnn <= this change stored it
    old = LIF.__new__(LIF)
    old.__setstate__(state)
    assert old.backend == "torch"
    assert pickle.loads(pickle.dumps(old)).backend == "torch"


@pytest.mark.parametrize("learn_threshold", [False, True])
def test_parametric_lif_pickled_with_plain_settings_still_loads(learn_threshold):
    """A ParametricLIF pickled by an edgesnn that kept v_reset, decay_input, detach_reset, surrogate and
    a fixed v_threshold as plain attributes loaded, then failed at its first call ('no attribute _fixed')."""
    node = ParametricLIF(init_tau=3.0, v_threshold=0.8, v_reset=-0.1, decay_input=False,
                         learn_threshold=learn_threshold)
    state = dict(vars(node))
    fixed = state.pop("_fixed")
    state.update(v_reset=fixed.v_reset, decay_input=fixed.decay_input, detach_reset=fixed.detach_reset,
                 surrogate=fixed.surrogate)  # how edgesnn before 71e81a3 stored them
    if not learn_threshold:
        state["v_threshold"] = fixed.v_threshold
    blob = pickle.dumps(_old_object(ParametricLIF, state))
    old = pickle.loads(blob)
    v_th = float(torch.as_tensor(old.v_threshold).detach())
    assert (old.v_reset, old.decay_input, v_th) == (-0.1, False, pytest.approx(0.8))
    x = torch.rand(4, 2, 5) * 2
    torch.testing.assert_close(old(x), node(x), rtol=0, atol=0)


def test_optimized_model_pickled_without_block_owners_still_runs_optimized():
    """Blocks pickled before they kept their children (``owners``) failed at the first call."""
    import warnings

    import edgesnn
    from edgesnn.nn import SeqToANN

    torch.manual_seed(0)
    net = torch.nn.Sequential(SeqToANN(torch.nn.Linear(6, 8)), LIF(), SeqToANN(torch.nn.Linear(8, 3)))
    x = torch.rand(5, 2, 6) * 2
    want = net(x)
    edgesnn.optimize_memory(net, x)
    for b in net._memopt_blocks:
        del b.__dict__["owners"]  # as edgesnn before 7e19be8 pickled them
    old = pickle.loads(pickle.dumps(net))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 'changed after optimize_memory': the blocks run as planned
        got = old(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert [b.owners for b in old._memopt_blocks] == [list(old)[b.start:b.stop] for b in old._memopt_blocks]


def _old_object(cls: type, state: dict):
    obj = cls.__new__(cls)
    obj.__dict__.update(state)  # the raw attributes, as an old pickle holds them
    return obj
