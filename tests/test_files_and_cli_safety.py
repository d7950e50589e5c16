"""Outputs written through symlinks, failed writes, resume mismatches, Ctrl-C and top-level flags."""

from __future__ import annotations

import errno
import os
import stat

import pytest
import torch

from edgesnn.atomic import WriteError, atomic_write, check_output, replace_dir
from edgesnn.checkpoint import load_checkpoint
from edgesnn.errors import first_line
from edgesnn.cli import main
from edgesnn.errors import USER_ERRORS


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    return err


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# 1. symlinked outputs are written through ---------------------------------------------------------


def test_atomic_write_through_a_symlink_keeps_the_link_and_the_mode(tmp_path):
    persist = tmp_path / "persist"
    persist.mkdir()
    target = persist / "ck.pt"
    target.write_bytes(b"old")
    os.chmod(target, 0o600)
    link = tmp_path / "ck.pt"
    link.symlink_to(target)
    atomic_write(link, lambda fh: fh.write(b"new"))
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == b"new" and _mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt", "persist"]
    assert [p.name for p in persist.iterdir()] == ["ck.pt"]  # no temp file left


def test_atomic_write_fresh_file_gets_the_umask_default(tmp_path):
    mask = os.umask(0o027)
    try:
        atomic_write(tmp_path / "f", lambda fh: fh.write(b"x"))
    finally:
        os.umask(mask)
    assert _mode(tmp_path / "f") == 0o640


def test_replace_dir_through_a_symlink_swaps_the_target_and_leaves_nothing(tmp_path):
    (tmp_path / "sdcard" / "out").mkdir(parents=True)
    (tmp_path / "sdcard" / "out" / "stale").write_text("old")
    (tmp_path / "work").mkdir()
    link = tmp_path / "work" / "out"
    link.symlink_to(tmp_path / "sdcard" / "out")
    replace_dir(link, lambda d: (d / "fresh").write_text("new"))
    assert link.is_symlink()
    assert sorted(p.name for p in (tmp_path / "sdcard" / "out").iterdir()) == ["fresh"]
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["out"]  # no .out.*.tmp.old
    assert [p.name for p in (tmp_path / "sdcard").iterdir()] == ["out"]


def test_a_failed_folder_write_names_the_output_not_its_temp_folder(tmp_path):
    """A file inside the folder failing (disk full, ``ulimit -f``) named the removed temp folder
    (``.artifacts.f6m7u00c.tmp/step.onnx``); the error names ``artifacts/step.onnx``, the old
    folder stays and no temp folder is left."""
    import errno

    out = tmp_path / "artifacts"
    out.mkdir()
    (out / "kept").write_text("old")

    def write(d):
        def fail(fh):
            raise OSError(errno.EFBIG, "File too large")
        atomic_write(d / "step.onnx", fail)

    with pytest.raises(WriteError) as info:
        replace_dir(out, write)
    assert str(info.value).startswith(f"cannot write {out / 'step.onnx'}: file too large"), str(info.value)
    assert [p.name for p in tmp_path.iterdir()] == ["artifacts"] and (out / "kept").read_text() == "old"


def test_a_dangling_symlink_is_an_existing_output(tmp_path):
    link = tmp_path / "ck.pt"
    link.symlink_to(tmp_path / "persist" / "ck.pt")
    with pytest.raises(FileExistsError, match="--force"):
        check_output(link, "--checkpoint")
    with pytest.raises(FileExistsError, match="--force"):
        check_output(link, "--out", directory=True)
    check_output(link, "--checkpoint", force=True)
    atomic_write(link, lambda fh: fh.write(b"new"))
    assert link.is_symlink() and (tmp_path / "persist" / "ck.pt").read_bytes() == b"new"


# 2. a failed write is one line and loses nothing ----------------------------------------------------


def _assert_clean_failure(tmp_path, exc_info, reason):
    msg = str(exc_info.value)
    assert msg.startswith(f"cannot write {tmp_path / 'ck.pt'}: ") and reason in msg and "\n" not in msg
    assert isinstance(exc_info.value, USER_ERRORS)
    assert (tmp_path / "ck.pt").read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_disk_full_while_writing_is_one_line(tmp_path):
    (tmp_path / "ck.pt").write_bytes(b"precious")

    def full(fh):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteError) as info:
        atomic_write(tmp_path / "ck.pt", full)
    _assert_clean_failure(tmp_path, info, "no space left on device")
    assert info.value.errno == errno.ENOSPC


