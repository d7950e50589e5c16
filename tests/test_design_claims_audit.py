"""README / docs/design.md claims about ``optimize_memory`` checked against the code.

README ("Whole-network training memory"): "subclasses that override the forward of a node or of
the layers above [...] are left as they are". A block recomputes its layers per chunk in
backward, so a layer whose own code runs there again (a random draw, a call count) would give a
gradient of another forward than the one that ran, silently, as Dropout would; and a ``SeqToANN``
subclass was bypassed altogether (its wrapped modules were run instead of its ``forward``).
"""

from __future__ import annotations

import copy
import warnings
from typing import List, Tuple

import pytest
import torch
from torch import nn

import edgesnn
from edgesnn.memopt.layers import block_steps, child_steps, own_forward
from edgesnn.nn import LIF, SeqToANN

T, B = 6, 3


class NoisyConv(nn.Conv2d):
    """Weight noise drawn at every call (hardware-aware training)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * (1 + 0.2 * torch.randn_like(self.weight))
        return self._conv_forward(x, w, self.bias)


class CountingConv(nn.Conv2d):
    """Counts its calls through ``_conv_forward`` (``forward`` itself is nn.Conv2d's)."""

    calls = 0

    def _conv_forward(self, x, weight, bias):
        type(self).calls += 1
        return super()._conv_forward(x, weight, bias)


class Doubled(SeqToANN):
    """A wrapper subclass whose forward computes something else than its wrapped modules."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


def _net(first: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(first, LIF(), SeqToANN(nn.MaxPool2d(2)),
                        SeqToANN(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)), LIF(),
                        SeqToANN(nn.Flatten(), nn.Linear(4 * 4 * 4, 3))).double()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(3)
    return net


def _x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(T, B, 2, 8, 8, dtype=torch.float64) * 2


def _optimized(net: nn.Sequential) -> Tuple[nn.Sequential, List[str]]:
    opt = copy.deepcopy(net)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        edgesnn.optimize_memory(opt, _x(), chunk=2)
    return opt, [str(w.message) for w in caught]


def _step(model: nn.Module, seed: int) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = (model(_x()) ** 2).sum()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def _first_block_start(model: nn.Sequential) -> int:
    return min(b.start for b in model._memopt_blocks)


def _assert_same_step(net: nn.Sequential, opt: nn.Sequential, seed: int) -> None:
    """The optimized model's loss equals the plain one's and its gradients agree to float64 rounding."""
    loss_p, grads_p = _step(net, seed=seed)
    loss_o, grads_o = _step(opt, seed=seed)
    assert torch.equal(loss_p, loss_o)
    for a, b in zip(grads_p, grads_o):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_layer_subclass_drawing_noise_keeps_the_plain_gradient():
    net = _net(SeqToANN(NoisyConv(2, 4, 3, padding=1), nn.BatchNorm2d(4)))
    opt, caught = _optimized(net)
    assert _first_block_start(opt) == 1  # the noisy layer runs as a plain module
    assert any("SeqToANN at '0' (a layer subclass with its own forward" in w for w in caught), caught
    _assert_same_step(net, opt, seed=7)


def test_layer_subclass_runs_its_code_once_per_step():
    net = _net(SeqToANN(CountingConv(2, 4, 3, padding=1), nn.BatchNorm2d(4)))
    opt, _ = _optimized(net)
    CountingConv.calls = 0
    _step(opt, seed=0)
    assert CountingConv.calls == 1  # the plain model's count: not once per chunk and pass


def test_seqtoann_subclass_with_its_own_forward_is_not_bypassed():
    net = _net(Doubled(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)))
    opt, caught = _optimized(net)
    assert _first_block_start(opt) == 1
    assert any("Doubled at '0' (a SeqToANN subclass" in w for w in caught), caught
    _assert_same_step(net, opt, seed=0)


@pytest.mark.parametrize("layer,own", [
    (nn.Conv2d(2, 4, 3), False), (NoisyConv(2, 4, 3), True), (CountingConv(2, 4, 3), True),
    (nn.MaxPool2d(2), False), (nn.Linear(3, 3), False),
])
def test_plain_torch_layers_still_form_blocks(layer, own):
    assert own_forward(layer) is own
    wrapped = SeqToANN(layer)
    assert child_steps(wrapped) is not None  # what the layer is does not change
    assert (block_steps(wrapped) is None) is own
    net = _net(SeqToANN(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)))
    opt, caught = _optimized(net)
    assert _first_block_start(opt) == 0 and not caught
