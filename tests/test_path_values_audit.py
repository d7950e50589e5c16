"""Path-value audit: input flags given a directory, a pipe or a file where a folder is expected
get one line naming the flag and what was expected (not a false "no such file")."""

import os
from pathlib import Path

import numpy as np
import pytest

from edgesnn.cli import main as edgesnn_main
from edgesnn.export.runner import main as device_main

TRAIN = ["train", "--dataset", "digits", "--epochs", "1", "-T", "2", "--max-steps", "1", "--no-progress"]


def _one_line_error(capsys, flag, words):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert flag in err and words in err, err
    return err


def test_train_plan_fifo_is_not_called_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    os.mkfifo("fifo")
    assert edgesnn_main(TRAIN + ["--plan", "fifo"]) == 2
    err = _one_line_error(capsys, "--plan:", "not a regular file")
    assert "no such file" not in err


def test_train_data_dir_file_names_the_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("user file")
    assert edgesnn_main(["train", "--dataset", "cifar10", "--epochs", "1", "-T", "2", "--data-dir", "afile"]) == 2
    _one_line_error(capsys, "--data-dir:", "not a folder")
    assert (tmp_path / "afile").read_text() == "user file"


def test_device_artifacts_file_is_not_called_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("user file")
    np.savez("data.npz", x=np.zeros((4, 3), np.float32), y=np.zeros(4, np.int64))
    assert device_main(["afile", "--data", "data.npz", "--out", "o"]) == 2
    err = _one_line_error(capsys, "ARTIFACTS:", "is a file")
    assert "no such directory" not in err and not (tmp_path / "o").exists()


def test_device_data_directory_and_fifo_are_not_called_missing(tmp_path, monkeypatch, capsys):
    from edgesnn.export.run_data import load_dataset
    import pytest

    monkeypatch.chdir(tmp_path)
    (tmp_path / "dirout").mkdir()
    os.mkfifo("fifo")
    with pytest.raises(IsADirectoryError, match=r"^--data: dirout is a directory; expected an \.npz"):
        load_dataset("dirout", None, flag="--data")
    with pytest.raises(ValueError, match=r"^--eval-data: fifo is not a regular file"):
        load_dataset("fifo", None, flag="--eval-data")


def _sentinels(*folders):
    for f in folders:
        f.mkdir(parents=True, exist_ok=True)
        (f / "mine.txt").write_text("keep")


@pytest.mark.parametrize("out", [".", "..", "~", "HOME_PARENT"])
def test_force_never_replaces_the_working_or_home_folder(tmp_path, monkeypatch, capsys, out):
    """``--out . --force`` (or ``..``, ``~``, a folder holding home) replaced the folder as a whole,
    deleting everything in it: refused in one line, even with --force, by the export and the runner."""
    from edgesnn.atomic import check_output
    from edgesnn.errors import UsageError

    home, work = tmp_path / "home", tmp_path / "home" / "work"
    _sentinels(home, work)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    value = str(tmp_path) if out == "HOME_PARENT" else os.path.expanduser(out)
    for force in (False, True):
        with pytest.raises(UsageError, match="--out: .* which the output would replace"):
            check_output(value, "--out", force=force, directory=True)
    assert edgesnn_main(["export", "--checkpoint", "/nonexistent-edgesnn/missing.ckpt", "--format", "onnx-step", "--out", value, "--force"]) == 2
    _one_line_error(capsys, "--out", "which the output would replace")
    assert (home / "mine.txt").read_text() == "keep" and (work / "mine.txt").read_text() == "keep"


def test_a_folder_of_its_own_is_still_replaced_with_force(tmp_path, monkeypatch):
    from edgesnn.atomic import check_output

    monkeypatch.chdir(tmp_path)
    _sentinels(tmp_path / "out")
    assert check_output("out", "--out", force=True, directory=True) == Path("out")
