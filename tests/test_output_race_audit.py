"""Outputs that another process writes between a command's start-up check and its write.

Every command checks its outputs when it starts and writes them later (``edgesnn train`` its
``--checkpoint`` after every epoch and ``--json`` at the end, ``edgesnn-device`` its ``--out``
after every epoch, ``edgesnn export`` / ``edgesnn plan`` at the end). Two runs of a job script with
the same path both saw nothing there, and the later one replaced the earlier one's output silently
(exit 0 for both); a file the user copied to the path during a run was replaced the same way. Now
each write replaces only what the command found at the start (``--force`` / ``--resume``) or last
wrote itself, and creates an output that was absent only while it still is; otherwise one line
names the flag, the other process's output stays and this run's own is kept beside it.

The other process is injected deterministically: the write function is wrapped so that the "other
process" writes the path just before the command's own write. Each test failed on the code before.
"""

from __future__ import annotations

import errno
import os
import zipfile
from pathlib import Path

import pytest
import torch

from edgesnn.checkpoint import load_checkpoint, save_checkpoint
from edgesnn.cli import main

TRAIN = ["train", "--dataset", "digits", "--model", "mlp", "--neuron", "lif", "--timesteps", "2", "--no-progress"]


def _before_write(monkeypatch, module: str, name: str, on_call, other=None) -> list:
    """Wrap ``module.name`` so that ``other(path)`` runs just before its ``on_call``-th call (1-based;
    or ``on_call`` a dict call -> action): another process writing the output between the command's
    check and its write. Returns the calls' paths."""
    import importlib

    mod = importlib.import_module(module)
    original = getattr(mod, name)
    actions = on_call if isinstance(on_call, dict) else {on_call: other}
    calls = []

    def wrapped(path, *args, **kw):
        calls.append(Path(path))
        if len(calls) in actions:
            actions[len(calls)](Path(path))
        return original(path, *args, **kw)

    monkeypatch.setattr(mod, name, wrapped)
    return calls


def _conflicts(folder: Path, stem: str) -> list:
    return sorted(p for p in folder.iterdir() if p.name.startswith(f"{stem}.conflict-"))


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1
    return err[-1]


def test_train_checkpoint_written_by_another_run_before_the_first_save_is_not_replaced(tmp_path, monkeypatch, capsys):
    ck = tmp_path / "ck.pt"
    _before_write(monkeypatch, "edgesnn.checkpoint", "atomic_write", 1, lambda p: p.write_bytes(b"the other run's"))
    assert main(TRAIN + ["--epochs", "1", "--checkpoint", str(ck)]) == 2
    line = _err_line(capsys)
    assert line.startswith("edgesnn train: error: --checkpoint: ") and "appeared while this run worked" in line
    assert ck.read_bytes() == b"the other run's"
    kept = _conflicts(tmp_path, "ck")
    assert len(kept) == 1 and kept[0].suffix == ".pt" and kept[0].name in line
    assert load_checkpoint(kept[0])["epoch"] == 1  # this run's work is not lost either


def test_train_checkpoint_replaced_between_two_saves_stops_the_run_and_keeps_both(tmp_path, monkeypatch, capsys):
    ck = tmp_path / "ck.pt"

    def user_copies(path: Path) -> None:  # a user copies another file to the path during the run
        (tmp_path / "mine.pt").write_bytes(b"mine")
        os.replace(tmp_path / "mine.pt", path)

    _before_write(monkeypatch, "edgesnn.checkpoint", "atomic_write", 2, user_copies)
    assert main(TRAIN + ["--epochs", "3", "--checkpoint", str(ck)]) == 2
    line = _err_line(capsys)
    assert "--checkpoint: " in line and "changed by another process after this run last wrote it" in line
    assert ck.read_bytes() == b"mine"
    (kept,) = _conflicts(tmp_path, "ck")
    assert load_checkpoint(kept)["epoch"] == 2
    # the kept checkpoint continues like any other
    assert main(TRAIN + ["--epochs", "3", "--checkpoint", str(kept), "--resume"]) == 0
    assert load_checkpoint(kept)["epoch"] == 3


def test_train_edited_in_place_between_saves_is_seen(tmp_path, monkeypatch, capsys):
    """The same file (same inode) written again by another process: its size and time changed."""
    ck = tmp_path / "ck.pt"

    def rewrite(path: Path) -> None:
        with open(path, "r+b") as fh:
            fh.write(b"edited")

    _before_write(monkeypatch, "edgesnn.checkpoint", "atomic_write", 2, rewrite)
    assert main(TRAIN + ["--epochs", "2", "--checkpoint", str(ck)]) == 2
    assert ck.read_bytes().startswith(b"edited")
    assert len(_conflicts(tmp_path, "ck")) == 1


