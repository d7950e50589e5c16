"""The device runner refuses data on another scale than the model was trained on.

A model trained by ``edgesnn train`` on a built-in image dataset saw every input value in [0, 1]
(pixels / 255, digits / 16). Raw 8-bit pixels given to ``edgesnn-device`` trained without an error
on inputs 255x too large: a digits RevLIF MLP at 98% went from 85% to 10% held-out accuracy in three
epochs, exit 0. The ``onnx-step`` manifest now records the range, and the runner refuses data
outside it in one line (``--any-input-range`` takes it as it is).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from edgesnn.checkpoint import save_checkpoint  # noqa: E402
from edgesnn.export.onnx_step import export_onnx_step  # noqa: E402
from edgesnn.models import build_model  # noqa: E402
from test_export_common import needs_ort  # noqa: E402


def _export_cli(argv):
    from edgesnn.export import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export", *argv])
    return args.func(args)


def _model():
    torch.manual_seed(0)
    return build_model("mlp", (64,), 10, 2, neuron="revlif", hidden=(16,), node={"backend": "torch"})


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """The same model exported from a checkpoint of ``edgesnn train --dataset digits`` (its
    ``train_config``) and from one without a training record, plus device data on three scales."""
    from sklearn.datasets import load_digits

    tmp = tmp_path_factory.mktemp("input-range")
    model = _model()
    trained = save_checkpoint(tmp / "trained.pt", model.config, model.state_dict(),
                              train_config={"dataset": "digits", "model": "mlp"})
    bare = save_checkpoint(tmp / "bare.pt", model.config, model.state_dict())
    for ck, out in ((trained, "art"), (bare, "art_bare")):
        assert _export_cli(["--checkpoint", str(ck), "--format", "onnx-step", "--out", str(tmp / out),
                            "--batch-size", "16"]) == 0
    d = load_digits()
    x, y = d.data[:96], d.target[:96]
    np.savez(tmp / "scaled.npz", x=(x / 16).astype(np.float32), y=y)
    np.savez(tmp / "pixels.npz", x=np.round(x * 255 / 16).astype(np.uint8), y=y)
    np.savez(tmp / "standardized.npz", x=((x - x.mean()) / x.std()).astype(np.float32), y=y)
    return tmp


def _run(tmp, art, data, *extra):
    """``edgesnn-device`` in a fresh interpreter (the runner refuses to train where torch is loaded)."""
    return subprocess.run([sys.executable, "-m", "edgesnn.export.runner", str(tmp / art), "--data", str(tmp / data),
                           "--epochs", "1", "--threads", "1", *extra], capture_output=True, text=True, timeout=300)


def test_the_manifest_records_the_range_of_a_built_in_image_dataset(exports):
    assert json.loads((exports / "art" / "manifest.json").read_text())["input_range"] == [0.0, 1.0]
    assert json.loads((exports / "art_bare" / "manifest.json").read_text())["input_range"] is None


@pytest.mark.parametrize("data, shown", [("pixels.npz", "[0, 255]"), ("standardized.npz", "[-0.8")])
def test_data_on_another_scale_is_refused_in_one_line(exports, data, shown):
    res = _run(exports, "art", data, "--out", str(exports / f"out_{data}"))
    err = res.stderr.strip()
    assert res.returncode == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"edgesnn-device: error: --data: {exports / data} array 'x' holds values in {shown}"), err
    assert "the model was trained on inputs in [0, 1]" in err and "--any-input-range" in err, err
    assert ("x / 255" in err) == (data == "pixels.npz"), err  # the 8-bit hint only for integer data
    assert not (exports / f"out_{data}").exists()  # refused before anything was written


def test_eval_data_is_checked_too(exports):
    res = _run(exports, "art", "scaled.npz", "--eval-data", str(exports / "pixels.npz"), "--out", str(exports / "out_eval"))
    assert res.returncode == 2 and res.stderr.startswith("edgesnn-device: error: --eval-data:"), res.stderr


def test_scaled_data_any_input_range_and_unknown_ranges_train(exports):
    for args in (("art", "scaled.npz", "--out", str(exports / "out_scaled")),
                 ("art", "pixels.npz", "--out", str(exports / "out_forced"), "--any-input-range"),
                 ("art_bare", "pixels.npz", "--out", str(exports / "out_bare"))):  # no range recorded: not checked
        res = _run(exports, *args)
        assert res.returncode == 0, res.stderr[-2000:]
    for out in ("out_scaled", "out_forced", "out_bare"):
        assert json.loads((exports / out / "metrics.json").read_text())["steps"] > 0


@pytest.mark.parametrize("bad", [(1.0, 0.0), (0.0, float("nan")), (0.0,), "01", 1.0, (True, 2.0)])
def test_export_onnx_step_checks_input_range(tmp_path, bad):
    from edgesnn.errors import USER_ERRORS

    with pytest.raises(USER_ERRORS, match=r"^input_range: expected \(low, high\)"):
        export_onnx_step(_model(), tmp_path / "art", batch_size=16, input_range=bad)


@needs_ort
def test_the_legacy_onnx_training_format_records_and_checks_the_range_too(exports):
    ck = exports / "trained.pt"
    assert _export_cli(["--checkpoint", str(ck), "--format", "onnx-training", "--out", str(exports / "legacy"),
                        "--batch-size", "16"]) == 0
    assert json.loads((exports / "legacy" / "manifest.json").read_text())["input_range"] == [0.0, 1.0]
    res = _run(exports, "legacy", "pixels.npz", "--out", str(exports / "out_legacy"))
    assert res.returncode == 2 and "the model was trained on inputs in [0, 1]" in res.stderr, res.stderr
    assert _run(exports, "legacy", "scaled.npz", "--out", str(exports / "out_legacy")).returncode == 0
