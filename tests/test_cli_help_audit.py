"""Each command line's --help against its behaviour: defaults, listed choices, usage errors, units.

`edgesnn` (train, plan, export, warmup) and `edgesnn-device`: every listed choice parses and an
unlisted value is one line naming the flag (exit 2, no usage block); a default a parser holds is the
one its help states; the help names every option the code reads and shows no reST markup; the
runner's peak RSS is labelled in the unit it is measured in (MiB).
"""

import argparse
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgesnn import cli

SUBCOMMAND_MODULES = {"train": "edgesnn.training.cli", "export": "edgesnn.export.cli",
                      "warmup": "edgesnn.kernels.cli", "plan": "edgesnn.planner.cli"}


def _sub_parser(name: str) -> argparse.ArgumentParser:
    """The ``edgesnn NAME`` parser as ``edgesnn`` builds it."""
    top = cli.build_parser(name)
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _device_parser() -> argparse.ArgumentParser:
    from edgesnn.export.runner import build_parser

    return build_parser()


def _exit_code(call) -> int:
    try:
        return call()
    except SystemExit as exc:
        return exc.code


def _one_line(err: str, prog: str, *words: str) -> None:
    assert err.startswith(f"{prog}: error: ") and err.count("\n") == 1, err
    assert "usage:" not in err and "Traceback" not in err, err
    assert all(w in err for w in words), (words, err)


# 1. usage errors (an unlisted choice, a value of the wrong type, a missing or unknown flag): one line, exit 2

@pytest.mark.parametrize("argv,words", [
    (["train", "--dataset", "mnist"], ["edgesnn train", "--dataset", "invalid choice: 'mnist'", "digits"]),
    (["train", "--model", "resnet"], ["edgesnn train", "--model", "mlp"]),
    (["train", "--lr-schedule", "step"], ["edgesnn train", "--lr-schedule", "cosine"]),
    (["train", "--epochs", "1.5"], ["edgesnn train", "--epochs", "invalid int value"]),
    (["train", "--bogus"], ["edgesnn train", "unrecognized arguments: --bogus"]),
    (["plan", "--pool", "min"], ["edgesnn plan", "--pool", "avg"]),
    (["plan", "--optimizer", "rmsprop"], ["edgesnn plan", "--optimizer", "sgd-momentum"]),
    (["export", "--checkpoint", "c", "--out", "o", "--format", "tflite"], ["edgesnn export", "--format", "onnx-step"]),
    (["export", "--checkpoint", "c", "--out", "o", "--format", "onnx-step", "--time-chunk", "3"],
     ["edgesnn export", "--time-chunk", "invalid choice: 3"]),
    (["export", "--format", "onnx"], ["edgesnn export", "required", "--checkpoint", "--out"]),
    (["warmup", "--jobs", "two"], ["edgesnn warmup", "--jobs", "invalid int value"]),
    (["deploy"], ["edgesnn: error", "COMMAND", "invalid choice: 'deploy'", "train"]),
    ([], ["edgesnn: error", "required: COMMAND"]),
])
def test_usage_errors_are_one_line(argv, words, capsys):
    """Before: argparse printed the whole usage block (up to 15 lines) above the error line."""
    assert _exit_code(lambda: cli.main(argv)) == 2
    out, err = capsys.readouterr()
    prog = "edgesnn" if not argv or argv[0] == "deploy" else f"edgesnn {argv[0]}"
    _one_line(err, prog, *words)
    assert out == ""


def test_device_runner_usage_errors_name_artifacts(capsys):
    """The positional argument is ARTIFACTS everywhere (usage, --out's default, the runner's own errors)."""
    from edgesnn.export.runner import main

    assert _exit_code(lambda: main(["--data", "d.npz"])) == 2
    _one_line(capsys.readouterr().err, "edgesnn-device", "required: ARTIFACTS")
    assert "ARTIFACTS" in _device_parser().format_usage()


# 2. listed choices: each one parses, and the help lists exactly the parser's choices

def _choice_actions(parser: argparse.ArgumentParser):
    return [a for a in parser._actions if a.choices and a.option_strings]


@pytest.mark.parametrize("name", [*SUBCOMMAND_MODULES, "edgesnn-device"])
def test_every_listed_choice_parses(name):
    parser = _device_parser() if name == "edgesnn-device" else _sub_parser(name)
    required = {"export": ["--checkpoint", "c", "--format", "onnx", "--out", "o"],
                "edgesnn-device": ["ART", "--data", "d.npz"]}.get(name, [])
    usage = " ".join(parser.format_help().split())
    for action in _choice_actions(parser):
        flag = action.option_strings[0]
        listed = "{" + ",".join(map(str, action.choices)) + "}" if action.metavar is None else \
            " or ".join([", ".join(map(str, action.choices[:-1])), str(action.choices[-1])])
        assert listed in usage, (flag, listed)
        for choice in action.choices:
            args = parser.parse_args([*required, flag, str(choice)])
            assert getattr(args, action.dest) == choice


# 3. defaults: a default the parser holds is the one the help states

def _parsers():
    yield "edgesnn-device", _device_parser()
    for name in ("plan", "export", "warmup"):
        yield f"edgesnn {name}", _sub_parser(name)


@pytest.mark.parametrize("prog,parser", list(_parsers()), ids=lambda v: v if isinstance(v, str) else "")
def test_help_states_each_parser_default(prog, parser):
    """Before: edgesnn-device --epochs (1) and --seed (0), edgesnn plan --optimizer (adam) named none."""
    for action in parser._actions:
        if not action.option_strings or action.default in (None, False, True, argparse.SUPPRESS):
            continue
        text = " ".join((action.help or "").split())
        assert "default" in text and str(action.default) in text, (prog, action.option_strings, text)


