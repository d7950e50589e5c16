"""A disk that fills up, or a file system that turns read-only, while a command writes its output.

Checked by hand on a small tmpfs (full from the start, full after a good output, remounted read-only
mid-run) for ``edgesnn train --checkpoint/--json`` (also ``--resume``), ``edgesnn export`` (all
formats, also ``--force``), ``edgesnn-device --out`` (also ``--resume`` / ``--force``) and ``edgesnn
plan --json``: every failure that happened while a file was written was already one line, exit 2,
the previous output intact. What failed is simulated here (no root, no mounts): the steps around
the write itself, and the keeping of a run's output beside a conflicting one
(:mod:`edgesnn.output_guard`). Each test failed on the code before.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pytest
import torch

from edgesnn.atomic import WriteError, atomic_write, replace_dir
from edgesnn.errors import USER_ERRORS, OutputChanged
from edgesnn.output_guard import GuardedDir, GuardedFile

ROFS = OSError(errno.EROFS, "Read-only file system")
FULL = OSError(errno.ENOSPC, "No space left on device")


def _fail_when(monkeypatch, module, name: str, exc: OSError, when) -> None:
    """``module.name(*args)`` raises ``exc`` where ``when(*args)`` holds, else runs as before."""
    original = getattr(module, name)

    def wrapped(*args, **kw):
        if when(*args, **kw):
            raise exc
        return original(*args, **kw)

    monkeypatch.setattr(module, name, wrapped)


def _names(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------- a file output


def test_read_only_after_the_file_was_written_is_one_line(tmp_path, monkeypatch):
    """The file system turned read-only (ext4 ``errors=remount-ro`` on a failing SD card) between the
    temp file's write and its rename: the rename fails, and so does removing the temp file; that
    second failure escaped as a raw ``OSError`` (a traceback). Now the one line, the old file kept;
    the temp file stays (nothing can remove it) for the next write to remove."""
    ck = tmp_path / "ck.pt"
    ck.write_bytes(b"precious")
    inside = lambda *a, **k: str(a[0]).startswith(str(tmp_path))  # noqa: E731
    _fail_when(monkeypatch, os, "replace", ROFS, inside)
    _fail_when(monkeypatch, os, "unlink", ROFS, inside)
    with pytest.raises(WriteError) as info:
        atomic_write(GuardedFile(ck, "--checkpoint"), lambda fh: fh.write(b"new"))
    assert str(info.value) == f"cannot write {ck}: read-only file system"
    assert ck.read_bytes() == b"precious"
    (leftover,) = [n for n in _names(tmp_path) if n != "ck.pt"]
    assert leftover.startswith(".ck.pt.") and leftover.endswith(".tmp")
    monkeypatch.undo()
    monkeypatch.setattr("edgesnn.atomic._STALE_AFTER_S", 0.0)  # (2 s old in real use)
    atomic_write(ck, lambda fh: fh.write(b"new"))
    assert _names(tmp_path) == ["ck.pt"] and ck.read_bytes() == b"new"


def test_read_only_between_the_link_and_the_temp_files_removal_is_a_written_output(tmp_path, monkeypatch):
    """An absent output is created with ``os.link``; the temp file's removal after it failing
    (read-only since) reported the complete output as a traceback. The output is in place: success."""
    ck = tmp_path / "ck.pt"
    guard = GuardedFile(ck, "--checkpoint")
    _fail_when(monkeypatch, os, "unlink", ROFS, lambda *a, **k: str(a[0]).startswith(str(tmp_path)))
    atomic_write(guard, lambda fh: fh.write(b"new"))
    assert ck.read_bytes() == b"new" and guard.written


@pytest.mark.parametrize("step", ["mkstemp", "replace"])
def test_a_conflict_kept_on_a_full_disk_is_one_line_naming_the_flag_and_leaves_nothing(tmp_path, monkeypatch, step):
    """Another process wrote ``--checkpoint`` during the run, and there is no room for this run's
    ``NAME.conflict-XXXXXXXX.pt``: making the name failed (a bare ``cannot write``, no flag) or the
    rename into it failed (an empty ``ck.conflict-*.pt`` was left behind). Now one line names the flag,
    says what happened and why the run's output is not kept; nothing is left beside the other file."""
    import edgesnn.output_guard as og

    ck = tmp_path / "ck.pt"
    guard = GuardedFile(ck, "--checkpoint")
    ck.write_bytes(b"the other run's")
    if step == "mkstemp":
        _fail_when(monkeypatch, og.tempfile, "mkstemp", FULL, lambda *a, **k: ".conflict-" in k.get("prefix", ""))
    else:
        _fail_when(monkeypatch, os, "replace", FULL, lambda *a, **k: ".conflict-" in str(a[1]))
    with pytest.raises(OutputChanged) as info:
        atomic_write(guard, lambda fh: fh.write(b"new"))
    msg = str(info.value)
    assert msg.startswith(f"--checkpoint: {ck} appeared while this run worked") and "\n" not in msg
    assert isinstance(info.value, USER_ERRORS)  # exit 2, one line
    assert msg.endswith("this run's output could not be kept beside it (no space left on device)")
    assert _names(tmp_path) == ["ck.pt"] and ck.read_bytes() == b"the other run's"


# ----------------------------------------------------------------------------- a folder output


