"""Path-flag audit: an output flag may not name an input file the command reads, even with
--force / --resume; an empty tool output path is an error, not "no file"."""

import argparse
import shutil
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
