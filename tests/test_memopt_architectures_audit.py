"""``optimize_memory`` on architectures users train: what it leaves as plain modules is named.

A multi-step model wraps its per-step layers in ``SeqToANN``, so a layer the optimizer cannot run
(GroupNorm, LayerNorm, Dropout, an activation between a convolution and its BatchNorm) sits inside
a wrapper. The one warning about parts left as they are must name that layer, not only the
wrapper, and the optimized model must still train exactly as the plain one.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import edgesnn
from edgesnn.nn import LIF, SeqToANN

from _strong_convs import strong_convs

T, B = 4, 2


def _net(inner: nn.Module) -> nn.Sequential:
    """conv + ``inner`` (unsupported) -> LIF | wrapped Dropout | conv + BatchNorm -> LIF | head, float64."""
    torch.manual_seed(0)
    net = nn.Sequential(
        SeqToANN(nn.Conv2d(2, 4, 3, padding=1), inner), LIF(),
        SeqToANN(nn.Dropout(0.25)),
        SeqToANN(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)), LIF(),
        SeqToANN(nn.Flatten(), nn.Linear(4 * 16, 3)),
    )
    return strong_convs(net)


def _grads(model: nn.Module, x: torch.Tensor) -> list:
    """Input and parameter gradients of one step (Dropout's mask drawn from the same seed)."""
    x = x.clone().requires_grad_(True)
    torch.manual_seed(1)
    out = model(x)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)).sum().backward()
    return [x.grad] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("inner, name", [
    (nn.GroupNorm(2, 4), "GroupNorm"),
    (nn.LayerNorm([4, 4, 4]), "LayerNorm"),
    (nn.ReLU(), "ReLU"),
])
def test_the_layer_inside_a_wrapper_left_as_it_is_is_named(inner, name):
    base = _net(inner)
    opt = copy.deepcopy(base)
    x = torch.rand(T, B, 2, 4, 4, dtype=torch.float64) * 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        edgesnn.optimize_memory(opt, x, chunk=2)
    msgs = [str(w.message) for w in caught if "optimize_memory" in str(w.message)]
    assert len(msgs) == 1, msgs
    assert f"SeqToANN at '0' (its {name} is not a supported layer)" in msgs[0], msgs[0]
    assert "SeqToANN at '2' (its Dropout: not supported: a recomputation would draw a new mask)" in msgs[0], msgs[0]
    for a, b in zip(_grads(base, x), _grads(opt, x)):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_a_hooked_layer_inside_a_wrapper_is_named_as_hooked():
    base = _net(nn.BatchNorm2d(4))
    base[0].module[1].register_forward_hook(lambda m, a, o: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        edgesnn.optimize_memory(base, torch.rand(T, B, 2, 4, 4, dtype=torch.float64), chunk=2)
    msgs = [str(w.message) for w in caught if "optimize_memory" in str(w.message)]
    assert len(msgs) == 1 and "SeqToANN at '0' (its BatchNorm2d has hooks)" in msgs[0], msgs
