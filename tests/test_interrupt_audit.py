"""Interrupted writers (SIGKILL, SIGTERM, Ctrl-C) never cost the user an output, and what they leave
behind is cleaned by the next run.

* A process killed between :func:`~edgesnn.atomic.replace_dir`'s two renames leaves ``--out``
  missing and its old contents in ``.out.*.tmp.old``: the next ``edgesnn export --out`` *without*
  ``--force`` saw no output, passed its check, and the swap then put the old folder back and
  deleted it as "the old output". Now the check puts it back first and refuses in one line.
* SIGTERM (default handler: the process ends) between the two renames left ``--out`` missing; the
  swap now holds SIGINT / SIGTERM until both renames are done.
* Temp files / folders of killed writers (``.ck.pt.XXXX.tmp``, ``.out.XXXX.tmp``, a stale
  ``.out.XXXX.tmp.old`` beside an existing ``out``) stayed forever, one more per kill; the next
  write of the same target removes them (never one a live writer holds locked).
* ``recover_dir("e")`` took another output's leftover (``.e.x.XXXX.tmp.old``, of ``e.x``).
* Ctrl-C held back until an export's swap was done then printed a bare ``interrupted``: the user
  would run the export again into the refusal of an existing ``--out``. It now says the output is complete.

The kills are injected at a chosen point (a write callback or ``os.replace`` that signals its own
process), not timed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from edgesnn.atomic import atomic_write, check_output, recover_dir, replace_dir

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (the repository importable), working folder ``tmp_path``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def _age(path: Path, seconds: float = 60.0) -> None:
    """Make ``path`` look ``seconds`` old (a leftover of a run killed a while ago)."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_export_without_force_keeps_an_output_a_killed_swap_left_aside(tmp_path, capsys):
    from edgesnn.checkpoint import save_checkpoint
    from edgesnn.cli import main
    from edgesnn.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp", (16,), 4, 2, neuron="lif", hidden=(8,))
    ck = save_checkpoint(tmp_path / "model.ckpt", model.config, model.state_dict(), epoch=1)
    aside = tmp_path / ".out.k3j9ab12.tmp.old"  # `export --force` SIGKILLed between its two renames
    aside.mkdir()
    (aside / "mine.txt").write_text("the user's")
    rc = main(["export", "--checkpoint", str(ck), "--format", "onnx-step", "--batch-size", "4",
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "--out" in err and "--force" in err
    assert (tmp_path / "out" / "mine.txt").read_text() == "the user's"  # back in place, not deleted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt", "out"]


def test_check_output_puts_a_swapped_aside_folder_back_before_checking(tmp_path):
    aside = tmp_path / ".out.abcd1234.tmp.old"
    aside.mkdir()
    (aside / "state.npz").write_bytes(b"epoch 5")
    try:
        check_output(tmp_path / "out", "--out", directory=True)
    except FileExistsError as exc:
        assert "already exists" in str(exc)
    else:
        raise AssertionError("an output left aside by a killed swap was taken for no output")
    assert (tmp_path / "out" / "state.npz").read_bytes() == b"epoch 5"
    assert check_output(tmp_path / "out", "--out", force=True, directory=True) == tmp_path / "out"


def test_sigterm_between_the_swaps_two_renames_leaves_the_new_output(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "f").write_text("old")
    p = _run("""
        import os, signal
        from edgesnn.atomic import replace_dir
        real, calls = os.replace, []
        def replace(a, b):  # SIGTERM (default handler: the process ends) between the two renames
            calls.append(a)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return real(a, b)
        os.replace = replace
        replace_dir("out", lambda d: (d / "f").write_text("new"))
        print("survived")
    """, tmp_path)
    assert p.returncode == -15 and "survived" not in p.stdout, p.stderr  # ends, but after the swap
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out"]
    assert (tmp_path / "out" / "f").read_text() == "new"


def test_a_killed_writers_temp_file_is_removed_by_the_next_write(tmp_path):
    (tmp_path / "ck.pt").write_bytes(b"epoch 1")
    p = _run("""
        import os, signal
        from edgesnn.atomic import atomic_write
        def write(fh):
            fh.write(b"half of epoch 2")
            os.kill(os.getpid(), signal.SIGKILL)
        atomic_write("ck.pt", write)
    """, tmp_path)
    assert p.returncode == -9
    left = [x for x in tmp_path.iterdir() if x.name != "ck.pt"]
    assert len(left) == 1 and left[0].name.startswith(".ck.pt.") and left[0].name.endswith(".tmp")
    assert (tmp_path / "ck.pt").read_bytes() == b"epoch 1"  # the old file, whole
    _age(left[0])
    mine = tmp_path / ".ck.pt.Backup.tmp"  # the user's own file, not a temp name tempfile gives
    mine.write_bytes(b"keep")
    _age(mine)
    atomic_write(tmp_path / "ck.pt", lambda fh: fh.write(b"epoch 2"))
    assert sorted(x.name for x in tmp_path.iterdir()) == [".ck.pt.Backup.tmp", "ck.pt"]
    assert (tmp_path / "ck.pt").read_bytes() == b"epoch 2"


def test_a_killed_swaps_temp_folders_are_removed_by_the_next_swap(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "f").write_text("epoch 1")
    p = _run("""
        import os, signal
        from edgesnn.atomic import replace_dir
        def write(d):
            (d / "f").write_text("half")
            os.kill(os.getpid(), signal.SIGKILL)
        replace_dir("out", write)
    """, tmp_path)
    assert p.returncode == -9
    left = [x for x in tmp_path.iterdir() if x.name != "out"]
    assert len(left) == 1 and left[0].is_dir() and left[0].name.endswith(".tmp")
    _age(left[0])
    stale = tmp_path / ".out.zzzz9999.tmp.old"  # a run killed while removing the old set: out exists
    stale.mkdir()
    (stale / "f").write_text("epoch 0")
    other = tmp_path / ".out.x.abcd1234.tmp"  # another output's (out.x) temp folder: not ours
    other.mkdir()
    _age(other)
    replace_dir(tmp_path / "out", lambda d: (d / "f").write_text("epoch 2"))
    assert sorted(x.name for x in tmp_path.iterdir()) == [".out.x.abcd1234.tmp", "out"]
    assert (tmp_path / "out" / "f").read_text() == "epoch 2"


def test_a_live_writers_temp_file_is_left_alone(tmp_path):
    """The next write removes only temp files no live process holds locked (here: an outer write
    of the same target, its temp file made to look old, still under way)."""
    def outer(fh):
        fh.write(b"outer")
        fh.flush()
        for t in tmp_path.glob(".ck.pt.*.tmp"):
            _age(t)
        atomic_write(tmp_path / "ck.pt", lambda inner: inner.write(b"inner"))

    atomic_write(tmp_path / "ck.pt", outer)
    assert (tmp_path / "ck.pt").read_bytes() == b"outer"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["ck.pt"]


def test_recover_dir_does_not_take_a_longer_names_leftover(tmp_path):
    other = tmp_path / ".e.x.abcd1234.tmp.old"  # what a swap of `e.x` left aside
    other.mkdir()
    (other / "keep").write_text("e.x's")
    assert recover_dir(tmp_path / "e") is None
    assert not (tmp_path / "e").exists() and (other / "keep").read_text() == "e.x's"
    assert recover_dir(tmp_path / "e.x") == other and (tmp_path / "e.x" / "keep").is_file()


_EXPORT_WITH_CTRL_C = """
    import os, signal, sys
    import torch
    from edgesnn.checkpoint import save_checkpoint
    from edgesnn.models import build_model
    torch.manual_seed(0)
    m = build_model("mlp", (16,), 4, 2, neuron="lif", hidden=(8,))
    save_checkpoint("model.ckpt", m.config, m.state_dict(), epoch=1)
    real = os.replace
    def replace(a, b):  # Ctrl-C at a chosen rename of the export's folder swap
        r = real(a, b)
        if {after_swap} and str(a).endswith(".tmp") and os.path.basename(b) == "out":
            os.kill(os.getpid(), signal.SIGINT)
        return r
    if not {after_swap}:
        import edgesnn.export.onnx_step as step
        def interrupted(*a, **k):
            raise KeyboardInterrupt
        step.export_onnx_step = interrupted  # Ctrl-C while the graphs are being written
    os.replace = replace
    from edgesnn.cli import main
    sys.exit(main(["export", "--checkpoint", "model.ckpt", "--format", "onnx-step", "--batch-size", "4",
                   "--out", "out"]))
"""


def test_ctrl_c_held_until_the_swap_says_the_export_is_complete(tmp_path):
    p = _run(_EXPORT_WITH_CTRL_C.format(after_swap=True), tmp_path)
    assert p.returncode == 130, p.stderr
    # it used to say only "interrupted": the user would export again, into the refusal of an existing --out
    assert p.stderr.strip() == "edgesnn export: interrupted after out was written (it is complete)", p.stderr
    assert (tmp_path / "out" / "manifest.json").is_file()


def test_ctrl_c_before_the_swap_says_interrupted_and_writes_nothing(tmp_path):
    p = _run(_EXPORT_WITH_CTRL_C.format(after_swap=False), tmp_path)
    assert p.returncode == 130, p.stderr
    assert p.stderr.strip() == "edgesnn export: interrupted", p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["model.ckpt"]


def test_ctrl_c_while_the_command_is_imported_is_one_line(tmp_path):
    # Ctrl-C in the first seconds (torch still importing) was a traceback ending in KeyboardInterrupt
    p = _run("""
        import builtins, sys
        real = builtins.__import__
        def imp(name, *a, **k):  # Ctrl-C at the command module's first import of torch
            if name == "torch" and not hasattr(builtins, "_hit"):
                builtins._hit = True
                raise KeyboardInterrupt
            return real(name, *a, **k)
        builtins.__import__ = imp
        sys.argv = ["edgesnn", "train", "--epochs", "1"]
        from edgesnn.cli import main
        sys.exit(main())
    """, tmp_path)
    assert p.returncode == 130 and p.stderr.strip() == "edgesnn train: interrupted", p.stderr[-2000:]


def test_ctrl_c_inside_torch_save_is_an_interrupt_not_a_failed_write(tmp_path):
    """``torch.save``'s stream writer turns a ``KeyboardInterrupt`` raised in its write call into
    ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos`` with the interrupt as its
    context: ``edgesnn train`` said "cannot write ck.pt: the write was cut short (disk full or a file
    size limit?)" and exited 2 instead of saying it was interrupted (exit 130)."""
    import pytest

    target = tmp_path / "ck.pt"
    target.write_bytes(b"old checkpoint")

    class CtrlCAfter:  # a file object whose write is interrupted once 1 MiB has gone through
        def __init__(self, fh):
            self.fh, self.n = fh, 0

        def write(self, b):
            self.n += len(b)
            if self.n > 2**20:
                raise KeyboardInterrupt
            return self.fh.write(b)

        def flush(self):
            return self.fh.flush()

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, lambda fh: torch.save({"w": torch.zeros(2**20)}, CtrlCAfter(fh)))
    assert target.read_bytes() == b"old checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temp file left
    with pytest.raises(RuntimeError):  # a writer's own RuntimeError still passes through as it is
        atomic_write(target, lambda fh: (_ for _ in ()).throw(RuntimeError("a bug in the writer")))