def test_export_defaults_filled_by_the_code_are_the_helps(tmp_path):
    """--batch-size, --optimizer, --lr, --momentum are None in the parser and filled in _check_args."""
    from edgesnn.export.cli import _check_args

    ck = tmp_path / "ck.ckpt"
    ck.write_bytes(b"x")  # only its being a regular file is checked here
    parser = _sub_parser("export")
    args = parser.parse_args(["--checkpoint", str(ck), "--format", "onnx-step", "--out", str(tmp_path / "o")])
    _check_args(args)
    helps = {a.dest: " ".join(a.help.split()) for a in parser._actions if a.help}
    for dest, value in (("batch_size", 32), ("optimizer", "sgd"), ("lr", 0.01), ("momentum", 0.9)):
        assert getattr(args, dest) == value and f"default {value}" in helps[dest], (dest, helps[dest])


def test_warmup_jobs_help_names_every_cap():
    """Before: the help left out the cap of one process per kernel part."""
    from edgesnn.kernels.cli import default_jobs
    from edgesnn.kernels.warmup_parts import PARTS

    text = " ".join(next(a.help for a in _sub_parser("warmup")._actions if a.dest == "jobs").split())
    assert f"one per kernel part, {len(PARTS)}" in text and 1 <= default_jobs() <= len(PARTS)


def test_plan_memopt_json_is_not_a_train_plan_and_the_help_says_so(tmp_path, capsys):
    """Before: --json's help offered every plan JSON to `edgesnn train --plan`, which refuses --memopt's."""
    from edgesnn.planner import load_plan

    out = tmp_path / "m.json"
    argv = ["plan", "--model", "mlp", "--input", "64", "-T", "2", "--device", "raspberry-pi-4-4gb", "--memopt",
            "--json", str(out), "--max-batch", "8"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    with pytest.raises(ValueError, match="--memopt"):
        load_plan(out, label="--plan")
    text = " ".join(next(a.help for a in _sub_parser("plan")._actions if a.dest == "json").split())
    assert "--memopt" in text and "refuses" in text


# 4. the help names every option the code reads, and shows no reST markup

@pytest.mark.parametrize("name", list(SUBCOMMAND_MODULES))
def test_every_option_read_is_in_the_help(name):
    parser = _sub_parser(name)
    dests = {a.dest for a in parser._actions}
    source = Path(importlib.import_module(SUBCOMMAND_MODULES[name]).__file__).read_text()
    read = set(re.findall(r"\bargs\.(\w+)", source)) - {"func", "command"}
    set_by_code = {"planned_model", "widths"}  # train: filled from --plan, never flags
    assert read - dests - set_by_code == set(), name
    assert dests - {"help"} <= read | {"help"}, name  # no help line for an option nothing reads


@pytest.mark.parametrize("name", [*SUBCOMMAND_MODULES, "edgesnn-device"])
def test_help_shows_no_rest_markup(name):
    """Before: plan, warmup and export printed their docstrings' ``double backquotes``."""
    parser = _device_parser() if name == "edgesnn-device" else _sub_parser(name)
    assert "``" not in parser.format_help()


# 5. units: the device runner's peak RSS is measured in MiB

def test_device_runner_labels_peak_rss_in_mib(monkeypatch, capsys):
    """Before: `peak RSS 64.9 MB` for VmHWM / 1024 (MiB)."""
    from edgesnn.export import runner

    seen = {}

    def fake_finetune(*args, **kwargs):
        seen["args"] = args
        return {"step_ms_mean": 1.0, "accuracy_on": "held-out", "accuracy_before": 0.1, "accuracy_after": 0.2,
                "steps": 2, "padded_per_epoch": 0, "peak_rss_mb": runner.peak_rss_mb(), "torch_imported": False}

    monkeypatch.setattr(runner, "finetune", fake_finetune)
    assert runner.main(["art", "--data", "d.npz"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"peak RSS [0-9.]+ MiB;", out), out
    assert seen["args"][2:4] == (1, None)  # --epochs 1, --lr None (the manifest's): the defaults the help states
    status = Path("/proc/self/status")
    if status.exists():  # the figure is VmHWM (kB) / 1024: MiB, not MB
        def hwm_kib() -> int:
            return int(next(ln for ln in status.read_text().splitlines() if ln.startswith("VmHWM:")).split()[1])

        before = hwm_kib()
        figure = runner.peak_rss_mb()
        assert before / 1024 <= figure <= hwm_kib() / 1024 < before / 1000


# 6. `python -m edgesnn` is the `edgesnn` command

def test_python_m_edgesnn_is_the_edgesnn_command():
    script = Path(sys.executable).with_name("edgesnn")
    if not script.exists():
        pytest.skip("the edgesnn entry point is not installed next to this interpreter")
    for argv in (["--help"], ["warmup", "--threads", "x"], ["--version"]):
        a = subprocess.run([str(script), *argv], capture_output=True, text=True, timeout=60)
        b = subprocess.run([sys.executable, "-m", "edgesnn", *argv], capture_output=True, text=True, timeout=60)
        assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr), argv
    assert b.returncode == 0 and b.stdout.startswith("edgesnn ")


@pytest.mark.parametrize("name", list(SUBCOMMAND_MODULES))
def test_top_level_help_line_is_the_subcommands_own(name):
    """`edgesnn --help` shows COMMANDS' one-liners without importing the modules: they must match."""
    top = cli.build_parser(name)
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    own = next(a.help for a in sub._choices_actions if a.dest == name)
    assert cli.COMMANDS[SUBCOMMAND_MODULES[name]] == (name, own)