def test_resume_checkpoint_replaced_by_another_process_mid_run(tmp_path, monkeypatch, capsys):
    ck = tmp_path / "ck.pt"
    assert main(TRAIN + ["--epochs", "1", "--checkpoint", str(ck)]) == 0
    other = tmp_path / "other.pt"
    assert main(TRAIN + ["--epochs", "1", "--seed", "3", "--checkpoint", str(other)]) == 0
    capsys.readouterr()
    _before_write(monkeypatch, "edgesnn.checkpoint", "atomic_write", 1, lambda p: os.replace(other, p))
    theirs = other.read_bytes()
    assert main(TRAIN + ["--epochs", "2", "--checkpoint", str(ck), "--resume"]) == 2
    assert "changed by another process after this run started" in _err_line(capsys)
    assert ck.read_bytes() == theirs
    (kept,) = _conflicts(tmp_path, "ck")
    assert load_checkpoint(kept)["epoch"] == 2


def test_force_replaces_what_was_there_at_the_start_not_what_another_process_wrote(tmp_path, monkeypatch, capsys):
    ck = tmp_path / "ck.pt"
    ck.write_bytes(b"old run")
    assert main(TRAIN + ["--epochs", "1", "--checkpoint", str(ck), "--force"]) == 0  # asked for: replaced
    assert load_checkpoint(ck)["epoch"] == 1
    ck.write_bytes(b"old run")
    _before_write(monkeypatch, "edgesnn.checkpoint", "atomic_write", 1, lambda p: p.write_bytes(b"another process"))
    assert main(TRAIN + ["--epochs", "1", "--checkpoint", str(ck), "--force"]) == 2
    assert "--checkpoint: " in _err_line(capsys)
    assert ck.read_bytes() == b"another process"
    assert len(_conflicts(tmp_path, "ck")) == 1


def test_train_json_written_by_another_run_is_not_replaced(tmp_path, monkeypatch, capsys):
    report = tmp_path / "r.json"
    _before_write(monkeypatch, "edgesnn.training.loop", "atomic_write", 1, lambda p: p.write_text('{"theirs": 1}'))
    assert main(TRAIN + ["--epochs", "1", "--json", str(report)]) == 2
    line = _err_line(capsys)
    assert line.startswith("edgesnn train: error: --json: ") and "appeared" in line
    assert report.read_text() == '{"theirs": 1}'
    (kept,) = _conflicts(tmp_path, "r")
    assert kept.suffix == ".json" and '"test_accuracy"' in kept.read_text()


def test_without_hard_links_an_output_that_appeared_is_still_not_replaced(tmp_path, monkeypatch, capsys):
    """A file system without hard links (FAT, some network shares): a check and a rename instead of
    ``os.link``; a fresh output is still created, one that appeared is still left alone."""
    def no_link(*a, **k):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    ck = tmp_path / "ck.pt"
    _before_write(monkeypatch, "edgesnn.checkpoint", "atomic_write", 2, lambda p: p.write_bytes(b"theirs"))
    assert main(TRAIN + ["--epochs", "1", "--checkpoint", str(ck)]) == 0  # absent: created
    assert load_checkpoint(ck)["epoch"] == 1
    other = tmp_path / "other.pt"
    assert main(TRAIN + ["--epochs", "1", "--checkpoint", str(other)]) == 2
    assert "--checkpoint: " in _err_line(capsys) and other.read_bytes() == b"theirs"


def _tiny():
    from edgesnn.models import build_model

    torch.manual_seed(0)
    return build_model("mlp", (16,), 4, 2, hidden=(8,))


# ----------------------------------------------------------------------------- edgesnn-device --out


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from _step_compare import small_runner_case

    return small_runner_case(tmp_path_factory.mktemp("race"), "lif", 24)


def _device(art, out, *flags):
    from edgesnn.export.runner import main as device_main

    return device_main([str(art / "art"), "--data", str(art / "data.npz"), "--out", str(out), "--threads", "1",
                        "--holdout", "0", *flags])


@pytest.fixture
def _torch_free_check_off(monkeypatch):
    """The runner's torch-free check is for a fresh interpreter; torch is loaded in pytest's."""
    monkeypatch.setattr("edgesnn.export.step_runner.training_modules_imported", lambda: [])


def _fill(folder: Path, name: str = "theirs.txt", text: str = "another run") -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text)


def test_device_out_filled_by_another_run_before_the_first_save(art, tmp_path, monkeypatch, capsys,
                                                               _torch_free_check_off):
    out = tmp_path / "ft"
    _before_write(monkeypatch, "edgesnn.export.run_state", "replace_dir", 1, lambda p: _fill(out))
    assert _device(art, out, "--epochs", "2") == 2
    line = _err_line(capsys)
    assert line.startswith("edgesnn-device: error: --out: ") and "appeared while this run worked" in line
    assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"]
    (kept,) = _conflicts(tmp_path, "ft")
    assert (kept / "state.npz").is_file() and kept.name in line
    # the kept folder resumes like any --out
    assert _device(art, kept, "--epochs", "1", "--resume") == 0


