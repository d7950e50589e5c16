"""The training exports for a SpikingJelly user's network: a body of SpikingJelly's multi-step
stateless layers (``layer.Conv2d/BatchNorm2d/MaxPool2d/AvgPool2d/Flatten/Linear`` with
``step_mode='m'``) and edgesnn neurons, wrapped in a ``SpikingClassifier``.

* ``onnx-step`` fine-tunes it on the device like an edgesnn model: 5 runner steps match PyTorch
  eager (LIF and RevLIF in one net). A layer left single-step is refused in one line.
* ``onnx-training``: its frozen-statistics BatchNorm normalises such a layer's ``[T, B, C, ...]``
  over ``T * B`` as the layer does (it took T for the batch and B for the channels: an error, or
  wrong numbers when B equalled C); ORT's gradients equal PyTorch's.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _errors import one_line_error
from _step_compare import runner_matches_torch
from test_export_common import needs_onnx_runtime, needs_ort

pytest.importorskip("spikingjelly.activation_based")
from spikingjelly.activation_based import functional, layer  # noqa: E402


def _sj_classifier(step_mode: str = "m"):
    from edgesnn.models import SpikingClassifier
    from edgesnn.nn import LIF, RevLIF

    torch.manual_seed(0)
    body = nn.Sequential(
        layer.Conv2d(2, 4, 3, padding=1, bias=False), layer.BatchNorm2d(4), LIF(step_mode="m"), layer.MaxPool2d(2),
        layer.Conv2d(4, 4, 3, padding=1, bias=False), layer.BatchNorm2d(4), RevLIF(groups=2, step_mode="m"),
        layer.AvgPool2d(2), layer.Flatten(), layer.Linear(4 * 2 * 2, 8), layer.BatchNorm1d(8), LIF(step_mode="m"),
        layer.Linear(8, 3))
    functional.set_step_mode(body, step_mode)  # SpikingJelly's layers (edgesnn's nodes were built multi-step)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # trained-looking BatchNorm statistics, and layers that spike
        for m in body.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.fill_(3.0)
                m.bias.fill_(1.0)
    return SpikingClassifier(body, 4, (2, 8, 8), {}).eval()


@needs_onnx_runtime
def test_spikingjelly_body_steps_match_torch(tmp_path):
    model = _sj_classifier()
    assert model(torch.rand(2, 2, 8, 8)).shape == (2, 3)
    runner_matches_torch(model, tmp_path / "art", 3)


def test_single_step_layers_are_refused_in_one_line():
    from edgesnn.export.onnx_step import build_step_program
    from edgesnn.export.prepare import ExportError

    model = _sj_classifier()
    model.body[0].step_mode = "s"
    msg = one_line_error(ExportError, lambda: build_step_program(model, 4))
    assert "layer body.0 (Conv2d) has step_mode='s'" in msg and "step_mode='m'" in msg, msg


@needs_ort
def test_spikingjelly_body_onnx_training_gradients_match_torch(tmp_path):
    import numpy as np

    from edgesnn.export.onnx_training import export_onnx_training
    from edgesnn.export.prepare import export_copy
    from edgesnn.export.runner import import_ort_training_api

    model = _sj_classifier()
    export_onnx_training(model, tmp_path / "art", batch_size=4)  # batch 4 = the first BatchNorm's 4 channels
    ort, CheckpointState, Module, _ = import_ort_training_api()
    ort.set_default_logger_severity(3)
    state = CheckpointState.load_checkpoint(str(tmp_path / "art" / "checkpoint"))
    module = Module(str(tmp_path / "art" / "training_model.onnx"), state, str(tmp_path / "art" / "eval_model.onnx"))
    module.train()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(4, 2, 8, 8, generator=g) * 2.0, torch.randint(0, 3, (4,), generator=g)
    ort_loss = float(module(x.numpy(), y.numpy().astype(np.int64)))
    ref = export_copy(model)
    loss = torch.nn.functional.cross_entropy(ref(x), y)
    loss.backward()
    assert abs(ort_loss - loss.item()) <= 1e-5
    for n, p in ref.named_parameters():
        np.testing.assert_allclose(state.parameters[n].grad, p.grad.numpy(), atol=1e-5, err_msg=n)
    assert float(ref.body[0].weight.grad.abs().max()) > 1e-4  # the gradient reached the first layer