def test_a_folder_temp_that_cannot_be_made_is_one_line(tmp_path, monkeypatch):
    """``replace_dir`` makes its temp folder beside ``--out``; on a file system gone read-only (or a
    full ext4, a folder needs a block) that raised a raw ``OSError``: ``edgesnn export --format
    onnx-step`` and ``edgesnn-device`` printed a traceback. Now the one ``cannot write`` line."""
    out = tmp_path / "art"
    out.mkdir()
    (out / "step.onnx").write_text("old")
    _fail_when(monkeypatch, tempfile, "mkdtemp", ROFS, lambda *a, **k: True)
    with pytest.raises(WriteError) as info:
        replace_dir(GuardedDir(out, "--out"), lambda tmp: (tmp / "step.onnx").write_text("new"))
    assert str(info.value) == f"cannot write {out}: read-only file system"
    assert _names(tmp_path) == ["art"] and (out / "step.onnx").read_text() == "old"


def test_a_folder_swap_that_fails_is_one_line(tmp_path, monkeypatch):
    """The new folder is complete, the swap's rename fails (read-only since): a raw ``OSError`` before."""
    out = tmp_path / "art"
    out.mkdir()
    (out / "step.onnx").write_text("old")
    _fail_when(monkeypatch, os, "replace", ROFS, lambda *a, **k: Path(a[0]).name.startswith(".art."))
    with pytest.raises(WriteError) as info:
        replace_dir(out, lambda tmp: (tmp / "step.onnx").write_text("new"))
    assert str(info.value) == f"cannot write {out}: read-only file system"
    assert _names(tmp_path) == ["art"] and (out / "step.onnx").read_text() == "old"


def test_a_full_disk_inside_the_folder_write_is_one_line_but_a_read_error_is_not_renamed(tmp_path):
    """A file copied into the new folder (``edgesnn-device`` carries the other files of ``--out``:
    a copy where hard links fail, e.g. FAT) on a full disk: a raw ``OSError`` before. An error that is
    not a failed write (a missing input) keeps its own type and message."""
    out = tmp_path / "ft"

    def full(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "notes.txt"))

    with pytest.raises(WriteError, match=f"^cannot write {out}: no space left on device$"):
        replace_dir(out, full)

    def missing(tmp: Path) -> None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "data.npz")

    with pytest.raises(FileNotFoundError) as info:
        replace_dir(out, missing)
    assert not isinstance(info.value, WriteError)
    assert _names(tmp_path) == []


def test_a_folder_conflict_kept_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """Another process filled ``--out``; renaming this run's folder to ``NAME.conflict-XXXXXXXX``
    failed: a raw ``OSError`` and an empty ``art.conflict-*`` folder left. Now one line naming the flag."""
    out = tmp_path / "art"
    guard = GuardedDir(out, "--out")
    out.mkdir()
    (out / "theirs.txt").write_text("another run")
    _fail_when(monkeypatch, os, "replace", FULL, lambda *a, **k: ".conflict-" in str(a[1]))
    with pytest.raises(OutputChanged) as info:
        replace_dir(guard, lambda tmp: (tmp / "step.onnx").write_text("new"))
    assert str(info.value).startswith(f"--out: {out} appeared while this run worked")
    assert str(info.value).endswith("could not be kept beside it (no space left on device)")
    assert _names(tmp_path) == ["art"] and _names(out) == ["theirs.txt"]


# ----------------------------------------------------------------------------- the command lines


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from edgesnn.checkpoint import save_checkpoint
    from edgesnn.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp", (16,), 4, 2, hidden=(8,))
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "ck.pt", model.config, model.state_dict())


def test_export_onto_a_read_only_file_system_is_one_line_exit_2(checkpoint, tmp_path, monkeypatch, capsys):
    """``edgesnn export --format onnx-step --force`` with ``--out``'s file system read-only by the time
    the export is written: a traceback (exit 1) before; now exit 2, one line, the old export intact."""
    pytest.importorskip("onnx")
    from edgesnn.cli import main

    out = tmp_path / "art"
    out.mkdir()
    (out / "manifest.json").write_text("old")
    _fail_when(monkeypatch, tempfile, "mkdtemp", ROFS, lambda *a, **k: str(k.get("dir", "")) == str(tmp_path))
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx-step", "--out", str(out), "--force"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"edgesnn export: error: cannot write {out}: read-only file system"]
    assert _names(tmp_path) == ["art"] and _names(out) == ["manifest.json"]


def test_device_resume_that_cannot_carry_a_file_on_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    """``edgesnn-device --resume`` carries the other files of ``--out`` into every new set (a copy
    where links fail); a full disk there was a traceback. Now exit 2 and the line that says what
    ``--out`` holds, which is intact."""
    pytest.importorskip("onnxruntime")
    from _step_compare import small_runner_case

    from edgesnn.export import run_state
    from edgesnn.export.runner import main as device_main

    monkeypatch.setattr("edgesnn.export.step_runner.training_modules_imported", lambda: [])
    art = small_runner_case(tmp_path, "lif", 16)
    out = tmp_path / "ft"
    args = [str(art / "art"), "--data", str(art / "data.npz"), "--out", str(out), "--threads", "1", "--holdout", "0"]
    assert device_main(args + ["--epochs", "1"]) == 0
    (out / "notes.txt").write_text("mine")
    before = {n: (out / n).read_bytes() for n in _names(out)}

    def no_room(src: Path, dst: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(run_state, "_link_or_copy", no_room)
    capsys.readouterr()
    assert device_main(args + ["--epochs", "1", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"edgesnn-device: error: cannot write {out}: no space left on device; ")
    assert "holds the state after epoch 1" in err[0]
    assert {n: (out / n).read_bytes() for n in _names(out)} == before
    assert _names(tmp_path) == ["art", "data.npz", "ft"]
