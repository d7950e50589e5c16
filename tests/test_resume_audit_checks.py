"""Checkpoint saves that could not be read back, long and odd output names, resume progress fields, a
learning rate beyond float32."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch

from _errors import one_line_error
from edgesnn.atomic import atomic_write, check_output, recover_dir, replace_dir
from edgesnn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from edgesnn.functional.surrogate import Sigmoid
from edgesnn.training.fingerprint import check_resume_data
from edgesnn.training.resume import stored_progress

CONFIG = {"name": "mlp", "in_shape": [4], "num_classes": 2, "timesteps": 2, "neuron": "lif"}


@dataclasses.dataclass(frozen=True)
class MySigmoid(Sigmoid):
    """A user's surrogate subclass: load_checkpoint cannot rebuild it (not in edgesnn.functional.surrogate)."""


@pytest.mark.parametrize("extra, needle", [
    ({"metrics": {"acc": np.float64(0.5)}}, "checkpoint['metrics']['acc'] is a numpy.float64"),
    ({"epoch": np.int64(3)}, "checkpoint['epoch'] is a numpy.int64"),
    ({"format": "mine"}, "'format' is set by save_checkpoint"),
])
def test_save_refuses_what_load_cannot_read_and_keeps_the_old_checkpoint(tmp_path, extra, needle):
    """A NumPy scalar in the metrics was saved silently, replacing a good checkpoint with one that
    load_checkpoint calls corrupt (weights_only); now refused before anything is written."""
    path = tmp_path / "ck.pt"
    save_checkpoint(path, CONFIG, {"w": torch.ones(2)}, epoch=1)
    before = path.read_bytes()
    one_line_error(CheckpointError, lambda: save_checkpoint(path, CONFIG, {"w": torch.zeros(2)}, **extra), needle)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ck.pt"]
    assert load_checkpoint(path)["epoch"] == 1


def test_save_refuses_a_surrogate_class_load_cannot_rebuild(tmp_path):
    path = tmp_path / "ck.pt"
    config = dict(CONFIG, node={"surrogate": MySigmoid(alpha=3.0)})
    one_line_error(CheckpointError, lambda: save_checkpoint(path, config, {"w": torch.ones(2)}), "MySigmoid",
                   "edgesnn.functional.surrogate")
    assert not path.exists()
    save_checkpoint(path, dict(CONFIG, node={"surrogate": Sigmoid(alpha=3.0)}), {"w": torch.ones(2)})  # built-in: fine
    assert load_checkpoint(path)["model_config"]["node"]["surrogate"] == Sigmoid(alpha=3.0)


def test_a_long_file_name_is_written_and_a_too_long_one_refused_up_front(tmp_path):
    """A 253-byte name passed check_output, then every save failed (its temp name was too long):
    `edgesnn train` trained an epoch and stopped with 'File name too long'."""
    long = tmp_path / ("c" * 250 + ".pt")
    check_output(long, "--checkpoint")
    atomic_write(long, lambda fh: fh.write(b"x"))
    assert long.read_bytes() == b"x" and os.listdir(tmp_path) == [long.name]
    out = tmp_path / ("d" * 250)
    replace_dir(out, lambda d: (d / "f").write_text("y"))
    assert (out / "f").read_text() == "y" and len(os.listdir(tmp_path)) == 2
    one_line_error(ValueError, lambda: check_output(tmp_path / ("e" * 300 + ".pt"), "--checkpoint"),
                   "--checkpoint:", "at most")


def test_recover_dir_takes_only_its_own_leftover(tmp_path):
    """``out[12]`` is a glob pattern: recover_dir put another folder's leftover (``.out1....tmp.old``)
    in its place (and the export then deleted it as the old output), and never found its own."""
    other = tmp_path / ".out1.abcd1234.tmp.old"
    other.mkdir()
    (other / "keep").write_text("out1's")
    assert recover_dir(tmp_path / "out[12]") is None
    assert (other / "keep").read_text() == "out1's"
    mine = tmp_path / ".out[1].efgh5678.tmp.old"
    mine.mkdir()
    assert recover_dir(tmp_path / "out[1]") == mine and (tmp_path / "out[1]").is_dir()


