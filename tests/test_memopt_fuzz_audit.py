"""Cases found by differential fuzzing of ``optimize_memory`` against plain eager training.

Each test runs the same step on a plain model and on an ``optimize_memory`` copy and compares
loss, gradients and BatchNorm running statistics (float64: to float64 rounding).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import edgesnn
from edgesnn.nn import LIF, SeqToANN


def _step(model: nn.Module, x0: torch.Tensor, T: int):
    leaf = x0.clone().requires_grad_(True)
    x = leaf.unsqueeze(0).expand(T, *leaf.shape)  # input repeated over T
    loss = model(x).mean(0).square().sum()
    loss.backward()
    return loss.detach(), leaf.grad, [p.grad for p in model.parameters()], [b.clone() for b in model.buffers()]


@pytest.mark.parametrize("spatial", [None, 1])
def test_repeated_input_batch_of_one_with_one_value_per_channel(spatial):
    """A batch of one repeated over T: BatchNorm sees T values per channel in the plain model (which
    trains), but the optimized block computes on one copy, where ``F.batch_norm`` refused with
    "Expected more than 1 value per channel" (BatchNorm1d on [B, C], BatchNorm2d on 1x1 maps)."""
    torch.manual_seed(0)
    if spatial is None:
        layers = [SeqToANN(nn.Linear(3, 4)), SeqToANN(nn.BatchNorm1d(4)), LIF(), SeqToANN(nn.Linear(4, 2))]
        x0 = torch.rand(1, 3, dtype=torch.float64) * 2
    else:
        layers = [SeqToANN(nn.Conv2d(2, 4, 1)), SeqToANN(nn.BatchNorm2d(4)), LIF(), SeqToANN(nn.Flatten()),
                  SeqToANN(nn.Linear(4, 2))]
        x0 = torch.rand(1, 2, spatial, spatial, dtype=torch.float64) * 2
    plain = nn.Sequential(*layers).double()
    opt = copy.deepcopy(plain)
    T = 5
    edgesnn.optimize_memory(opt, x0.unsqueeze(0).expand(T, *x0.shape))
    ref = _step(plain, x0, T)
    got = _step(opt, x0, T)
    assert torch.allclose(ref[0], got[0], rtol=1e-12, atol=1e-12)
    assert torch.allclose(ref[1], got[1], rtol=1e-9, atol=1e-12)
    for a, b in zip(ref[2], got[2]):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    for a, b in zip(ref[3], got[3]):
        assert torch.equal(a, b) if not a.dtype.is_floating_point else torch.allclose(a, b, rtol=1e-12, atol=1e-15)
