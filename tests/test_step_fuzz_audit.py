"""``--format onnx-step``: the minimal cases a differential fuzz of the step exporter turned up.

* A ``Linear`` on an input with more than one feature dim (``[B, C, H, W]`` after a convolution's
  spiking layer, or a ``(S, F)`` sample) is what ``nn.Linear`` supports (it acts on the last dim),
  but its weight-gradient VJP used ``gy.t()`` and the export crashed with a RuntimeError. It now
  exports and its runner steps match PyTorch eager (gradients, loss, parameters).
* A body whose per-step output is not ``[B, classes]`` (a conv net ending at a spiking layer, a
  ``Linear`` on ``[B, S, F]`` as the head) crashed deep inside the graph build; it is refused in one line.
* ``chunk=4.0`` passed the ``chunk in (1, 2, 4)`` check and then crashed (``T // 4.0``); a
  non-integer chunk is refused in one line like any other bad chunk.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _errors import one_line_error
from _step_compare import runner_matches_torch
from test_export_common import needs_onnx_runtime

pytestmark = needs_onnx_runtime


def _classifier(body, T, in_shape, seed=0):
    from edgesnn.models import SpikingClassifier

    torch.manual_seed(seed)
    model = SpikingClassifier(nn.Sequential(*body), T, in_shape, {"num_classes": 3})
    with torch.no_grad():  # enough drive that every layer spikes and gets a gradient
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.mul_(3.0)
    return model.eval()


def _lif():
    from edgesnn.nn import LIF

    return LIF(v_threshold=0.5, backend="torch")


def _revlif():
    from edgesnn.nn import RevLIF

    return RevLIF(groups=2, backend="torch", step_mode="m")


def test_linear_on_conv_feature_maps_trains_like_torch(tmp_path):
    """Conv2d -> LIF -> Linear over the width of [B, C, H, W] -> LIF -> Flatten, Linear: was a
    RuntimeError at export (``t() expects a tensor with <= 2 dimensions``)."""
    from edgesnn.nn import SeqToANN

    model = _classifier([SeqToANN(nn.Conv2d(1, 2, 3, padding=1)), _lif(), SeqToANN(nn.Linear(4, 3)), _lif(),
                         SeqToANN(nn.Flatten(), nn.Linear(2 * 4 * 3, 3))], 4, (1, 4, 4))
    _, _, start, ref = runner_matches_torch(model, tmp_path / "art", 3, steps=3, batch=3)
    grad = ref.body[2].module.weight.grad  # the 4-d Linear's own gradient (last step's) is not vacuous
    assert grad is not None and grad.abs().max() > 0


def test_linear_on_sequence_samples_trains_like_torch(tmp_path):
    """A (S, F) sample: Linear on [B, S, F] before the first spiking layer (the prefix VJP) and
    between two RevLIF layers (a bias-free one too), two steps per loop iteration."""
    from edgesnn.nn import SeqToANN

    model = _classifier([SeqToANN(nn.Linear(4, 4)), _revlif(), SeqToANN(nn.Linear(4, 4, bias=False)), _revlif(),
                         SeqToANN(nn.Flatten(), nn.Linear(2 * 4, 3))], 2, (2, 4), seed=1)
    runner_matches_torch(model, tmp_path / "art", 3, steps=3, batch=3)


@pytest.mark.parametrize("case", ["conv-ends-at-spikes", "linear-head-on-3d"])
def test_logits_that_are_not_batch_by_classes_are_refused(tmp_path, case):
    from edgesnn.export.onnx_step import export_onnx_step
    from edgesnn.export.prepare import ExportError
    from edgesnn.nn import SeqToANN

    if case == "conv-ends-at-spikes":
        model, shape = _classifier([SeqToANN(nn.Conv2d(1, 3, 3, padding=1)), _lif()], 2, (1, 4, 4)), "[B, 3, 4, 4]"
    else:
        model, shape = _classifier([SeqToANN(nn.Linear(4, 3)), _lif(), SeqToANN(nn.Linear(3, 3))], 2, (2, 4)), "[B, 2, 3]"
    one_line_error(ExportError, lambda: export_onnx_step(model, tmp_path / "art", 2, "sgd", 0.05), shape,
                   "expected logits [B, classes]")
    assert not (tmp_path / "art").exists()  # refused before anything is written


def test_non_integer_chunk_is_refused(tmp_path):
    from edgesnn.export.onnx_step import export_onnx_step
    from edgesnn.export.prepare import ExportError
    from edgesnn.nn import SeqToANN

    model = _classifier([SeqToANN(nn.Linear(4, 4)), _lif(), SeqToANN(nn.Linear(4, 3))], 4, (4,))
    one_line_error(ExportError, lambda: export_onnx_step(model, tmp_path / "art", 2, "sgd", 0.05, chunk=4.0),
                   "chunk: expected 1, 2 or 4", "got 4.0")
    assert not (tmp_path / "art").exists()
