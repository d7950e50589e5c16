"""Switching from SpikingJelly by name, SeqToANN vs SeqToANNContainer side by side: the step mode of the
wrapped modules (at construction and after SpikingJelly's functional.set_step_mode), nn.Sequential's
interface, tuple inputs/outputs, and loading a container's state dict whose single module is an nn.Sequential."""

import copy

import pytest
import torch
from torch import nn

from edgesnn.nn import LIF, SeqToANN

from _errors import one_line_error

pytest.importorskip("spikingjelly.activation_based")
from spikingjelly.activation_based import functional as sjf  # noqa: E402
from spikingjelly.activation_based import layer as sjl  # noqa: E402


def test_a_multistep_module_inside_is_refused_as_by_seq_to_ann_container():
    """A LIF(step_mode='m') inside read [T*B, C, H, W] as [T', B', H, W]: silently wrong dynamics.
    SpikingJelly's container refuses any module whose step_mode is not 's'."""
    with pytest.raises(ValueError):
        sjl.SeqToANNContainer(nn.Conv2d(3, 4, 3), LIF(step_mode="m"))
    one_line_error(ValueError, lambda: SeqToANN(nn.Conv2d(3, 4, 3), LIF(step_mode="m")), "argument 1", "LIF",
                    "step_mode='m'", "step_mode='s'")
    one_line_error(ValueError, lambda: SeqToANN(nn.Sequential(nn.Linear(3, 3), sjl.Linear(3, 3, step_mode="m"))),
                    "argument 0", "Linear (1)")
    SeqToANN(nn.Linear(3, 3), sjl.Linear(3, 3), LIF(step_mode="s"))  # single-step ones are accepted, as there


def test_a_wrapped_module_switched_to_multistep_later_is_refused_at_the_call():
    seq = SeqToANN(nn.Linear(3, 3), sjl.Linear(3, 3))
    seq[1].step_mode = "m"
    one_line_error(ValueError, lambda: seq(torch.randn(2, 2, 3)), "the wrapped module", "step_mode='m'", "at this call")


@pytest.mark.parametrize("mode", ["m", "s"])
def test_set_step_mode_leaves_the_wrapped_layers_single_step(mode):
    """SpikingJelly's set_step_mode does not descend into a SeqToANNContainer but did into a SeqToANN,
    switching wrapped SpikingJelly layers to 'm' (an error for BatchNorm2d, a [T, B, C, H*W] output for
    Flatten). The model now runs as in SpikingJelly."""
    torch.manual_seed(0)
    body = [sjl.Conv2d(3, 4, 3, padding=1, bias=False), sjl.BatchNorm2d(4), sjl.Flatten()]
    theirs = nn.Sequential(sjl.SeqToANNContainer(*copy.deepcopy(body)))
    ours = nn.Sequential(SeqToANN(*copy.deepcopy(body)))
    sjf.set_step_mode(theirs, mode)
    sjf.set_step_mode(ours, mode)
    x = torch.randn(3, 2, 3, 5, 5)
    out = ours(x)
    assert out.shape == (3, 2, 4 * 25)
    assert torch.equal(out, theirs(x))
    assert [m.step_mode for m in ours[0]] == ["s", "s", "s"] and ours[0].step_mode == "m"
    assert torch.equal(ours[0][1].running_mean, theirs[0][1].running_mean)


def test_sequential_interface_as_seq_to_ann_container():
    conv, bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
    seq = SeqToANN(conv, bn)
    assert len(seq) == 2 and seq[0] is conv and seq[-1] is bn and list(seq) == [conv, bn]
    sliced = seq[:1]
    assert isinstance(sliced, SeqToANN) and sliced[0] is conv and len(sliced) == 1
    inner = nn.Sequential(conv, bn)
    one = SeqToANN(inner)  # one module (an nn.Sequential), as SeqToANNContainer(inner)
    assert len(one) == 1 and one[0] is inner and len(sjl.SeqToANNContainer(inner)) == 1


def test_tuple_output_and_tuple_input_as_seq_to_ann_container():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 4, 6, 6)
    pooled, idx = SeqToANN(nn.MaxPool2d(2, return_indices=True))(x)
    ref_pooled, ref_idx = sjl.SeqToANNContainer(nn.MaxPool2d(2, return_indices=True))(x)
    assert torch.equal(pooled, ref_pooled) and torch.equal(idx, ref_idx) and pooled.shape == (3, 2, 4, 3, 3)
    up = SeqToANN(nn.MaxUnpool2d(2))((pooled, idx))
    # (SpikingJelly takes a tuple input in functional.seq_to_ann_forward only: its container is an nn.Sequential)
    assert torch.equal(up, sjf.seq_to_ann_forward((ref_pooled, ref_idx), nn.MaxUnpool2d(2))) and up.shape == x.shape
    assert torch.equal(SeqToANN(nn.MaxUnpool2d(2), nn.ReLU())((pooled, idx)), up.relu())  # later modules take one
    one_line_error(ValueError, lambda: SeqToANN(nn.MaxUnpool2d(2))((pooled, idx[:2])), "share [T, B]")


def test_loads_a_container_whose_single_module_is_a_sequential():
    """SeqToANNContainer(nn.Sequential(conv, bn)) has keys 0.0.weight; they were renamed to
    module.0.0.weight (as if there were several modules) and strict loading failed."""
    torch.manual_seed(0)
    theirs = sjl.SeqToANNContainer(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    ours = SeqToANN(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 2, 3, 5, 5)
    theirs.eval()
    ours.eval()
    assert torch.equal(ours(x), theirs(x))
    several = SeqToANN(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))  # still loads the two-module container
    several.load_state_dict(sjl.SeqToANNContainer(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).state_dict())
