"""The head's backward (the layers after the model's last block, under autograd) against the plan:
step peaks measured in a fresh process (``tests/_rss_measure.py``), within the planner tests' 15%."""

import pytest
import torch
from torch import nn

import edgesnn
from edgesnn.kernels.dispatch import numba_available
from edgesnn.nn import LIF, SeqToANN

from _rss_measure import measured_and_predicted, step_peak_script

#: one conv -> node block whose spikes go straight to a flatten + linear head (n: the node)
_CONV_FLAT_HEAD = ("nn.Sequential(SeqToANN(nn.Conv2d(4, 16, 3, padding=1)), n(), "
                   "SeqToANN(nn.Flatten(), nn.Linear(16 * 32 * 32, 10)))")


@pytest.mark.skipif(not numba_available(), reason="the fused kernels need numba")
@pytest.mark.parametrize("node", ["LIF", "RevLIF"])
def test_a_repeated_input_block_before_a_linear_head_peaks_in_the_heads_backward(node):
    """The head saves the block's spikes over all T and its backward writes their gradient beside
    them, before the block's backward runs; the plan counted only the block's backward: at T = 8,
    batch 16, a LIF measured 20.5 MiB against 14.7 predicted (-28%; -38% at T = 16). Now 20.9."""
    measured, predicted = measured_and_predicted(step_peak_script(T=8, B=16, repeated=True, node=node,
                                                                  backend="numba", model=_CONV_FLAT_HEAD))
    assert abs(predicted - measured) <= 0.15 * measured, (predicted, measured)


def test_the_heads_backward_is_a_phase_of_the_plan_with_its_parameter_gradients():
    """The phase names the head and holds at least the block's spikes and their gradient over all T
    and the head's new parameter gradients (a wide head: 16 MB of weights, its phase the peak)."""
    T, B, hidden = 8, 4, 4000
    x = torch.rand(B, 4, 8, 8).unsqueeze(0).expand(T, B, 4, 8, 8)
    model = nn.Sequential(SeqToANN(nn.Conv2d(4, 16, 3, padding=1)), LIF(backend="torch"),
                          SeqToANN(nn.Flatten(), nn.Linear(16 * 8 * 8, hidden)))
    plan = edgesnn.optimize_memory(model, x)
    assert plan.peak_phase == "backward head", plan.peak_phase
    spikes = T * B * 16 * 8 * 8 * 4
    head_grads = (16 * 8 * 8 + 1) * hidden * 4
    assert plan.peak_bytes >= 2 * spikes + head_grads, (plan.peak_bytes, spikes, head_grads)
