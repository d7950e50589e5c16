"""Frozen parameters in the training exports: ``freeze=`` / ``--freeze`` and ``requires_grad=False``.

A frozen parameter is read by the step graph but never updated: the device must train exactly what
``torch.optim`` trains when those parameters have ``requires_grad=False``, keep the frozen ones bit
for bit, and carry no optimizer state for them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from test_export_common import needs_onnx_runtime, ort_training_available, run_python
from test_export_step import _RUNNER, _batches, _export_cli, _model

BATCH = 8
STEPS = 8

# (model, neuron, T, optimizer, frozen layers): a frozen prefix (the backward stops at the first
# spiking layer), a frozen middle layer, a frozen head, frozen conv layers, only the head training
# (no layer VJP returns an input gradient: the spiking layers walk back on zero gradients), one
# parameter of a layer
CASES = [("mlp", "revlif", 6, "sgd", ["body.1"]), ("mlp", "lif", 4, "adamw", ["body.1", "body.5"]),
         ("mlp", "revlif", 8, "sgd", ["body.7"]), ("convnet", "revlif", 6, "adamw", ["body.1"]),
         ("convnet", "lif", 5, "sgd", ["body.0", "body.1"]),
         ("mlp", "revlif", 6, "adamw", ["body.1", "body.2", "body.4", "body.5"]),  # the head only
         ("convnet", "revlif", 4, "sgd", ["body.0", "body.1", "body.3.module.weight"])]


@needs_onnx_runtime
@pytest.mark.parametrize("name,neuron,T,optimizer,freeze", CASES, ids=["-".join(map(str, c[:4])) + "-" + "+".join(c[4])
                                                                       for c in CASES])
def test_frozen_layers_stay_fixed_and_the_rest_trains_as_torch(tmp_path, name, neuron, T, optimizer, freeze):
    from edgesnn.export.artifacts import validate_artifact_dir
    from edgesnn.export.onnx_step import export_onnx_step
    from edgesnn.export.prepare import export_copy
    from edgesnn.export.runner import import_plain_ort
    from edgesnn.export.step_runner import StepSession

    model = _model(name, neuron, T)
    lr = 0.05 if optimizer == "sgd" else 0.01
    export_onnx_step(model, tmp_path / "art", BATCH, optimizer, lr, momentum=0.9, freeze=freeze)
    manifest = validate_artifact_dir(tmp_path / "art")
    fixed = [n for n, _ in model.named_parameters() if any(n == f or n.startswith(f + ".") for f in freeze)]
    assert fixed and not set(fixed) & set(manifest.trainable)
    assert set(fixed) <= set(manifest.frozen)
    assert not [s for s in manifest.optimizer_state if any(s.startswith(n + ".") for n in fixed)]
    with np.load(tmp_path / "art" / "init.npz") as npz:
        start = {k: npz[k] for k in npz.files}
    sess = StepSession(import_plain_ort(), tmp_path / "art", manifest, start, threads=1, lean_memory=True)
    sess.set_lr(lr)

    ref = export_copy(model)  # the oracle: torch autograd with requires_grad=False on the frozen layers
    params = dict(ref.named_parameters())
    for n in fixed:
        params[n].requires_grad_(False)
    opt = (torch.optim.SGD(ref.parameters(), lr=lr, momentum=0.9) if optimizer == "sgd"
           else torch.optim.AdamW(ref.parameters(), lr=lr))
    for k, (x, y) in enumerate(_batches(model, STEPS)):
        loss, _, err = sess.step(x.numpy(), y.numpy())
        out = torch.nn.functional.cross_entropy(ref(x), y)
        opt.zero_grad()
        out.backward()
        opt.step()
        assert err == 0.0 and abs(loss - out.item()) < 1e-5, (k, loss, out.item(), err)
    got = sess.values()
    for n in fixed:
        assert np.array_equal(got[n], start[n]), f"frozen {n} changed on the device"
    diffs = {n: float(np.abs(got[n] - p.detach().numpy()).max()) for n, p in params.items()}
    assert max(diffs.values()) < 1e-5, diffs
    trained = [n for n in manifest.trainable if float(np.abs(got[n] - start[n]).max()) > 1e-4]
    assert trained, "nothing trained: the comparison above would be vacuous"


@needs_onnx_runtime
def test_requires_grad_false_is_honoured_and_named_freeze_is_checked(tmp_path):
    from edgesnn.export.onnx_step import export_onnx_step
    from edgesnn.export.prepare import ExportError, split_trainable

    model = _model("mlp", "revlif", 4)
    for p in model.body[7].parameters():
        p.requires_grad_(False)
    trainable, fixed = split_trainable(model)
    assert fixed == ["body.7.module.weight", "body.7.module.bias"] and "body.1.module.weight" in trainable
    manifest = export_onnx_step(model, tmp_path / "a", 4)
    assert "body.7.module.weight" in manifest.frozen and "body.7.module.weight" not in manifest.trainable
    assert all(p.requires_grad is False for p in model.body[7].parameters())  # the user's model is untouched
    # one parameter by its full name; a trailing dot is the same layer
    assert split_trainable(model, ["body.1.module.bias"])[1] == ["body.1.module.bias", "body.7.module.weight",
                                                                 "body.7.module.bias"]
    assert split_trainable(model, "body.4.")[1][:2] == ["body.4.module.weight", "body.4.module.bias"]
    with pytest.raises(ExportError, match=r"^freeze: 'body\.9' names no parameter of the model; its layers: body\.1\.module, "):
        export_onnx_step(model, tmp_path / "b", 4, freeze=["body.9"])
    with pytest.raises(ExportError, match="^freeze: 'body.1.mod' names no parameter"):  # a prefix of a name is not a layer
        split_trainable(model, ["body.1.mod"])
    with pytest.raises(ExportError, match="^freeze: every parameter would be frozen"):
        split_trainable(model, ["body"])
    for bad in (3, [""], [None]):
        with pytest.raises(ExportError, match="^freeze: expected parameter or module names"):
            split_trainable(model, bad)
    assert not (tmp_path / "b").exists()


@needs_onnx_runtime
def test_cli_freeze_runs_on_the_device_and_folds_back(tmp_path):
    from edgesnn.checkpoint import load_checkpoint, save_checkpoint
    from edgesnn.errors import UsageError
    from edgesnn.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp", (64,), 10, 4, neuron="revlif", hidden=(16,), node={"backend": "torch"}).eval()
    ck = save_checkpoint(tmp_path / "m.ckpt", model.config, model.state_dict(), epoch=1)
    with pytest.raises(UsageError, match=r"^--freeze: 'head' names no parameter of the model; its layers: body\.1\.module"):
        _export_cli(["--checkpoint", str(ck), "--format", "onnx-step", "--out", str(tmp_path / "x"), "--freeze", "head"])
    with pytest.raises(UsageError, match="^--freeze: applies to --format onnx-step / onnx-training only"):
        _export_cli(["--checkpoint", str(ck), "--format", "onnx", "--out", str(tmp_path / "x.onnx"), "--freeze", "body.1"])
    assert not (tmp_path / "x").exists()
    assert _export_cli(["--checkpoint", str(ck), "--format", "onnx-step", "--out", str(tmp_path / "art"),
                        "--batch-size", "16", "--freeze", "body.1,body.2", "--lr", "0.05"]) == 0
    g = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=g.random((64, 64), dtype=np.float32), y=g.integers(0, 10, 64))
    proc = run_python(_RUNNER, str(tmp_path / "art"), "--data", str(tmp_path / "d.npz"), "--epochs", "1", "--out",
                      str(tmp_path / "ft"), "--threads", "1", timeout=300)
    assert proc.returncode == 0 and json.loads(proc.stdout.strip().splitlines()[-1])["code"] == 0, proc.stderr[-2000:]
    assert _export_cli(["--checkpoint", str(ck), "--format", "checkpoint", "--params",
                        str(tmp_path / "ft" / "params.npz"), "--out", str(tmp_path / "new.ckpt")]) == 0
    old, new = model.state_dict(), load_checkpoint(tmp_path / "new.ckpt")["model_state"]
    for n in ("body.1.module.weight", "body.1.module.bias", "body.2.module.weight", "body.2.module.bias"):
        assert torch.equal(new[n], old[n]), n
    assert not torch.equal(new["body.4.module.weight"], old["body.4.module.weight"])  # the head trained


@pytest.mark.skipif(not ort_training_available(), reason="needs onnxruntime-training")
def test_legacy_onnx_training_freezes_too(tmp_path):
    from edgesnn.export.onnx_training import export_onnx_training

    model = _model("mlp", "lif", 4)
    manifest = export_onnx_training(model, tmp_path / "a", 4, freeze=["body.1"])
    assert "body.1.module.weight" in manifest.frozen and "body.1.module.weight" not in manifest.trainable
    assert "body.4.module.weight" in manifest.trainable


@needs_onnx_runtime
def test_active_dropout_is_refused_by_the_training_exports(tmp_path):
    """The graphs draw no random masks: a Dropout with p > 0 would silently train as the identity."""
    from edgesnn.export.onnx_step import export_onnx_step
    from edgesnn.export.onnx_training import export_onnx_training
    from edgesnn.export.prepare import ExportError
    from edgesnn.nn import SeqToANN

    model = _model("mlp", "lif", 4)
    model.body.insert(4, SeqToANN(torch.nn.Dropout(0.25)))
    with pytest.raises(ExportError, match=r"^onnx-step: layer body\.4\.module \(Dropout, p=0\.25\) would train as the "
                                          r"identity on the device .*set its p to 0"):
        export_onnx_step(model, tmp_path / "a", 4)
    with pytest.raises(ExportError, match=r"^onnx-training: layer body\.4\.module \(Dropout, p=0\.25\)"):
        export_onnx_training(model, tmp_path / "b", 4)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    model.body[4].module.p = 0.0  # said explicitly: fine-tune without it
    manifest = export_onnx_step(model, tmp_path / "a", 4)
    assert manifest.trainable[0] == "body.1.module.weight"