def test_a_file_output_ending_in_a_slash_is_refused(tmp_path):
    """``--checkpoint runs/`` wrote a file named ``runs``."""
    one_line_error(IsADirectoryError, lambda: check_output(f"{tmp_path}/runs/", "--checkpoint"),
                   "--checkpoint:", "ends with '/'", "expected a file path")
    assert check_output(f"{tmp_path}/runs/", "--out", directory=True).name == "runs"  # a folder output: fine


@pytest.mark.parametrize("edit, needle", [
    ({"epoch": None}, "epoch must be an integer >= 0, got None"),
    ({"epoch": -1}, "epoch must be an integer >= 0, got -1"),
    ({"steps": 2.5}, "steps must be an integer >= 0"),
    ({"epoch_offset": True}, "epoch_offset must be an integer >= 0"),
    ({"metrics": []}, "metrics must be"),
])
def test_resume_refuses_progress_fields_it_cannot_continue_from(edit, needle):
    """epoch None was a TypeError traceback, metrics a list an AttributeError; epoch -1 trained
    one epoch more than asked, silently."""
    ck = {"epoch": 1, "steps": 3, "epoch_offset": 0, "metrics": {"history": [{"epoch": 1}]}, **edit}
    one_line_error(CheckpointError, lambda: stored_progress(ck), "--resume:", needle)


def test_resume_without_any_data_fingerprint_says_nothing_is_compared():
    """A checkpoint with neither fingerprint was said to be checked on counts and labels: nothing was."""
    lines = []
    check_resume_data({}, "1+1:abc", "blake2b-s1:x", "ck.pt", "digits", False, lines.append)
    assert len(lines) == 1 and "the data is not compared" in lines[0] and "labels are compared" not in lines[0]


def test_a_learning_rate_beyond_float32_is_refused_in_one_line(capsys, tmp_path):
    """``--lr 1e300`` passed the finite check and then failed inside Adam's step with a traceback
    (the optimizer holds the rate as a float32); it is now refused up front, in the CLI and in
    ``TrainConfig``."""
    from edgesnn.cli import main
    from edgesnn.errors import UsageError
    from edgesnn.float32_range import FLOAT32_MAX
    from edgesnn.training.train_config import TrainConfig

    assert main(["train", "--epochs", "1", "--no-progress", "--lr", "1e300"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgesnn train: error: --lr: ") and "float32" in err and len(err.splitlines()) == 1
    with pytest.raises(UsageError, match="lr: expected a number > 0"):
        TrainConfig(lr=1e300).validate()
    # Adam's first step moves by 10 x lr, a float32 scalar: 1e38 (< FLOAT32_MAX) crashed there with
    # "value cannot be converted to type float without overflow"; refused up front now
    from edgesnn.lr_schedules import ADAM_RATE_MAX

    for big in (FLOAT32_MAX, 1e38, 3.5e37):
        with pytest.raises(UsageError, match=r"lr: expected a number > 0 that float32 holds, from 1.4e-45 to 3.4e\+37 \(Adam's"):
            TrainConfig(lr=big).validate()
    assert main(["train", "--epochs", "1", "--no-progress", "--lr", "1e38"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgesnn train: error: --lr: ") and "Adam" in err and len(err.splitlines()) == 1
    TrainConfig(lr=ADAM_RATE_MAX).validate()  # the largest accepted: its first step runs (and the
    # weights it makes are too large for the next layer: one line, no traceback)
    out = tmp_path / "r.json"
    assert main(["train", "--epochs", "1", "--no-progress", "--lr", str(ADAM_RATE_MAX), "--max-steps", "1",
                 "--json", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgesnn train: error: ") and "non-finite" in err and len(err.splitlines()) == 1, err
    # 1e-50 is 0 as a float32: the float32 parameters would never move, silently
    assert main(["train", "--epochs", "1", "--no-progress", "--lr", "1e-50"]) == 2
    assert capsys.readouterr().err.strip().startswith("edgesnn train: error: --lr: expected a number > 0 that float32 holds")
    with pytest.raises(UsageError, match="lr: expected a number > 0 that float32 holds"):
        TrainConfig(lr=1e-50).validate()
    TrainConfig(lr=1.4e-45).validate()  # the smallest float32 (a subnormal) is a rate
