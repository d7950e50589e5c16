"""Path-value audit: input flags given a directory, a pipe or a file where a folder is expected
get one line naming the flag and what was expected (not a false "no such file")."""

import os

import numpy as np

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
