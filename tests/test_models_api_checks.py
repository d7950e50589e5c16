"""build_model's arguments and evaluate()/train() as called from Python: one-line errors, never a
silently different model or a wrong accuracy."""

import numpy as np
import pytest
import torch
from torch import nn

from edgesnn.models import build_model
from edgesnn.training import Split, TrainConfig, evaluate, train


@pytest.mark.parametrize("kwargs,match", [
    (dict(in_shape="64"), r"^in_shape: expected a sequence"),  # was (6, 4)
    (dict(in_shape=(64.7,)), r"^in_shape: expected integers >= 1"),  # was (64,)
    (dict(in_shape=(0,)), r"^in_shape: expected integers >= 1"),
    (dict(in_shape=()), r"^in_shape: expected at least one"),
    (dict(in_shape=(-3,)), r"^in_shape: expected integers >= 1"),  # was a torch traceback
    (dict(timesteps=2.7), r"^timesteps: expected an integer >= 1, got 2\.7"),  # was T=2
    (dict(timesteps=True), r"^timesteps: expected an integer"),  # was T=1
    (dict(timesteps="4"), r"^timesteps: expected an integer"),
    (dict(timesteps=None), r"^timesteps: expected an integer"),
    (dict(batchnorm="no"), r"^batchnorm: expected True or False"),  # was BatchNorm on
    (dict(batchnorm=None), r"^batchnorm: expected True or False"),
    (dict(hidden=()), r"^hidden: expected at least one"),  # was a model with no spiking layer
    (dict(hidden=(0,)), r"^hidden: expected integers >= 1"),
    (dict(hidden=(12.5,)), r"^hidden: expected integers >= 1"),
    (dict(hidden=128), r"^hidden: expected a sequence"),
    (dict(node={"taux": 2.0}), r"^node: unknown argument\(s\) taux"),
    (dict(node={"groups": 4}, neuron="revlif"), r"^node: unknown argument\(s\) groups \(the group count"),
    (dict(node=[1]), r"^node: expected a dict"),
    (dict(revlif={"foo": 1}, neuron="revlif"), r"^revlif: unknown argument\(s\) foo"),
    (dict(revlif={"tau": 3.0}, node={"tau": 2.0}, neuron="revlif"), r"^revlif: tau also given in node"),
])
def test_mlp_bad_arguments_are_one_line(kwargs, match):
    args = dict(name="mlp", in_shape=(64,), num_classes=10, timesteps=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        build_model(**args)


@pytest.mark.parametrize("kwargs,match", [
    (dict(channels=(16, "M", 32)), r"^channels: expected integers >= 1"),  # was an extra pooling layer
    (dict(channels=()), r"^channels: expected at least one"),
    (dict(channels=(0,)), r"^channels: expected integers >= 1"),
    (dict(in_shape=(0, 8, 8)), r"^in_shape: expected integers >= 1"),
    (dict(in_shape=(1, -8, 8)), r"^in_shape: expected integers >= 1"),
    (dict(in_shape=(8, 8)), r"^in_shape: model 'convnet' needs \(C, H, W\)"),
])
def test_convnet_bad_arguments_are_one_line(kwargs, match):
    args = dict(name="convnet", in_shape=(1, 8, 8), num_classes=10, timesteps=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        build_model(**args)


def test_good_arguments_still_build_and_record_plain_ints():
    m = build_model("mlp", [np.int64(8)], np.int64(3), np.int64(2), ("lif", "revlif"), hidden=[np.int64(4), 4],
                    node={"tau": 3.0}, revlif={"alpha": 0.25})
    assert m.config["in_shape"] == [8] and type(m.config["num_classes"]) is int and m.timesteps == 2
    assert m.config["neuron"] == ["lif", "revlif"] and m.config["hidden"] == [4, 4]
    assert build_model("convnet", torch.Size([1, 8, 8]), 4, 2, channels=[4]).in_shape == (1, 8, 8)
    with pytest.raises(TypeError, match=r"^neuron: expected a spec"):
        build_model("mlp", (8,), 3, 2, None)


def _model_and_split(n=10):
    torch.manual_seed(0)
    model = build_model("mlp", (8,), 3, 2, hidden=(16,), node={"backend": "torch"})
    x = torch.rand(n, 8)
    with torch.no_grad():
        pred = model.eval()(x).argmax(1)
    model.train()
    return model, x, pred


def test_evaluate_restores_the_mode_and_counts_the_last_batch():
    model, x, pred = _model_and_split()
    y = pred.clone()
    y[[1, 9]] = (y[[1, 9]] + 1) % 3  # two wrong, one of them in the last (single-sample) batch
    bn = [b.clone() for b in model.buffers()]
    assert evaluate(model, Split(x, y), batch_size=3) == pytest.approx(0.8)
    assert model.training  # was left in eval mode: later training steps ran BatchNorm on running stats
    assert all(torch.equal(a, b) for a, b in zip(bn, model.buffers()))
    model.eval()
    evaluate(model, Split(x, y), batch_size=4)
    assert not model.training


@pytest.mark.parametrize("make,match", [
    (lambda x, p: Split(x, p[:, None]), r"^labels: expected one integer class per sample"),  # was 10.0 (1000%)
    (lambda x, p: Split(x, p + 3), r"^labels: expected classes 0\.\.2 \(the model has 3 outputs\), got labels [3-5]"),  # was 0.0
    (lambda x, p: Split(x, p - 3), r"^labels: expected classes 0\.\.2"),
    (lambda x, p: Split(x, p.float()), r"^labels: expected one integer class"),
    (lambda x, p: Split(x[:0], p[:0]), r"^data: the split has no samples"),  # was 0.0
    (lambda x, p: Split(torch.cat([x, x]), p), r"^data: 20 inputs but 10 labels"),  # was 1.0 over half the inputs
    (lambda x, p: Split((x * 10).long(), p), r"^data: static inputs must be floating point"),
    (lambda x, p: Split(torch.rand(10, 5, 8), p, events=True), r"^data: event frames \[N, T, \.\.\.\] have T=5, .*timesteps=2"),
])
def test_evaluate_refuses_data_it_would_score_wrongly(make, match):
    model, x, pred = _model_and_split()
    with pytest.raises(ValueError, match=match):
        evaluate(model, make(x, pred))
    assert model.training


@pytest.mark.parametrize("bs", [0, -1, 2.5, True])
def test_evaluate_batch_size(bs):
    model, x, pred = _model_and_split()
    with pytest.raises(ValueError, match=r"^batch_size: expected an integer >= 1"):  # -1 gave 0.0
        evaluate(model, Split(x, pred), batch_size=bs)


def test_train_stops_on_a_non_finite_loss(monkeypatch):
    class NaNLoss(nn.CrossEntropyLoss):
        def forward(self, logits, target):
            return super().forward(logits, target) * float("nan")

    monkeypatch.setattr(nn, "CrossEntropyLoss", NaNLoss)
    cfg = TrainConfig(epochs=1, timesteps=1, hidden=[8], backend="torch")
    with pytest.raises(ValueError, match=r"^loss: nan at step 1 \(epoch 1\); training diverged"):
        train(cfg, progress=False, log=lambda s: None, max_steps=3)


def test_timesteps_assigned_after_building_reach_the_checkpoint(tmp_path):
    """``model.timesteps = 8`` changed the model but not ``model.config``, so a checkpoint saved with
    it rebuilt the model at the built T without a word."""
    from edgesnn.checkpoint import save_checkpoint
    from edgesnn.training.loop import model_from_checkpoint

    model = build_model("mlp", (16,), 3, 4)
    model.timesteps = 8
    save_checkpoint(tmp_path / "m.ckpt", model.config, model.state_dict())
    assert model_from_checkpoint(tmp_path / "m.ckpt").timesteps == 8
    with pytest.raises(ValueError, match=r"^timesteps: expected an integer >= 1, got 0$"):
        model.timesteps = 0
    assert (model.timesteps, model.config["timesteps"]) == (8, 8)
    model.timesteps = np.int64(6)  # as build_model takes it
    assert (model.timesteps, model.config["timesteps"]) == (6, 6) and type(model.timesteps) is int
