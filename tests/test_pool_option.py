"""``--pool max`` / ``build_model(pool="max")``: the conv models with 2x2 max pools (SpikingJelly's
spiking VGG habit) through the whole user path: build, train, checkpoint, resume, plan, export.

* The default (avg) is unchanged: no ``pool`` key in a default model's config, checkpoint or report.
* ``pool="max"`` builds ``MaxPool2d`` layers, is recorded and rebuilt from the checkpoint; a resume
  with another ``--pool`` is refused; ``--pool max`` with the mlp, or an unknown pool, is one line.
* ``edgesnn plan --pool max`` plans that model (activation bytes: tests/test_planner_memory.py) and
  ``edgesnn train --plan`` builds it; ``--pool avg`` against that plan is refused.
* The checkpoint exports with ``--format onnx-step`` (the max-pool VJP:
  tests/test_export_step_maxpool.py) and its eval graph gives the model's logits.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from edgesnn.checkpoint import load_checkpoint
from edgesnn.cli import main
from edgesnn.models import build_model
from test_export_common import needs_onnx_runtime


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_build_model_pool_choice_is_recorded_and_checked():
    avg = build_model("convnet", (1, 8, 8), 10, 2)
    mx = build_model("vgg11", (3, 32, 32), 10, 2, pool="max")
    assert "pool" not in avg.config and mx.config["pool"] == "max"
    assert any(isinstance(m, nn.AvgPool2d) for m in avg.modules()) and not any(isinstance(m, nn.MaxPool2d) for m in avg.modules())
    assert sum(isinstance(m, nn.MaxPool2d) for m in mx.modules()) == 5 and not any(isinstance(m, nn.AvgPool2d) for m in mx.modules())
    again = build_model(**mx.config)
    assert [type(m) for m in again.modules()] == [type(m) for m in mx.modules()]
    with pytest.raises(ValueError, match=r"^pool: expected one of avg, max, got 'min'$"):
        build_model("convnet", (1, 8, 8), 10, 2, pool="min")
    with pytest.raises(ValueError, match=r"^pool: the mlp model has no pooling layer"):
        build_model("mlp", (64,), 10, 2, pool="max")


def test_train_resume_plan_and_refusals(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["train", "--dataset", "digits", "--model", "convnet", "--timesteps", "2", "--epochs", "1", "--max-steps", "2",
            "--batch-size", "16", "--backend", "torch", "--no-progress"]
    assert main([*base, "--pool", "max", "--checkpoint", "m.ckpt", "--json", "r.json"]) == 0
    ck = load_checkpoint("m.ckpt")
    assert ck["model_config"]["pool"] == "max" and ck["train_config"]["pool"] == "max"
    assert json.loads((tmp_path / "r.json").read_text())["config"]["pool"] == "max"
    assert any(k.endswith("weight") for k in ck["model_state"])
    capsys.readouterr()
    assert main([*base, "--checkpoint", "m.ckpt", "--resume", "--epochs", "2"]) == 2  # --pool avg (default)
    err = _err(capsys)
    assert "pool (stored 'max', given 'avg')" in err, err
    # the default writes what older versions wrote: no pool key anywhere
    assert main([*base, "--checkpoint", "d.ckpt"]) == 0
    assert "pool" not in load_checkpoint("d.ckpt")["train_config"] and "pool" not in load_checkpoint("d.ckpt")["model_config"]
    capsys.readouterr()
    assert main(["train", "--model", "mlp", "--pool", "max", "--epochs", "1"]) == 2
    assert _err(capsys).startswith("edgesnn train: error: --pool: the mlp model has no pooling layer")
    # plan -> train --plan builds the max-pool model; a contradicting --pool is refused
    assert main(["plan", "--model", "convnet", "--input", "1,8,8", "-T", "2", "--batch", "16", "--dataset", "digits",
                 "--device", "raspberry-pi-4-4gb", "--pool", "max", "--json", "p.json"]) == 0
    assert json.loads((tmp_path / "p.json").read_text())["model"]["pool"] == "max"
    capsys.readouterr()
    assert main(["train", "--plan", "p.json", "--pool", "avg", "--epochs", "1", "--no-progress"]) == 2
    assert _err(capsys).startswith("edgesnn train: error: --pool: avg contradicts the plan p.json (max)")
    assert main(["train", "--plan", "p.json", "--epochs", "1", "--max-steps", "1", "--no-progress", "--checkpoint", "pl.ckpt"]) == 0
    assert load_checkpoint("pl.ckpt")["model_config"]["pool"] == "max"
    doc = json.loads((tmp_path / "p.json").read_text())
    doc["model"]["pool"] = "min"
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["train", "--plan", "bad.json", "--epochs", "1", "--no-progress"]) == 2
    assert "model.pool" in _err(capsys)
    capsys.readouterr()
    assert main(["plan", "--model", "mlp", "--input", "64", "-T", "2", "--pool", "max", "--device", "raspberry-pi-4-4gb"]) == 2
    assert "--pool: the mlp model has no pooling layer" in _err(capsys)


@needs_onnx_runtime
def test_a_max_pool_checkpoint_exports_for_the_device(tmp_path, monkeypatch):
    from edgesnn.export.runner import import_plain_ort
    from edgesnn.export.prepare import model_from_checkpoint

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--dataset", "digits", "--model", "convnet", "--pool", "max", "--timesteps", "2", "--epochs", "1",
                 "--max-steps", "3", "--batch-size", "16", "--backend", "torch", "--no-progress", "--checkpoint", "m.ckpt"]) == 0
    assert main(["export", "--checkpoint", "m.ckpt", "--format", "onnx-step", "--out", "art", "--batch-size", "4"]) == 0
    model, _ = model_from_checkpoint("m.ckpt")
    ort = import_plain_ort()
    sess = ort.InferenceSession(str(tmp_path / "art" / "eval.onnx"), providers=["CPUExecutionProvider"])
    with np.load(tmp_path / "art" / "init.npz") as npz:
        feeds = {i.name: npz[i.name] for i in sess.get_inputs() if i.name in npz.files}
    x = torch.rand(4, 1, 8, 8)
    data = next(i.name for i in sess.get_inputs() if i.name not in feeds)
    logits = sess.run(None, {**feeds, data: x.numpy()})[0]
    with torch.no_grad():
        want = model.eval()(x).numpy()
    np.testing.assert_allclose(logits, want, atol=1e-4)
