"""Step peaks of optimize_memory's blocks against the plan, measured in a fresh process (peak RSS
above the warmed-up process; ``tests/_rss_measure.py``), within the planner tests' 15%."""

import pytest

from edgesnn.kernels.dispatch import numba_available

from _rss_measure import measured_and_predicted, step_peak_script

#: one conv -> LIF block before an average pool and a linear head (n: the node)
_CONV_AVG_HEAD = ("nn.Sequential(SeqToANN(nn.Conv2d(4, 64, 3, padding=1)), n(), SeqToANN(nn.AvgPool2d(2)), "
                  "SeqToANN(nn.Flatten(), nn.Linear(64 * 16 * 16, 10)))")


@pytest.mark.skipif(not numba_available(), reason="the fused kernels need numba")
def test_a_repeated_input_block_before_an_average_pool_counts_its_spike_gradient():
    """The LIF kernel before linear layers (an average pool, flatten) gets the spikes' gradient for
    the whole range it is fed at once ([K, B, 64, 32, 32]); the plan left it out: at T = 8, batch 16
    predicted 35 MiB against 61 MiB measured (-42%; -57% at T = 16), so a budget it accepted was
    exceeded. Measured after: 61 MiB against 67 MiB predicted."""
    measured, predicted = measured_and_predicted(step_peak_script(T=8, B=16, repeated=True, node="LIF",
                                                                  backend="numba", model=_CONV_AVG_HEAD))
    assert abs(predicted - measured) <= 0.15 * measured, (predicted, measured)


#: a 512 -> 512 convolution at 4 x 4 (9.4 MB of weights against 0.1 MB of layer output per step)
_WIDE_CONV = ("nn.Sequential(SeqToANN(nn.Conv2d(4, 512, 3, padding=1, stride=8)), n(), "
              "SeqToANN(nn.Conv2d(512, 512, 3, padding=1)), n(), SeqToANN(nn.Flatten(), nn.Linear(512 * 4 * 4, 10)))")


@pytest.mark.skipif(not numba_available(), reason="the fused kernels need numba")
def test_a_block_backward_over_several_chunks_counts_the_summed_weight_gradient():
    """From its second chunk on, a block's backward holds each chunk's new weight gradient beside
    their sum (memopt.paramgrads' stand-ins): at T = 8, batch 4, chunks of 2 steps, predicted 21 MiB
    against 30 measured (-30%; VGG-11's 512-channel blocks -20..-26%). Measured after: 30.0 against 30.4."""
    measured, predicted = measured_and_predicted(step_peak_script(T=8, B=4, repeated=False, node="LIF",
                                                                  backend="numba", model=_WIDE_CONV, chunk=2))
    assert abs(predicted - measured) <= 0.15 * measured, (predicted, measured)
