"""The tools' own checks (audit of tools/): a measured-peaks file with a malformed row, flags that
contradict each other or that the chosen mode ignores, a growth check with nothing grown, and the
CUDA check script's results folder and exit status. Nothing is measured: the scripts stop at their
checks, or the measurement is monkeypatched."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from test_tools_audit import _load

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"


@pytest.mark.parametrize("row, where, detail", [
    ({"peak_bytes": 5, "batch": 8}, "results[0].row", "expected a row name, missing"),
    ({"row": "lif", "T": 8, "batch": 8, "peak_bytes": "5"}, "results[0].peak_bytes",
     'expected a whole number of bytes, got "5"'),
    ({"row": "lif", "T": 8, "batch": 8, "peak_bytes": None}, "results[0].peak_bytes",
     "expected a whole number of bytes, got null"),
    ({"row": "lif", "T": 0, "batch": 8, "peak_bytes": 5}, "results[0].T", "expected a whole number > 0, got 0"),
])
def test_validate_planner_names_a_malformed_measured_row(row, where, detail, tmp_path, monkeypatch, capsys):
    """Such rows ended in a KeyError / TypeError traceback."""
    vp = _load("validate_planner", monkeypatch)
    f = tmp_path / "bench.json"
    f.write_text(json.dumps({"results": [row]}))
    assert vp.run_main(vp.main, ["--network", "-T", "8", "--rows", "lif", "--from-json", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--from-json: {f}: {where}: {detail}" in err[0]


def test_validate_planner_names_a_directory_as_measured_peaks(tmp_path, monkeypatch, capsys):
    vp = _load("validate_planner", monkeypatch)
    assert vp.run_main(vp.main, ["--network", "-T", "8", "--rows", "lif", "--from-json", str(tmp_path)]) == 2
    assert f"--from-json: {tmp_path} is a directory" in capsys.readouterr().err  # it said "no such file"


def test_validate_planner_calibrate_refuses_table_flags_and_writes_its_json(tmp_path, monkeypatch, capsys):
    """``--calibrate --quick --micro-batch 8 --json F`` exited 0 with no file: the three were ignored."""
    vp = _load("validate_planner", monkeypatch)
    monkeypatch.setattr(vp, "run_fresh", lambda spec: {"peak_rss_bytes": 300 * 2**20})
    monkeypatch.setattr(vp, "predict", lambda spec, overhead: {"peak_bytes": 2**20})
    out = tmp_path / "cal.json"
    with pytest.raises(SystemExit) as exc:
        vp.main(["--calibrate", "--quick", "--micro-batch", "8", "--json", str(out)])
    assert exc.value.code == 2 and not out.exists()
    assert "--quick, --micro-batch: not used with --calibrate" in capsys.readouterr().err
    assert vp.main(["--calibrate", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["measured_overhead_bytes"] == 299 * 2**20 and data["baseline"].startswith("the planner's")
    assert data["ratio"] == pytest.approx(data["measured_overhead_bytes"] / data["planner_overhead_bytes"])


@pytest.mark.parametrize("argv, said", [
    (["--only-public", "--no-public"], "--only-public with --no-public"),
    (["--only-on", "--no-on"], "--only-on with --no-on"),
    (["--only-public", "--only-layer"], "--only-layer, --only-public: each runs one part alone"),
])
def test_bench_kernels_refuses_contradicting_parts(argv, said, monkeypatch, capsys):
    """``--only-public --no-public`` ran everything but the public form (and exited 0)."""
    bk = _load("bench_kernels", monkeypatch)
    monkeypatch.setattr(bk, "stream_triad", lambda: pytest.fail("measured despite contradicting flags"))
    with pytest.raises(SystemExit) as exc:
        bk.main(argv)
    assert exc.value.code == 2 and said in capsys.readouterr().err


def _rows(lif, revlif):
    return [{"model": "mlp", "neuron": n, "T": T, "onnx_step": {"peak_rss_mb": mb}}
            for n, pair in (("lif", lif), ("revlif", revlif)) for T, mb in zip((8, 64), pair)]


@pytest.mark.parametrize("lif, revlif, passed", [
    ((100.4, 100.0), (100.1, 100.0), None),   # neither grew: it passed ("RevLIF did not grow")
    ((103.0, 100.0), (100.0, 100.0), None),   # LIF shrank: it passed
    ((100.0, 140.0), (100.0, 100.0), True),   # LIF grew, RevLIF did not
    ((100.0, 140.0), (100.0, 120.0), False),  # 2x: below the 4x target
])
def test_bench_device_runner_growth_check_needs_lif_to_grow(lif, revlif, passed, monkeypatch):
    bdr = _load("bench_device_runner", monkeypatch)
    figures = []
    (ok, line), = bdr.sweep_checks(_rows(lif, revlif), figures)
    assert ok is passed and figures[0]["passed"] is passed
    assert ("not checked" in line) == (passed is None)


def _cuda_checks(tmp_path, *args, gpu_ok: bool):
    """``tools/run_cuda_checks.sh`` with a stand-in ``nvidia-smi`` (failing, or naming a GPU) and a
    stand-in Python that records its calls and fails."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + ("echo 'name\nStandInGPU'\n" if gpu_ok else "echo 'no devices' >&2; exit 9\n"))
    py = bin_dir / "py"
    py.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'calls.txt'}\nexit 3\n")
    for f in (smi, py):
        f.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", OUT=str(tmp_path / "out"),
               PYTHON=str(py))
    return subprocess.run(["bash", str(TOOLS / "run_cuda_checks.sh"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_run_cuda_checks_without_a_gpu_fails_and_writes_nothing(tmp_path):
    p = _cuda_checks(tmp_path, gpu_ok=False)
    assert p.returncode == 1 and "found no GPU" in p.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "calls.txt").exists()


def test_run_cuda_checks_reports_failures_and_keeps_earlier_results(tmp_path):
    """It always exited 0 (no pipefail), and a second run replaced the first's results."""
    p = _cuda_checks(tmp_path, gpu_ok=True)
    assert p.returncode == 1 and "failed: warmup tests benchmark" in p.stderr
    assert (tmp_path / "out" / "gpu.txt").read_text().strip() == "name\nStandInGPU"
    (tmp_path / "out" / "gpu.txt").write_text("first run")
    p = _cuda_checks(tmp_path, gpu_ok=True)
    assert p.returncode == 2 and "gpu.txt exists" in p.stderr and "--force" in p.stderr
    assert (tmp_path / "out" / "gpu.txt").read_text() == "first run"
    p = _cuda_checks(tmp_path, "--force", gpu_ok=True)
    assert p.returncode == 1 and "StandInGPU" in (tmp_path / "out" / "gpu.txt").read_text()
    assert "--force" in (tmp_path / "calls.txt").read_text().splitlines()[-1]  # handed to bench_kernels
    assert _cuda_checks(tmp_path, "--bogus", gpu_ok=True).returncode == 2


@pytest.mark.parametrize("argv, said", [
    (["--chunk", "3"], "--chunk: expected a divisor of every --timesteps, got 3 (T 8, 32, 64)"),
    (["--timesteps", "8", "12", "--chunk", "8"], "--chunk: expected a divisor of every --timesteps, got 8 (T 12)"),
    (["--mode", "legacy", "--chunk", "4"], "--chunk: only used with --mode sweep"),
])
def test_bench_device_runner_chunk_is_checked(argv, said, monkeypatch, capsys):
    """``--chunk`` (the README's table was measured at K = 4, no option set it) divides every T."""
    bdr = _load("bench_device_runner", monkeypatch)
    monkeypatch.setattr(bdr, "sweep", lambda *a, **k: pytest.fail("measured despite a bad --chunk"))
    with pytest.raises(SystemExit) as exc:
        bdr.main(argv)
    assert exc.value.code == 2 and said in capsys.readouterr().err


def test_bench_network_memory_showcase_refuses_table_flags_and_a_board_too_small(tmp_path, monkeypatch, capsys):
    """``--showcase`` took --batch / --rows / --steps and ignored them, and a profile smaller than
    the parameters ended in "budget: expected a positive whole number of bytes ... got -5882744"."""
    pytest.importorskip("spikingjelly", reason="the showcase's VGG-11 is built of SpikingJelly layers")
    bnm = _load("bench_network_memory", monkeypatch)
    monkeypatch.setattr(bnm, "_run_child", lambda *a, **k: pytest.fail("measured despite a refused option"))
    with pytest.raises(SystemExit) as exc:
        bnm.main(["--showcase", "raspberry-pi-4-4gb", "--batch", "3", "--rows", "lif"])
    assert exc.value.code == 2
    assert "--batch, --rows: not used with --showcase" in capsys.readouterr().err
    small = tmp_path / "small.json"
    small.write_text(json.dumps(dict(name="small", memory_bytes=2**30, reserved_bytes=2**29 + 2**28,
                                     runtime_overhead_bytes=2**28 - 2**20, bandwidth_gbs=10.0, cores=4)))
    with pytest.raises(SystemExit) as exc:
        bnm.main(["--showcase", str(small)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--showcase: small leaves 1 MiB" in err and "parameters, gradients" in err


@pytest.mark.parametrize("peak_mib, fits", [(100, True), (3500, False)])
def test_bench_network_memory_showcase_says_whether_the_step_fits(peak_mib, fits, tmp_path, monkeypatch, capsys):
    """It printed the measured peak and exited 0 whatever it was (1.8x the budget on a small board)."""
    pytest.importorskip("spikingjelly", reason="the showcase's VGG-11 is built of SpikingJelly layers")
    bnm = _load("bench_network_memory", monkeypatch)

    def child(args, mmap_threshold=True):
        if args[0] == "--showcase-worker":
            return {"batch": 20, "activation_budget_bytes": 2**30, "peak_bytes": peak_mib * 2**20,
                    "predicted_peak_bytes": 90 * 2**20, "step_s": 1.0}
        return {"batch": int(args[args.index("--batch") + 1]), "peak_bytes": int(args[args.index("--batch") + 1]) * 2**20}

    monkeypatch.setattr(bnm, "_run_child", child)
    out = tmp_path / "s.json"
    assert bnm.main(["--showcase", "raspberry-pi-4-4gb", "-T", "4", "--json", str(out)]) == (0 if fits else 1)
    assert ("fits raspberry-pi-4-4gb: yes" if fits else "fits raspberry-pi-4-4gb: NO") in capsys.readouterr().out
    assert json.loads(out.read_text())["fits"] is fits


def test_device_finetune_demo_checks_the_runner_interpreter(tmp_path, monkeypatch, capsys):
    """``--python /bin/true`` passed the executable check, then ended in "No such file or directory:
    .../metrics.json", naming no option."""
    true = tmp_path / "true"
    true.write_text("#!/bin/sh\nexit 0\n")
    true.chmod(0o755)
    demo = _load("device_finetune_demo", monkeypatch)
    monkeypatch.setattr(demo, "run_one", lambda *a: pytest.fail("ran despite an interpreter that cannot run it"))
    with pytest.raises(SystemExit) as exc:
        demo.main(["--python", str(true)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"--python: {true} cannot run the device runner (exit status 0, no output)" in err


def test_bench_device_accumulate_checks_chunk_before_it_starts(monkeypatch, capsys):
    """``--chunk 4 -T 6`` printed the run's header, then failed inside the export with "chunk: ..."."""
    bda = _load("bench_device_accumulate", monkeypatch)
    monkeypatch.setattr(bda, "bench", lambda *a, **k: pytest.fail("ran despite a bad --chunk"))
    with pytest.raises(SystemExit) as exc:
        bda.main(["--chunk", "4", "-T", "6"])
    captured = capsys.readouterr()
    assert exc.value.code == 2 and "--chunk: expected a divisor of -T 6, got 4" in captured.err
    assert captured.out == ""


def test_bench_kernels_prints_a_small_ratio_with_its_digits(monkeypatch):
    """A ratio of 0.033 printed as "x0.0 vs SpikingJelly" (the JSON had the value)."""
    bk = _load("bench_kernels", monkeypatch)
    assert [bk._times(r) for r in (0.033, 0.5, 1.0, 5.34, 12.25)] == ["x0.033", "x0.5", "x1.0", "x5.3", "x12.2"]


def test_bench_network_memory_showcase_without_spikingjelly_is_one_line(monkeypatch, capsys):
    bnm = _load("bench_network_memory", monkeypatch)

    def no_sj(node, grouped=False):
        raise ModuleNotFoundError("No module named 'spikingjelly'", name="spikingjelly")

    monkeypatch.setattr(bnm, "build_vgg", no_sj)
    with pytest.raises(SystemExit) as exc:
        bnm.main(["--showcase", "raspberry-pi-4-4gb"])
    assert exc.value.code == 2 and "--showcase: needs SpikingJelly 2.0" in capsys.readouterr().err
