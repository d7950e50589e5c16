"""End to end: checkpoint -> `edgesnn export` -> torch-free device runner -> fine-tuned weights back on the host."""

from __future__ import annotations

import argparse
import json
import numpy as np
import pytest
import torch

from test_export_common import needs_ort, run_python

pytestmark = needs_ort

BATCH = 16


def _digits(n: int = 128, start: int = 0):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data[start:start + n] / 16.0).astype(np.float32)
    return x, d.target[start:start + n].astype(np.int64)


def _host_trained_model():
    """The host side of the workflow: a small MLP briefly trained (Adam, train-mode BatchNorm) on digits."""
    from edgesnn.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp", (64,), 10, 4, neuron="lif", hidden=(32, 32))
    x, y = (torch.from_numpy(a) for a in _digits(512, start=256))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(2):
        for i in range(0, 512, 32):
            loss = torch.nn.functional.cross_entropy(model(x[i:i + 32]), y[i:i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _export_cli(argv):
    from edgesnn.export import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A checkpoint, its onnx-training artifacts (via the CLI) and a digits .npz."""
    from edgesnn.checkpoint import save_checkpoint

    tmp = tmp_path_factory.mktemp("e2e")
    model = _host_trained_model()
    ck = save_checkpoint(tmp / "model.ckpt", model.config, model.state_dict(), epoch=3)
    assert _export_cli(["--checkpoint", str(ck), "--format", "onnx-training", "--out", str(tmp / "art"),
                        "--batch-size", str(BATCH), "--lr", "0.05"]) == 0
    x, y = _digits()
    np.savez(tmp / "data.npz", x=x, y=y)
    return tmp, model


_RUNNER = "import sys, runpy; sys.argv = ['edgesnn-device', *sys.argv[1:]]; runpy.run_module('edgesnn.export.runner', run_name='__main__')"


def test_runner_finetunes_without_torch_and_host_reimports(exported):
    tmp, model = exported
    proc = run_python(_RUNNER, str(tmp / "art"), "--data", str(tmp / "data.npz"), "--epochs", "3", "--lr", "0.1",
                      "--out", str(tmp / "ft"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp / "ft" / "metrics.json").read_text())
    assert metrics["torch_imported"] is False
    assert metrics["steps"] == 3 * (128 // BATCH)
    assert metrics["epoch_loss"][-1] < metrics["epoch_loss"][0]
    assert metrics["peak_rss_mb"] < 150
    for name in ("checkpoint", "inference.onnx", "params.npz"):
        assert (tmp / "ft" / name).is_file()

    # host side: fold the device weights back into an edgesnn checkpoint; its eager forward must
    # match the fine-tuned inference graph the runner exported
    import onnxruntime as ort

    from edgesnn.export.prepare import export_copy, model_from_checkpoint

    assert _export_cli(["--checkpoint", str(tmp / "model.ckpt"), "--format", "checkpoint",
                        "--params", str(tmp / "ft" / "params.npz"), "--out", str(tmp / "ft.ckpt")]) == 0
    tuned, ck = model_from_checkpoint(tmp / "ft.ckpt")
    assert ck["epoch"] == 3
    changed = [n for n, p in tuned.named_parameters() if not torch.equal(p, dict(model.named_parameters())[n])]
    assert changed, "fine-tuning changed no parameter"
    x, _ = _digits(BATCH)
    sess = ort.InferenceSession(str(tmp / "ft" / "inference.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(["logits"], {"input": x})[0]
    with torch.no_grad():
        ref = export_copy(tuned)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_runner_api_import_is_torch_free():
    proc = run_python(
        "import sys\n"
        "from edgesnn.export.runner import import_ort_training_api\n"
        "ort, CheckpointState, Module, Optimizer = import_ort_training_api()\n"
        "print('torch' in sys.modules, 'onnxruntime.training.api' in sys.modules)\n"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["False", "True"]


@pytest.mark.parametrize("victim,corrupt", [("eval_model.onnx", False), ("checkpoint", True), ("optimizer_model.onnx", True)])
def test_runner_names_missing_or_corrupt_file(exported, tmp_path, capsys, victim, corrupt):
    import shutil

    from edgesnn.export.runner import main

    src, _ = exported
    art = tmp_path / "art"
    shutil.copytree(src / "art", art, ignore=shutil.ignore_patterns("finetuned"))
    if corrupt:
        data = bytearray((art / victim).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (art / victim).write_bytes(bytes(data))
    else:
        (art / victim).unlink()
    assert main([str(art), "--data", str(src / "data.npz"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert victim in err and ("corrupt artifact file" in err if corrupt else "missing artifact file" in err), err


def test_runner_error_messages(exported, tmp_path, capsys):
    from edgesnn.export.runner import main

    src, _ = exported
    (src / "art" / "training_model.onnx").rename(src / "art" / "training_model.onnx.bak")
    try:
        assert main([str(src / "art"), "--data", str(src / "data.npz"), "--epochs", "1"]) == 2
        assert "missing artifact file training_model.onnx" in capsys.readouterr().err
    finally:
        (src / "art" / "training_model.onnx.bak").rename(src / "art" / "training_model.onnx")
    np.savez(tmp_path / "bad.npz", x=np.zeros((32, 8, 8), np.float32), y=np.zeros(32, np.int64))
    assert main([str(src / "art"), "--data", str(tmp_path / "bad.npz"), "--epochs", "1"]) == 2
    assert "the model expects [N, 64]" in capsys.readouterr().err
    assert main([str(src / "art"), "--data", str(tmp_path / "nope.npz"), "--epochs", "1"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_exports_all_formats(exported, tmp_path):
    import onnxruntime as ort

    from edgesnn.export.torchscript import load_torchscript

    src, model = exported
    ck = str(src / "model.ckpt")
    assert _export_cli(["--checkpoint", ck, "--format", "torchscript", "--out", str(tmp_path / "ts")]) == 0
    assert _export_cli(["--checkpoint", ck, "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    x, _ = _digits(5)
    with torch.no_grad():
        ts_out = load_torchscript(tmp_path / "ts" / "model.pt")(torch.from_numpy(x)).numpy()
    onnx_out = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(ts_out, onnx_out, atol=1e-5)
    with pytest.raises(FileNotFoundError):
        _export_cli(["--checkpoint", str(tmp_path / "missing.ckpt"), "--format", "onnx", "--out", str(tmp_path / "x.onnx")])


def test_export_is_registered_with_edgesnn_cli():
    from edgesnn.cli import SUBCOMMANDS

    assert "edgesnn.export.cli" in SUBCOMMANDS


def test_legacy_resume_reports_accuracy_before_and_fills_the_last_batch(exported, tmp_path):
    """--resume reported "accuracy n/a -> ..."; now the resumed weights' accuracy, which is the
    previous run's accuracy after. 115 training samples in batches of 16: the eighth batch is
    filled with 13 samples from the start of the epoch's order, and 1 + 1 resumed epochs give the
    same weights as 2 in one run."""
    base = [str(exported[0] / "art"), "--data", str(exported[0] / "data.npz"), "--holdout", "0.1", "--lr", "0.1"]
    runs = {}
    for out, flags in (("split", ["--epochs", "1"]), ("split", ["--epochs", "1", "--resume"]), ("full", ["--epochs", "2"])):
        proc = run_python(_RUNNER, *base, "--out", str(tmp_path / out), *flags)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.setdefault(out, []).append((proc.stdout, json.loads((tmp_path / out / "metrics.json").read_text())))
    (_, first), (stdout, resumed) = runs["split"]
    assert "n/a" not in stdout and f"accuracy (held-out) {first['accuracy_after']:.4f} ->" in stdout, stdout
    assert resumed["accuracy_before"] == first["accuracy_after"]
    assert (first["train_samples"], first["steps_per_epoch"], first["padded_per_epoch"]) == (115, 8, 13)
    assert resumed["total_epochs"] == 2 and resumed["total_steps"] == 16
    with np.load(tmp_path / "split" / "params.npz") as a, np.load(tmp_path / "full" / "params.npz") as b:
        assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
    proc = run_python(_RUNNER, *base, "--out", str(tmp_path / "split"), "--epochs", "1", "--resume", "--seed", "4")
    assert proc.returncode == 2 and "--seed 0 (now 4)" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
