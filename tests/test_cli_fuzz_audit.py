"""Command-line fuzzing audit: empty path / value flags are one-line errors, not silently "not given".

An empty value (``--checkpoint ""``, typically an unset shell variable) used to mean the default:
``edgesnn train`` trained without writing the checkpoint or report it was asked for (or ignored
``--plan`` / ``--data-dir`` / ``--neuron``), and ``edgesnn-device --out "" --force`` took ``Path("")``,
the working folder, and replaced it as a whole with its outputs (every other file in it lost).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from edgesnn.cli import main
from test_export_common import needs_onnx_runtime


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    return err


@pytest.mark.parametrize("flag", ["--checkpoint", "--json", "--plan", "--data-dir", "--neuron"])
def test_train_refuses_an_empty_value(flag, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--dataset", "digits", "--epochs", "1", "-T", "1", "--max-steps", "1", "--no-progress",
            "--batch-size", "8", "--threads", "1", flag, ""]
    assert main(argv) == 2
    err = _err(capsys)
    assert err.startswith(f"edgesnn train: error: {flag}: expected ") and "''" in err
    assert not os.listdir(tmp_path)  # nothing trained, nothing written


@needs_onnx_runtime
def test_device_runner_empty_out_leaves_the_working_folder_alone(tmp_path, capsys, monkeypatch):
    import torch

    from edgesnn.checkpoint import save_checkpoint
    from edgesnn.export.runner import main as device
    from edgesnn.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp", (8,), 3, 1, neuron="lif", hidden=(8,), batchnorm=False)
    ck = save_checkpoint(tmp_path / "m.ckpt", model.config, model.state_dict(), epoch=1)
    art = tmp_path / "art"
    assert main(["export", "--checkpoint", str(ck), "--format", "onnx-step", "--out", str(art), "--batch-size", "4"]) == 0
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((12, 8), dtype=np.float32), y=rng.integers(0, 3, 12))
    work = tmp_path / "work"
    work.mkdir()
    (work / "mine.txt").write_text("precious")
    monkeypatch.chdir(work)
    capsys.readouterr()
    for extra in (["--force"], [], ["--resume"]):  # --force: the old code replaced the working folder
        assert device([str(art), "--data", str(tmp_path / "d.npz"), "--out", "", "--holdout", "0", *extra]) == 2
        assert _err(capsys).startswith("edgesnn-device: error: --out: expected an output directory")
        assert sorted(os.listdir(work)) == ["mine.txt"] and (work / "mine.txt").read_text() == "precious"
    for flags, name in ((["", "--data", str(tmp_path / "d.npz")], "ARTIFACTS"), ([str(art), "--data", ""], "--data"),
                        ([str(art), "--data", str(tmp_path / "d.npz"), "--eval-data", ""], "--eval-data")):
        assert device([*flags, "--out", str(tmp_path / "ft")]) == 2
        assert _err(capsys).startswith(f"edgesnn-device: error: {name}: expected ")
    assert not (tmp_path / "ft").exists()


def test_train_log_says_when_max_steps_cut_the_epoch(tmp_path, capsys):
    """The report marked the epoch ``partial`` but the log printed it as a finished epoch."""
    import json

    argv = ["train", "--dataset", "digits", "--epochs", "2", "-T", "1", "--max-steps", "2", "--no-progress",
            "--batch-size", "16", "--threads", "1", "--no-batchnorm", "--json", str(tmp_path / "r.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    row = json.loads((tmp_path / "r.json").read_text())["history"][-1]
    assert row["partial"] and row["samples"] == 32
    line = next(s for s in out.splitlines() if s.startswith("epoch 1/2"))
    assert "stopped by --max-steps after 32 samples of it" in line, out
