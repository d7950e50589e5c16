"""Audit of the benchmark scripts in tools/: their JSON names its baseline and holds the printed
ratios, they run from any folder, and a failed worker is one line. No real benchmark runs here:
the measurements are monkeypatched (or the scripts stop at their argument checks)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"

_BLOCK_EDITABLE = """import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()
                    and "editable" not in getattr(f, "__module__", "").lower()]
"""


def _load(name: str, monkeypatch):
    """``tools/<name>.py`` as a fresh module (its folder on ``sys.path`` for ``tool_args``)."""
    monkeypatch.syspath_prepend(str(TOOLS))
    spec = importlib.util.spec_from_file_location(f"_toolaudit_{name}", TOOLS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("tool", ["bench_network_memory", "memopt_phases", "validate_planner"])
def test_tool_runs_from_another_folder_without_install(tool, tmp_path):
    """From a folder other than the repo root, with edgesnn not installed, the script finds the
    package beside it (it used to end in ModuleNotFoundError: a traceback)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_BLOCK_EDITABLE)
    env = dict(os.environ, PYTHONPATH=str(site))
    probe = subprocess.run([sys.executable, "-c", "import edgesnn"], cwd=tmp_path, env=env, capture_output=True)
    if probe.returncode == 0:
        pytest.skip("edgesnn is installed as a regular package here: 'not installed' cannot be simulated")
    (tmp_path / "out.json").write_text("{}")
    p = subprocess.run([sys.executable, str(TOOLS / f"{tool}.py"), "--json", "out.json"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip() == (f"{tool}.py: error: --json: out.json already exists; pass --force to overwrite it "
                                f"(see {tool}.py --help)")  # one line: no usage block before it
    assert "Traceback" not in p.stderr
    assert (tmp_path / "out.json").read_text() == "{}"


_TOOLS_WITH_OPTIONS = sorted(p.stem for p in TOOLS.glob("*.py") if "tool_parser(" in p.read_text()
                             and p.stem != "tool_args")


def test_every_tool_with_options_parses_through_the_one_line_parser():
    """The tools printed argparse's usage block (3-7 lines) before each argument error."""
    assert len(_TOOLS_WITH_OPTIONS) >= 13, _TOOLS_WITH_OPTIONS
    for path in TOOLS.glob("*.py"):
        if path.stem != "tool_args":  # (whose tool_parser makes them)
            assert "argparse.ArgumentParser(" not in path.read_text(), path.name


@pytest.mark.parametrize("tool", _TOOLS_WITH_OPTIONS)
def test_a_bad_option_is_one_line(tool, tmp_path):
    p = subprocess.run([sys.executable, str(TOOLS / f"{tool}.py"), "--no-such-flag"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip() == (f"{tool}.py: error: unrecognized arguments: --no-such-flag (see {tool}.py --help)")


def test_validate_planner_failed_worker_is_one_line(monkeypatch, capsys):
    """A worker that fails prints its last error line (exit 1), not a traceback with the stderr."""
    vp = _load("validate_planner", monkeypatch)
    tb = "Traceback (most recent call last):\n  File \"x\", line 1\nRuntimeError: out of memory\n"
    monkeypatch.setattr(vp.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", tb))
    monkeypatch.setattr(sys, "argv", ["validate_planner.py"])
    monkeypatch.setattr("edgesnn.devices.torch_runtime_overhead", lambda: (0, "test"))
    assert vp.run_main(vp.main, ["--quick"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("validate_planner.py: error: worker mlp")
    assert err[0].endswith("failed: RuntimeError: out of memory")


def test_validate_planner_micro_batch_ratio_in_json(monkeypatch, tmp_path):
    """The printed whole-batch / micro-batch peak ratio is in the JSON, equal to the raw figures' ratio."""
    vp = _load("validate_planner", monkeypatch)
    peaks = {None: 300 << 20, 8: 120 << 20}

    def fake_run(spec):
        return dict(activation_bytes=10 << 20, peak_rss_bytes=peaks[spec["micro"]] + spec["T"], step_s=0.5)

    monkeypatch.setattr(vp, "run_fresh", fake_run)
    monkeypatch.setattr(vp, "predict", lambda spec, overhead: dict(activation_bytes=10 << 20, peak_bytes=110 << 20))
    monkeypatch.setattr("edgesnn.devices.torch_runtime_overhead", lambda: (0, "test"))
    out = tmp_path / "vp.json"
    vp.main(["--quick", "--micro-batch", "8", "--json", str(out)])
    doc = json.loads(out.read_text())
    assert doc["baseline"]
    assert len(doc["rows"]) == len(vp.QUICK)
    for r in doc["rows"]:
        assert r["whole_rss_x_of_parts"] == pytest.approx(r["whole_rss_meas"] / r["rss_meas"], rel=1e-12)
        assert r["rss_err_pct"] == pytest.approx(100 * (r["rss_pred"] - r["rss_meas"]) / r["rss_meas"], rel=1e-12)


def test_validate_planner_zero_measurement_is_a_failed_worker_line(monkeypatch, capsys):
    """A worker that measured 0 bytes (nothing saved: a broken measurement) ends with one line
    naming the row, exit 1, not a ZeroDivisionError traceback."""
    vp = _load("validate_planner", monkeypatch)
    monkeypatch.setattr(vp, "run_fresh", lambda spec: dict(activation_bytes=0, peak_rss_bytes=100 << 20, step_s=0.5))
    monkeypatch.setattr(vp, "predict", lambda spec, overhead: dict(activation_bytes=10 << 20, peak_bytes=110 << 20))
    monkeypatch.setattr("edgesnn.devices.torch_runtime_overhead", lambda: (0, "test"))
    assert vp.run_main(vp.main, ["--quick"], prog="validate_planner.py") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("validate_planner.py: error: ")
    assert "activation: the worker measured 0 bytes (expected > 0)" in err[0]


def _phases_result(measured_peak: int) -> dict:
    shape = {"unfused_pool": False, "pool_autograd": False}
    return {"model": "convnet", "neuron": "lif", "T": 2, "batch": 4, "chunks": [1, 2], "holds": [0, 0],
            "keeps": [0, 0], "unfused_pool": [False, False], "predicted_peak": 3_000_000,
            "predicted_phase": "backward block1", "measured_peak": measured_peak,
            "predicted": {"forward block0": 1_000_000, "forward block1": 2_000_000, "backward block1": 3_000_000},
            "measured": {"forward block0": 800_000, "backward block1": 2_500_000}, "a_bytes": [1, 2],
            "shapes": [shape, shape]}


def test_memopt_phases_json_names_baseline_and_holds_errors(monkeypatch, tmp_path, capsys):
    """The JSON rows name their baseline (the measurement), the unit, and the printed errors,
    recomputable from the raw bytes beside them; a zero measurement is an empty error, not a crash."""
    mp = _load("memopt_phases", monkeypatch)
    results = iter([_phases_result(2_400_000)])
    monkeypatch.setattr(mp, "run_fresh", lambda *a, **k: next(results))
    out = tmp_path / "mp.json"
    assert mp.main(["--model", "convnet", "-T", "2", "--batch", "4", "--json", str(out)]) == 0
    (r,) = json.loads(out.read_text())
    assert r["baseline"].startswith("measured") and r["unit"] == "bytes"
    assert r["err_pct"] == pytest.approx(100 * (r["predicted_peak"] - r["measured_peak"]) / r["measured_peak"])
    assert set(r["phase_err_pct"]) == set(r["measured"])
    for k, e in r["phase_err_pct"].items():
        assert e == pytest.approx(100 * (r["predicted"][k] - r["measured"][k]) / r["measured"][k])
    assert "+25.0%" in capsys.readouterr().out  # the step's printed error: (3.0 - 2.4) / 2.4
    zero = mp.annotate(_phases_result(0))
    assert zero["err_pct"] is None
    mp.print_result(_phases_result(0))


def test_bench_device_accumulate_json_names_baseline(monkeypatch, tmp_path):
    da = _load("bench_device_accumulate", monkeypatch)
    row = {"model": "mlp", "neuron": "lif", "T": 2, "batch": 16, "parts": 2, "part_batch": 8, "chunk": 1,
           "whole": {"peak_rss_mb": 90.0, "step_ms_median": 10.0}, "parts_run": {"peak_rss_mb": 60.0, "step_ms_median": 12.0},
           "small": {"peak_rss_mb": 55.0, "step_ms_median": 5.0}, "max_param_diff": 0.0, "max_param_change": 0.1,
           "peak_rss_ratio": 1.5, "step_time_ratio": 1.2}
    monkeypatch.setattr(da, "bench", lambda *a, **k: dict(row))
    out = tmp_path / "da.json"
    da.main(["-T", "2", "--batch", "16", "--parts", "2", "--steps", "2", "--models", "mlp", "--neurons", "lif",
             "--out", str(out)])
    doc = json.loads(out.read_text())
    assert doc["baseline"].startswith("whole")
    assert set(doc["ratios"]) == {"peak_rss_ratio", "step_time_ratio"}
    assert doc["rows"] == [row]


def _fake_variants(with_sj: bool):
    import torch

    def cheap(x):
        return x * 2.0

    def cheaper(x):
        return torch.relu(x)

    out = {"edgesnn LIF()": cheap, "edgesnn RevLIF()": cheaper}
    if with_sj:
        out["SpikingJelly LIFNode torch"] = cheap
    return out


@pytest.mark.parametrize("with_sj", [True, False])
def test_bench_call_overhead_baseline_only_when_it_ran(with_sj, monkeypatch, tmp_path):
    """The JSON names SpikingJelly as the baseline only when its row ran; the ratios are
    baseline us / row us of the stored figures."""
    co = _load("bench_call_overhead", monkeypatch)
    monkeypatch.setattr(co, "_variants", lambda: _fake_variants(with_sj))
    monkeypatch.setattr(co, "SHAPES", ((2, 1, 4),))
    out = tmp_path / "co.json"
    co.main(["--steps", "2", "--rounds", "1", "--json", str(out)])
    doc = json.loads(out.read_text())
    rows = doc["results"]["2x1x4"]
    if not with_sj:
        assert doc["baseline"] is None
        assert all("x_vs_sj" not in r for r in rows.values())
        return
    assert doc["baseline"] == "SpikingJelly LIFNode torch"
    for r in rows.values():
        assert r["x_vs_sj"] == pytest.approx(rows[doc["baseline"]]["us"] / r["us"], rel=1e-12)


def test_bench_kernels_names_no_baseline_for_a_missing_row(monkeypatch, tmp_path):
    """(p) without SpikingJelly: the JSON's public_form baseline is null (it named SpikingJelly)."""
    bk = _load("bench_kernels", monkeypatch)
    pub = {"edgesnn LIF()": {"ms": 1.0, "cpu_ms": 1.0, "page_faults": 0, "round_ms": [1.0]},
           "edgesnn RevLIF()": {"ms": 2.0, "cpu_ms": 2.0, "page_faults": 3, "round_ms": [2.0]}}
    monkeypatch.setattr(bk, "set_num_threads", lambda n: None)
    monkeypatch.setattr(bk, "stream_triad", lambda: 10.0)
    monkeypatch.setattr(bk, "bench_public_form", lambda *a, **k: {k_: dict(v) for k_, v in pub.items()})
    monkeypatch.setattr("numba.threading_layer", lambda: "test")
    out = tmp_path / "bk.json"
    bk.main(["--only-public", "--threads", "1", "--json", str(out)])
    doc = json.loads(out.read_text())
    assert doc["baseline"]["public_form"] is None
    assert doc["public_form"] == pub


def test_bench_device_runner_head_only_ratio_in_json(monkeypatch, tmp_path):
    """--head-only: the printed step-time ratio to the full fine-tune is stored in the row."""
    dr = _load("bench_device_runner", monkeypatch)
    import numpy as np

    def fake_export(model, art, *a, **k):
        Path(art).mkdir(parents=True, exist_ok=True)
        (Path(art) / "step.onnx").write_bytes(b"x")

    times = {"step": 20.0, "head": 5.0}

    def fake_runner(art, data, out, extra=(), threads=1):
        ms = times["head"] if art.name.startswith("head") else times["step"]
        return {"peak_rss_mb": 50.0, "step_ms_median": ms, "rss_after_session_mb": 40.0}

    eager = json.dumps({"step_ms_median": 30.0, "peak_rss_mb": 200.0})
    monkeypatch.setattr("edgesnn.export.onnx_step.export_onnx_step", fake_export)
    monkeypatch.setattr("edgesnn.checkpoint.save_checkpoint", lambda path, *a, **k: path)
    monkeypatch.setattr(dr, "_run_runner", fake_runner)
    monkeypatch.setattr(dr, "_digits", lambda: (np.zeros((64, 64), np.float32), np.zeros(64, np.int64)))
    monkeypatch.setattr(dr.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, eager + "\n", ""))
    rows = dr.sweep(["mlp"], [2], 0, 2, 4, 0.05, tmp_path, log=lambda s: None, head_only=True)
    assert rows
    for r in rows:
        assert r["head_only_step_x_of_full"] == pytest.approx(
            r["onnx_step_head_only"]["step_ms_median"] / r["onnx_step"]["step_ms_median"])


@pytest.mark.parametrize("argv, flag", [
    (["--rows", "lif"], "--rows"),
    (["-T", "64"], "-T"),
    (["-T64"], "-T"),
    (["--batch=4"], "--batch"),
    (["--network", "--quick"], "--quick"),
    (["--network", "--backend", "numba"], "--backend"),
])
def test_validate_planner_refuses_flags_its_mode_ignores(argv, flag, monkeypatch, capsys):
    """A flag the chosen mode never reads (``--rows`` without ``--network``, ``--quick`` with it) is a
    one-line usage error before anything runs; it used to be ignored, measuring other rows than asked."""
    vp = _load("validate_planner", monkeypatch)
    monkeypatch.setattr(vp, "run_fresh", lambda spec: pytest.fail("measured despite an unused flag"))
    monkeypatch.setattr(vp, "network_main", lambda args: pytest.fail("measured despite an unused flag"))
    with pytest.raises(SystemExit) as exc:
        vp.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert flag in err and "not used" in err and ("without --network" in err) == ("--network" not in argv)


def test_bench_network_memory_runs_a_repeated_t_or_row_once(monkeypatch):
    """``-T 8 8`` / ``--rows x x`` measure each row once per T (they ran every row twice)."""
    bn = _load("bench_network_memory", monkeypatch)
    calls = []

    def fake_child(args, mmap_threshold=True):
        calls.append(tuple(args[:3]))
        return dict(row=args[1], T=int(args[2]), peak_bytes=100 << 20, step_s=1.0)

    monkeypatch.setattr(bn, "_run_child", fake_child)
    monkeypatch.setattr(bn, "timing_rounds", lambda T, budget, rows, common, rounds: {})
    assert bn.main(["-T", "8", "8", "--rows", "sj_bptt", "sj_bptt", "--no-check"]) == 0
    assert calls == [("--worker", "sj_bptt", "8")]


def test_public_form_reports_page_faults_per_step(monkeypatch):
    """(p) on a tiny layer: every row has its wall and CPU time and its median minor page faults per
    step (a count the process's rusage gives, >= 0)."""
    cases = _load("kernel_bench_cases", monkeypatch)
    out = cases.bench_public_form(4, 2, 64, reps=2, rounds=1)
    assert {"edgesnn LIF()", "edgesnn RevLIF()"} <= set(out)
    for row in out.values():
        assert row["ms"] > 0 and row["cpu_ms"] >= 0
        assert row["page_faults"] >= 0 and float(2 * row["page_faults"]).is_integer()  # a median of counts
