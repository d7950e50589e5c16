"""Edge cases of the training exports' freeze / dropout handling found by an audit of the
on-device fine-tuning flow (fast: no ONNX graph is built)."""

from __future__ import annotations

import pytest
import torch

from edgesnn.export.prepare import ExportError, split_trainable
from edgesnn.export.step_program import build_step_program
from edgesnn.models import build_model
from edgesnn.nn import SeqToANN


def _mlp(**kw):
    torch.manual_seed(0)
    return build_model("mlp", (16,), 16, 4, neuron="revlif", hidden=(16, 16), **kw)


def test_freeze_takes_any_iterable_of_names():
    """A generator or a set of names means what the same list means (torch.optim takes generators too)."""
    model = _mlp()
    expected = split_trainable(model, ["body.1"])
    assert split_trainable(model, (n for n in ["body.1"])) == expected
    assert split_trainable(model, {"body.1"}) == expected
    assert split_trainable(model, ("body.1",)) == expected
    with pytest.raises(ExportError, match=r"^freeze: expected parameter or module names .*got \['body\.1', ''\]$"):
        split_trainable(model, ["body.1", ""])


def test_tied_parameters_are_refused_in_one_line():
    """A parameter registered under two names was listed once by named_parameters(); the step graph
    read it under the second name and failed in onnx's checker with a multi-line ValidationError
    (and a freeze of the second name said it names no parameter)."""
    model = _mlp()
    model.body[4].module.weight = model.body[1].module.weight  # tie two 16x16 Linear weights
    msg = r"^model: parameter body\.4\.module\.weight is the same tensor as body\.1\.module\.weight .*untie them"
    with pytest.raises(ExportError, match=msg):
        split_trainable(model)
    with pytest.raises(ExportError, match=msg):
        split_trainable(model, ["body.4.module.weight"])
    with pytest.raises(ExportError, match=msg):
        build_step_program(model, 4)


def test_zero_p_dropout_of_any_kind_exports_as_the_identity():
    """The active-dropout refusal says "set its p to 0 to fine-tune without it"; then onnx-step
    refused Dropout2d (and a dropout layer directly in the body) as an unsupported layer."""
    conv = build_model("convnet", (1, 8, 8), 10, 4, neuron="lif")
    conv.body.insert(6, SeqToANN(torch.nn.Dropout2d(0.3)))
    with pytest.raises(ExportError, match=r"Dropout2d, p=0\.3\) would train as the identity.*set its p to 0"):
        build_step_program(conv, 2)
    conv.body[6].module.p = 0.0
    prog = build_step_program(conv, 2)
    assert [leaf.kind for leaf in prog.stages[1].leaves] == ["conv", "bn"]
    assert [leaf.kind for leaf in prog.head] == ["identity", "pool", "flatten", "linear"]

    mlp = _mlp()
    mlp.body.insert(3, torch.nn.Dropout(0.0))  # directly in the body, not wrapped in SeqToANN
    plain = build_step_program(_mlp(), 2)
    prog = build_step_program(mlp, 2)
    assert len(prog.stages) == len(plain.stages) and len(prog.trainable) == len(plain.trainable)