def test_device_out_own_file_replaced_between_saves_but_a_new_file_is_kept(art, tmp_path, monkeypatch, capsys,
                                                                          _torch_free_check_off):
    out, other = tmp_path / "ft", tmp_path / "ft2"
    _before_write(monkeypatch, "edgesnn.export.run_state", "replace_dir",  # two saves per run
                  {2: lambda p: _fill(out, "notes.txt", "mine"),
                   4: lambda p: _fill(other, "metrics.json", '{"theirs": 1}')})
    assert _device(art, out, "--epochs", "2") == 0  # a file the user added is carried into every later save
    assert (out / "notes.txt").read_text() == "mine"
    assert not _conflicts(tmp_path, "ft")
    assert _device(art, other, "--epochs", "2") == 2
    assert "--out: " in _err_line(capsys) and (other / "metrics.json").read_text() == '{"theirs": 1}'
    (kept,) = _conflicts(tmp_path, "ft2")
    assert (kept / "metrics.json").read_text() != '{"theirs": 1}'


def test_device_force_does_not_replace_a_folder_another_run_swapped_in(art, tmp_path, monkeypatch, capsys,
                                                                       _torch_free_check_off):
    out = tmp_path / "ft"
    _fill(out, "old.txt", "old")
    theirs = tmp_path / "theirs"
    _fill(theirs, "state.npz", "their state")

    def swap_in(path: Path) -> None:
        os.rename(out, tmp_path / "gone")
        os.rename(theirs, out)

    _before_write(monkeypatch, "edgesnn.export.run_state", "replace_dir", 1, swap_in)
    assert _device(art, out, "--epochs", "1", "--force") == 2
    assert "changed by another process after this run started" in _err_line(capsys)
    assert (out / "state.npz").read_text() == "their state"


# ----------------------------------------------------------------------------- edgesnn export --out, plan --json


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = _tiny()
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "ck.pt", model.config, model.state_dict())


def test_export_folder_filled_mid_export_is_not_replaced(checkpoint, tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnx")
    out = tmp_path / "art"
    _before_write(monkeypatch, "edgesnn.export.cli", "replace_dir", 1, lambda p: _fill(out, "notes.txt", "mine"))
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx-step", "--out", str(out)]) == 2
    line = _err_line(capsys)
    assert line.startswith("edgesnn export: error: --out: ") and "absent or an empty folder" in line
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    (kept,) = _conflicts(tmp_path, "art")
    assert (kept / "manifest.json").is_file()


def test_export_file_written_mid_export_is_not_replaced(checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "model.pt"
    _before_write(monkeypatch, "edgesnn.export.torchscript", "atomic_write_bytes", 1,
                  lambda p: p.write_bytes(b"user model"))
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(out)]) == 2
    assert "--out: " in _err_line(capsys)
    assert out.read_bytes() == b"user model"
    (kept,) = _conflicts(tmp_path, "model")
    assert kept.suffix == ".pt" and zipfile.is_zipfile(kept)  # a TorchScript archive


def test_plan_json_written_by_another_plan_is_not_replaced(tmp_path, monkeypatch, capsys):
    plan = tmp_path / "plan.json"
    _before_write(monkeypatch, "edgesnn.planner.cli", "atomic_write", 1, lambda p: p.write_text('{"theirs": 1}'))
    assert main(["plan", "--model", "mlp", "--input", "64", "-T", "4", "--device", "auto", "--batch", "8",
                 "--json", str(plan)]) == 2
    line = _err_line(capsys)
    assert line.startswith("edgesnn plan: error: --json: ") and "appeared" in line
    assert plan.read_text() == '{"theirs": 1}'
    (kept,) = _conflicts(tmp_path, "plan")
    assert '"batch": 8' in kept.read_text()


def test_a_benchmark_json_another_process_wrote_meanwhile_is_kept(tmp_path, monkeypatch):
    # the tools check --json before a measurement of minutes and wrote it after, over whatever was there
    import argparse

    from edgesnn.errors import OutputChanged

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "tools"))
    from tool_args import check_out, write_json

    target = tmp_path / "bench.json"
    out = check_out(argparse.ArgumentParser(prog="bench"), str(target), "--json")
    target.write_text('{"theirs": 1}')  # another run of the benchmark finished first
    with pytest.raises(OutputChanged, match=r"^--json: .*bench\.json appeared while this run worked"):
        write_json(out, {"ours": 2})
    assert target.read_text() == '{"theirs": 1}'
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("bench.conflict-")]
    assert len(kept) == 1 and '"ours": 2' in kept[0].read_text()
