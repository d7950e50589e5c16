"""``--format onnx-step`` with MaxPool2d (kernel = stride, the spiking VGG habit): its explicit VJP
sends each output gradient to the window's first maximum, as PyTorch's backward does. Pools follow
spiking layers, so windows holding two spikes tie all the time: the VJP must pick the same cell.

* The VJP alone equals autograd bit for bit on spike maps and real values, even/odd sizes and
  non-square kernels.
* 5 runner steps of a conv net with MaxPool2d (LIF and RevLIF; an odd 7x7 input whose floor-mode
  pool drops a row and a column) match PyTorch eager; the first step's gradients to 2e-5. The LIF
  net's pooled spike maps hold tied windows (counted), so the runner's tie-breaking is exercised.
* Pools the VJP does not cover (overlapping windows, padding, ceil mode, dilation) are refused
  in one line naming the layer.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _step_compare import runner_matches_torch
from test_export_common import needs_onnx_runtime


@pytest.mark.parametrize("shape,kernel", [((3, 2, 6, 6), 2), ((2, 3, 7, 5), 2), ((2, 1, 9, 9), 3), ((2, 2, 6, 9), (2, 3))])
@pytest.mark.parametrize("spikes", [True, False], ids=["spikes", "real"])
def test_maxpool_vjp_is_autograds(shape, kernel, spikes):
    from edgesnn.export.step_layers import leaf_vjp, make_leaf

    g = torch.Generator().manual_seed(0)
    x = (torch.rand(shape, generator=g) < 0.4).float() if spikes else torch.randn(shape, generator=g)
    pool = nn.MaxPool2d(kernel)
    xr = x.clone().requires_grad_()
    y = pool(xr)
    gy = torch.randn(y.shape, generator=g)
    y.backward(gy)
    gx, grads = leaf_vjp(make_leaf("p", pool), {}, x, gy)
    assert grads == {} and torch.equal(gx, xr.grad)


@pytest.mark.parametrize("pool", [nn.MaxPool2d(3, 2), nn.MaxPool2d(2, padding=1), nn.MaxPool2d(2, ceil_mode=True),
                                  nn.MaxPool2d(2, dilation=2), nn.MaxPool2d(2, return_indices=True)],
                         ids=["overlap", "padding", "ceil", "dilation", "indices"])
def test_other_maxpools_are_refused_in_one_line(pool):
    from edgesnn.export.prepare import ExportError
    from edgesnn.export.step_layers import make_leaf

    with pytest.raises(ExportError, match=r"^onnx-step: body\.3\.module: only MaxPool2d with kernel_size == stride") as e:
        make_leaf("body.3.module", pool)
    assert "\n" not in str(e.value)


def _maxpool_convnet(shape, neuron):
    from edgesnn.models import build_model
    from edgesnn.nn import SeqToANN

    torch.manual_seed(0)
    model = build_model("convnet", shape, 3, 4, neuron=neuron, channels=(4, 4))
    pools = [i for i, m in enumerate(model.body) if isinstance(m, SeqToANN) and isinstance(m.module, nn.AvgPool2d)]
    assert pools
    for i in pools:
        model.body[i] = SeqToANN(nn.MaxPool2d(2))
    with torch.no_grad():  # larger BatchNorm scales: the pooled layer spikes often (ties need spikes)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(3.0)
                m.bias.fill_(1.0)
    return model.eval()


@needs_onnx_runtime
@pytest.mark.parametrize("shape,neuron", [((1, 7, 7), "lif"), ((2, 6, 6), "revlif")], ids=["7x7-lif", "6x6-revlif"])
def test_maxpool_convnet_steps_match_torch(tmp_path, shape, neuron):
    from edgesnn.export.prepare import export_copy

    model = _maxpool_convnet(shape, neuron)
    ref = export_copy(model)
    ties = []
    pool = next(m.module for m in ref.body if hasattr(m, "module") and isinstance(m.module, nn.MaxPool2d))
    pool.register_forward_hook(lambda m, inp, out: ties.append(_tied_windows(inp[0])))
    runner_matches_torch(model, tmp_path / "art", 3, ref=ref)
    if neuron == "lif":  # LIF emits 0/1 spikes (RevLIF's mixed outputs are real values and rarely tie)
        assert sum(ties) > 0, "no window held two equal spikes: the tie-breaking went untested"


def _tied_windows(x: torch.Tensor) -> int:
    """Windows of a 2x2 tiling pool whose maximum (a spike) occurs more than once."""
    H, W = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    w = x[..., :H, :W].unfold(-2, 2, 2).unfold(-2, 2, 2).reshape(*x.shape[:-2], H // 2, W // 2, 4)
    m = w.max(-1, keepdim=True).values
    return int(((w == m).sum(-1) > 1)[m.squeeze(-1) > 0].sum())
