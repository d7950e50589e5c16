"""An ``optimize_memory`` block runs its node's kernels itself; it still does what the node's own
forward does to its input and state: a membrane state that overflows the dtype raises
``NonFiniteInputError`` (the fused no-grad path gave spikes that silently stopped), inside
``torch.autocast`` the node computes in float32 (the optimized LIF integrated in bfloat16 and
flipped spikes; RevLIF refused its own autocast input), and ``check_finite`` scans the input."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import edgesnn
from edgesnn.functional.checks import NonFiniteInputError
from edgesnn.nn import LIF, RevLIF, SeqToANN

T, B, N = 8, 2, 4


def _identity_net(dtype: torch.dtype, **node) -> nn.Sequential:
    """Linear (identity weights) into a LIF that integrates without decay: the input reaches the state."""
    net = nn.Sequential(SeqToANN(nn.Linear(N, N)), LIF(v_reset=None, decay_input=False, **node)).to(dtype)
    with torch.no_grad():
        net[0].module.weight.copy_(torch.eye(N))
        net[0].module.bias.zero_()
    return net


def _optimized(net: nn.Module, x: torch.Tensor) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edgesnn.optimize_memory(net, x)
    return net


@pytest.mark.parametrize("dtype,big", [(torch.float32, 2.0e38), (torch.float16, 4.0e4)])
@pytest.mark.parametrize("grad", [False, True])
def test_an_overflowing_state_is_refused_as_by_the_plain_node(dtype, big, grad):
    x = torch.full((T, B, N), big, dtype=dtype)
    x[:3] = -big  # finite input; the state passes the dtype's range on the way down
    assert _identity_net(torch.float64)(x.double()).sum() > 0  # the true spikes: the last steps fire
    x.requires_grad_(grad)
    for net in (_identity_net(dtype), _optimized(_identity_net(dtype), x.detach())):
        with torch.set_grad_enabled(grad), pytest.raises(NonFiniteInputError, match="membrane state overflowed"):
            net(x)


@pytest.mark.parametrize("node", [LIF, RevLIF])
def test_inference_under_autocast_matches_the_plain_model(node):
    torch.manual_seed(0)
    net = nn.Sequential(SeqToANN(nn.Linear(16, 32)), node(tau=4.0, v_reset=None) if node is LIF else node())
    x = torch.randn(16, 2, 16) * 4
    plain, opt = net, _optimized(copy.deepcopy(net), x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = plain(x), opt(x)
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_check_finite_is_honoured():
    x = torch.randn(T, B, N)
    x[2, 0, 1] = float("nan")
    net = _optimized(_identity_net(torch.float32, check_finite=True), torch.randn(T, B, N))
    with torch.no_grad(), pytest.raises(NonFiniteInputError, match=r"^x_seq: expected finite values"):
        net(x)  # (the kernels' own check names the layer instead)
