"""Path-flag audit: an output flag may not name an input file the command reads, even with
--force / --resume; an empty tool output path is an error, not "no file"."""

import argparse
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgesnn.cli import main

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "devices" / "jetson-orin-nano-8gb.json"
PLAN_ARGS = ["plan", "--model", "mlp", "--input", "64", "-T", "2", "--device", "jetson-orin-nano-8gb", "--dataset", "digits"]
TRAIN_ARGS = ["train", "--epochs", "1", "--max-steps", "1", "--threads", "1", "--no-progress", "--plan", "plan.json"]


@pytest.fixture
def plan_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(PLAN_ARGS + ["--json", "plan.json"]) == 0
    return tmp_path / "plan.json"


@pytest.mark.parametrize("extra", [["--json", "plan.json", "--force"], ["--checkpoint", "./plan.json", "--force"]])
def test_train_output_is_not_the_plan_it_reads(plan_file, extra, capsys):
    before = plan_file.read_bytes()
    assert main(TRAIN_ARGS + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and extra[0] in err[0] and "input plan" in err[0]
    assert plan_file.read_bytes() == before


@pytest.mark.parametrize("flag", ["--json"])
def test_plan_output_is_not_the_device_profile_it_reads(tmp_path, monkeypatch, capsys, flag):
    monkeypatch.chdir(tmp_path)
    shutil.copy(PROFILE, "prof.json")
    before = Path("prof.json").read_bytes()
    argv = ["plan", "--model", "mlp", "--input", "64", "-T", "2", "--device", "prof.json", flag, "./prof.json", "--force"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0] and "input device" in err[0]
    assert Path("prof.json").read_bytes() == before


def test_plan_output_is_not_the_catalogued_profile_it_reads_by_name(tmp_path, monkeypatch, capsys):
    """A profile named from ``EDGESNN_DEVICE_PATH`` (or the built-in catalogue) was replaced by the plan
    under --force: only a --device given as a path was checked. Every later --device board failed."""
    monkeypatch.chdir(tmp_path)
    Path("boards").mkdir()
    Path("boards/board.json").write_text(PROFILE.read_text().replace('"jetson-orin-nano-8gb"', '"board"'))
    monkeypatch.setenv("EDGESNN_DEVICE_PATH", str(tmp_path / "boards"))
    before = Path("boards/board.json").read_bytes()
    argv = ["plan", "--model", "mlp", "--input", "64", "-T", "2", "--device", "board", "--json", "boards/board.json",
            "--force"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--json" in err[0] and "input device" in err[0]
    assert Path("boards/board.json").read_bytes() == before


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="no RLIMIT_FSIZE")
def test_a_failed_plot_keeps_the_plan_file_that_was_there(tmp_path):
    """``--json X --plot Y --force`` with the plot failing (a file size limit) replaced X with the new
    plan and kept the old Y: a mixed pair. Now both stay as they were, and the error names Y."""
    pytest.importorskip("matplotlib")
    (tmp_path / "p.json").write_text("old plan\n")
    (tmp_path / "p.png").write_text("old plot\n")
    proc = subprocess.run([sys.executable, "-m", "edgesnn"] + PLAN_ARGS + ["--json", "p.json", "--plot", "p.png", "--force"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (12 * 1024, 12 * 1024)))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == ("edgesnn plan: error: cannot write p.png: file too large "
                                                    "(a file size limit was hit)")
    assert (tmp_path / "p.json").read_text() == "old plan\n"
    assert (tmp_path / "p.png").read_text() == "old plot\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json", "p.png"]


@pytest.mark.parametrize("value", ["", "  "])
def test_tool_empty_output_path_is_refused(tmp_path, monkeypatch, capsys, value):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    from tool_args import check_out

    ap = argparse.ArgumentParser(prog="bench")
    with pytest.raises(SystemExit) as exc:
        check_out(ap, value, "--json", force=True)
    assert exc.value.code == 2
    assert "--json: expected a file path" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["", " "])
def test_warmup_empty_cache_dir_is_refused(tmp_path, monkeypatch, capsys, value):
    """An empty --cache-dir compiled the kernels into the working folder (or one named ' ')."""
    monkeypatch.chdir(tmp_path)
    assert main(["warmup", "--cache-dir", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cache-dir: expected a folder path" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_validate_planner_json_is_not_its_from_json_input(tmp_path, monkeypatch, capsys):
    """``--from-json X --json X --force`` replaced the measured results it reads."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    import validate_planner

    Path("bench.json").write_text('{"rows": []}')
    with pytest.raises(SystemExit) as exc:
        validate_planner.main(["--network", "--from-json", "bench.json", "--json", "./bench.json", "--force"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--json" in err[-1] and "--from-json" in err[-1]
    assert Path("bench.json").read_text() == '{"rows": []}'