def test_torch_save_short_write_is_one_line(tmp_path):
    (tmp_path / "ck.pt").write_bytes(b"precious")

    class Full:  # a file that takes 1000 bytes, then reports a full disk
        def __init__(self, fh):
            self.fh, self.n = fh, 0

        def write(self, b):
            self.n += len(b)
            if self.n > 1000:
                raise OSError(errno.EFBIG, "File too large")
            return self.fh.write(b)

        def flush(self):
            self.fh.flush()

    with pytest.raises(WriteError) as info:
        atomic_write(tmp_path / "ck.pt", lambda fh: torch.save({"w": torch.ones(1000)}, Full(fh)))
    _assert_clean_failure(tmp_path, info, "file too large")

    def cut(fh):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    with pytest.raises(WriteError) as info:
        atomic_write(tmp_path / "ck.pt", cut)
    _assert_clean_failure(tmp_path, info, "cut short")


def test_a_bug_in_the_writer_keeps_its_type(tmp_path):
    with pytest.raises(TypeError):
        atomic_write(tmp_path / "f", lambda fh: fh.write("text into a binary file"))
    assert list(tmp_path.iterdir()) == []


# 3. resume from a checkpoint that does not match its model ----------------------------------------


def test_resume_with_a_mismatched_state_is_one_line(tmp_path, capsys):
    ck = tmp_path / "ck.pt"
    args = ["train", "--epochs", "1", "--no-progress", "--model", "mlp", "--timesteps", "2", "--max-steps", "2",
            "--checkpoint", str(ck)]
    assert main(args) == 0
    capsys.readouterr()
    payload = torch.load(ck, weights_only=True)
    payload["model_state"]["x"] = torch.ones(2)
    torch.save(payload, ck)
    assert main(args[:2] + ["2"] + args[3:] + ["--resume"]) == 2
    err = _err(capsys)
    assert f"--resume: {ck} does not match its model" in err and "unexpected key x" in err


# 4. Ctrl-C ----------------------------------------------------------------------------------------


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    from edgesnn.training import cli as tcli

    ck = tmp_path / "ck.pt"

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(tcli, "run", interrupted)
    assert main(["train", "--checkpoint", str(ck)]) == 130
    assert _err(capsys) == f"edgesnn train: interrupted before an epoch completed; {ck} was not written"

    def after_an_epoch(args):
        ck.write_bytes(b"epoch 1")
        raise KeyboardInterrupt

    monkeypatch.setattr(tcli, "run", after_an_epoch)
    assert main(["train", "--checkpoint", str(ck), "--force"]) == 130
    err = _err(capsys)
    assert err.startswith("edgesnn train: interrupted;") and "holds the last completed epoch" in err

    from edgesnn.kernels import cli as kcli

    monkeypatch.setattr(kcli, "warmup", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert main(["warmup"]) == 130
    assert _err(capsys) == "edgesnn warmup: interrupted"


# 5. smaller ones ----------------------------------------------------------------------------------


def test_checkpoint_that_is_a_directory_or_a_device(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        load_checkpoint(tmp_path)
    if os.path.exists("/dev/null"):
        with pytest.raises(ValueError, match="not a regular file"):
            load_checkpoint("/dev/null")


def _clip(text: str) -> str:
    return first_line(Exception(text), 160, at_word=True)


def test_long_causes_end_at_a_word_with_an_ellipsis():
    text = ("PytorchStreamReader failed reading zip archive: failed finding central directory. This is an internal "
            "miniz error. If you are seeing this error, there is a high likelihood that your checkpoint file is corrupted.")
    assert _clip(text) == ("PytorchStreamReader failed reading zip archive: failed finding central directory. "
                           "This is an internal miniz error...")
    clipped = _clip("word " * 60)
    assert clipped.endswith("word...") and len(clipped) <= 160
    assert _clip("short") == "short"


def test_version_and_unknown_top_level_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("edgesnn ")
    with pytest.raises(SystemExit) as info:
        main(["-x"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown option -x" in err and "required" not in err


def test_a_dependency_missing_at_run_time_is_one_line(monkeypatch, capsys):
    """A board install without torch: `edgesnn export` builds its parser without torch and meets the
    import only when it runs; that is the same one-line error as for the other commands."""
    import edgesnn.export.cli as export_cli

    def needs_torch(args):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.setattr(export_cli, "run", needs_torch)
    code = main(["export", "--checkpoint", "x.ckpt", "--format", "onnx", "--out", "x.onnx"])
    err = capsys.readouterr().err
    assert code == 2 and "this command needs torch" in err and len(err.strip().splitlines()) == 1
