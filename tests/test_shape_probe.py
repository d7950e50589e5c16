"""edgesnn.shape_probe.probe_output: the one layer-shape probe of the planner and the NIR import."""

import pytest
import torch
from torch import nn

from edgesnn import shape_probe
from edgesnn.planner.memory_model import _out_shape as planner_out_shape


class NeedsRealValues(nn.Module):
    """A layer meta tensors cannot run: it reads a value (as a custom kernel would)."""

    def forward(self, x):
        return x[..., :2] * float(x.abs().sum() + 1)


def test_small_samples_run_for_real_and_big_ones_on_meta(monkeypatch):
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    conv.train()
    y = shape_probe.probe_output(conv, (3, 8, 8))
    assert y.device.type == "cpu" and tuple(y.shape) == (1, 4, 6, 6) and not y.requires_grad
    assert conv.training and conv[1].num_batches_tracked.item() == 0  # eval mode, then restored
    monkeypatch.setattr(shape_probe, "META_PROBE_BYTES", 3 * 8 * 8 * 4 - 1)  # this sample is now "big"
    y = shape_probe.probe_output(conv, (3, 8, 8))
    assert y.device.type == "meta" and tuple(y.shape) == (1, 4, 6, 6) and conv.training
    half = shape_probe.probe_output(nn.Flatten(), (3, 8, 8), torch.float16)  # sized by its dtype: 384 bytes
    assert half.dtype == torch.float16 and half.device.type == "cpu"
    assert shape_probe.probe_output(nn.Flatten(), (3, 8, 8)).device.type == "meta"  # float32: 768 bytes


def test_a_meta_failure_raises_unless_the_real_sample_is_wanted(monkeypatch):
    monkeypatch.setattr(shape_probe, "META_PROBE_BYTES", 0)
    layer = NeedsRealValues().train()
    with pytest.raises((RuntimeError, NotImplementedError)):
        shape_probe.probe_output(layer, (5,))  # the NIR import reports it, naming the node
    assert layer.training
    y = shape_probe.probe_output(layer, (5,), real_if_meta_fails=True)
    assert y.device.type == "cpu" and tuple(y.shape) == (1, 2)
    assert planner_out_shape(layer, (5,), torch.float32) == (2,)  # the planner measures it for real


def test_shape_errors_propagate_unchanged():
    with pytest.raises(RuntimeError, match="mat1 and mat2 shapes cannot be multiplied"):
        shape_probe.probe_output(nn.Linear(4, 2), (5,))
    with pytest.raises(TypeError, match="not one tensor"):
        planner_out_shape(_Pair(), (3,), torch.float32)


class _Pair(nn.Module):
    def forward(self, x):
        return x, x
