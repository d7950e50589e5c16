"""`edgesnn plan` and device profiles refuse bad input in one line, before planning or writing anything."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgesnn import cli, devices
from edgesnn.planner.cli import _fmt, parse_bytes

PI = ["plan", "--model", "mlp", "--input", "784", "-T", "4", "--device", "raspberry-pi-4-4gb"]
PROFILE = dict(name="board", memory_bytes=4 * 2**30, reserved_bytes=2**29, runtime_overhead_bytes=2**28,
               bandwidth_gbs=10.0, cores=4)


@pytest.fixture(autouse=True)
def only_planner(monkeypatch):
    # other sub-commands are developed in parallel; the planner's must work on its own
    monkeypatch.setattr(cli, "SUBCOMMANDS", ["edgesnn.planner.cli"])


def _run(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(err: str, flag: str) -> None:
    assert err.startswith(f"edgesnn plan: error: {flag}"), err
    assert err.count("\n") == 1 and "usage:" not in err and "Traceback" not in err, err


def _profile(tmp_path: Path, filename: str = "board.json", **changes) -> Path:
    f = tmp_path / filename
    f.write_text(json.dumps({**PROFILE, **changes}))
    return f


# 1. --plot without matplotlib: refused up front, nothing written

def test_plot_without_matplotlib_is_refused_before_planning(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    js, png = tmp_path / "nm.json", tmp_path / "nm.png"
    rc, out, err = _run([*PI, "--json", js, "--plot", png], capsys)
    assert rc == 2
    _one_line_error(err, "--plot: needs matplotlib (pip install matplotlib)")
    assert "batch:" not in out  # refused before planning
    assert list(tmp_path.iterdir()) == []  # neither the plan nor a temp file


def test_plot_with_a_broken_matplotlib_package_is_one_line(tmp_path):
    fake = tmp_path / "fake" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("matplotlib is broken here")\n')
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "edgesnn", *PI, "--json", "nm.json", "--plot", "nm.png"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "edgesnn plan: error: --plot: needs matplotlib (pip install matplotlib)\n"
    assert list(work.iterdir()) == []


# 2. --plot writes the format its suffix names; other suffixes are refused

def test_plot_format_follows_the_suffix(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    magic = {"pdf": b"%PDF-", "svg": b"<?xml", "png": b"\x89PNG\r\n\x1a\n"}
    for fmt, head in magic.items():
        out = tmp_path / f"mem.{fmt.upper() if fmt == 'svg' else fmt}"
        rc, _, err = _run([*PI, "--plot", out], capsys)
        assert rc == 0, err
        assert out.read_bytes().startswith(head)
    assert b"<svg" in (tmp_path / "mem.SVG").read_bytes()
    js = tmp_path / "p.json"
    for bad in ("mem.jpg", "mem"):
        rc, _, err = _run([*PI, "--json", js, "--plot", tmp_path / bad], capsys)
        assert rc == 2
        _one_line_error(err, "--plot: expected a file ending in .png, .pdf, .svg")
        assert not js.exists() and not (tmp_path / bad).exists()


# 3. --memopt refuses batch 1 for a BatchNorm model, given or found

def test_memopt_refuses_batch_one_with_batchnorm(tmp_path, capsys, monkeypatch):
    js = tmp_path / "m.json"
    conv = ["plan", "--memopt", "--model", "convnet", "--input", "1,28,28", "-T", "4", "--device", "raspberry-pi-4-4gb",
            "--json", js]
    rc, out, err = _run([*conv, "--batch", "1"], capsys)
    assert rc == 2
    _one_line_error(err, "--batch: a model with BatchNorm trains on batches of at least 2 samples")
    assert "batch:" not in out and not js.exists()
    import edgesnn.memopt.optimize as optimize

    monkeypatch.setattr(optimize, "largest_batch", lambda *a, **k: (1, object()))  # only batch 1 fits
    rc, out, err = _run(conv, capsys)
    assert rc == 2
    _one_line_error(err, "--device raspberry-pi-4-4gb (memory - reserved): only batch 1 fits")
    assert "BatchNorm" in err and not js.exists()
    rc, _, err = _run([*conv, "--budget", "3GiB"], capsys)
    _one_line_error(err, "--budget: only batch 1 fits in 3.00 GiB")


# 4. --budget above the device's memory; big numbers

def test_budget_above_device_memory_is_refused(tmp_path, capsys, monkeypatch):
    js = tmp_path / "p.json"
    for budget in ("5GiB", "99999999999999999999999999TiB", "9" * 400):
        rc, out, err = _run([*PI, "--budget", budget, "--max-batch", "100000000000000", "--json", js], capsys)
        assert rc == 2
        _one_line_error(err, "--budget: ")
        assert "more than the memory of device raspberry-pi-4-4gb (4.00 GiB)" in err
        assert "batch:" not in out and not js.exists()
    # the whole memory is accepted; every byte count printed is a whole number, the peak within it
    rc, out, err = _run([*PI, "--budget", "4GiB", "--max-batch", "100000000000000", "--json", js], capsys)
    assert rc == 0, err
    other = next(line for line in out.splitlines() if line.startswith("other"))
    assert other.split()[3].isdigit()
    plan = json.loads(js.read_text())
    assert plan["predicted"]["peak_bytes"] <= plan["budget_bytes"] == 4 * 2**30
    # the same rule for the measured host
    monkeypatch.setattr(devices, "_read_meminfo", lambda: {"MemTotal": 2 * 2**30, "MemAvailable": 2**30})
    rc, _, err = _run([*PI[:-1], "auto", "--budget", "3GiB"], capsys)
    assert rc == 2
    _one_line_error(err, "--budget: 3.00 GiB is more than the memory of device auto (2.00 GiB)")


def test_sizes_parse_exactly_and_print_readably():
    assert parse_bytes("99999999999999999999999999TiB") == 99999999999999999999999999 * 2**40
    assert parse_bytes("1.5GB") == 1_500_000_000 and parse_bytes("0.5KiB") == 512
    assert parse_bytes("1PiB") == 2**50
    assert _fmt(3 * 2**40) == "3.00 TiB" and _fmt(512) == "512 B"
    assert _fmt(10**400).endswith(" EiB") and "e+" in _fmt(10**400)


def test_a_byte_count_must_be_whole_and_lists_have_no_empty_items(capsys):
    """``--budget 2.5`` was planned for 2 bytes and ``--hidden 128,`` for a one-layer MLP (the empty item
    dropped); a unit's fraction rounds down as before (1.3GiB)."""
    with pytest.raises(ValueError, match=r"^--budget: expected a whole number of bytes .*got '2.5'$"):
        parse_bytes("2.5")
    assert parse_bytes("1.3GiB") == int(1.3 * 2**30)
    for flag, value in (("--hidden", "128,"), ("--groups", "2,,4")):
        rc, _, err = _run([*PI, flag, value], capsys)
        assert rc == 2
        _one_line_error(err, f"{flag}: expected comma-separated integers")
    from edgesnn.planner.datasets import dataset_memory

    for bad in ("", [], False):
        with pytest.raises(ValueError, match=r"^--dataset-bytes: expected a size >= 0"):
            dataset_memory(None, 4, (784,), dataset_bytes=bad)


# 5. integer flags: one line, no usage dump

@pytest.mark.parametrize("flags,name", [
    (["-T", "abc"], "--timesteps"), (["-T", "0"], "--timesteps"), (["--max-batch", "1.5"], "--max-batch"),
    (["--classes", "x"], "--classes"), (["--classes", "1"], "--classes"),
])
def test_int_flags_are_one_line_errors(flags, name, capsys):
    argv = [*PI]
    if flags[0] == "-T":
        argv[argv.index("-T") + 1] = flags[1]
    else:
        argv += flags
    rc, _, err = _run(argv, capsys)
    assert rc == 2
    _one_line_error(err, f"{name}: expected")
    assert repr(flags[1]) in err


# 6. device profiles

@pytest.mark.parametrize("changes,needle", [
    (dict(reserved_bytes=5 * 2**30), "reserved_bytes (5368709120) exceeds memory_bytes (4294967296)"),
    (dict(reserved_bytes=4 * 2**30), "reserved_bytes (4294967296) equals memory_bytes"),
    (dict(reserved_bytes=2**31, runtime_overhead_bytes=2**31), "leave nothing of memory_bytes"),
    (dict(memory_bytes=2**60), "memory_bytes must be an integer from 1 to"),
    (dict(memory_bytes=4.0 * 2**30), "memory_bytes must be an integer"),
    (dict(cores=0), "cores must be an integer from 1"),
    (dict(runtime_overhead_bytes=-1), "runtime_overhead_bytes must be an integer from 0"),
    (dict(bandwidth_gbs=1e-320), "bandwidth_gbs must be a number of GB/s from 0.001"),
    (dict(bandwidth_gbs=1e9), "bandwidth_gbs must be a number"),
    (dict(bandwidth_gbs=True), "bandwidth_gbs must be a number"),
    (dict(name=5), "name must be a non-empty string"),
    (dict(name=None), "name must be a non-empty string"),
    (dict(name=[1, 2]), "name must be a non-empty string"),
    (dict(name="  "), "name must be a non-empty string"),
    (dict(accelerator=3), "accelerator must be a string"),
    (dict(unified_memory="yes"), "unified_memory must be true or false"),
    (dict(sources={"x": 1}), "sources must be a JSON object of strings"),
])
def test_invalid_profile_fields_are_refused_at_load(tmp_path, changes, needle):
    f = _profile(tmp_path, **changes)
    with pytest.raises(ValueError) as exc:
        devices.load_device(str(f))
    assert needle in str(exc.value) and str(f) in str(exc.value)


@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "NaN"])
def test_non_finite_bandwidth_is_refused(tmp_path, literal):
    f = tmp_path / "b.json"
    f.write_text(json.dumps(PROFILE).replace('"bandwidth_gbs": 10.0', f'"bandwidth_gbs": {literal}'))
    assert literal in f.read_text()
    with pytest.raises(ValueError, match="bandwidth_gbs must be a number of GB/s"):
        devices.load_device(str(f))


def test_bad_profile_is_one_line_and_names_the_file_not_budget(tmp_path, capsys):
    f = _profile(tmp_path, reserved_bytes=5 * 2**30)
    for extra in ([], ["--memopt"]):
        rc, _, err = _run([*PI[:-1], f, *extra], capsys)
        assert rc == 2
        _one_line_error(err, f"device: {f}: reserved_bytes")
        assert "--budget" not in err
    # a valid profile too small for the runtime: --memopt blames the device, since no --budget was given
    tiny = _profile(tmp_path, "tiny.json", memory_bytes=2**30, reserved_bytes=2**29, runtime_overhead_bytes=2**29 - 2**20)
    rc, _, err = _run([*PI[:-1], tiny, "--memopt"], capsys)
    assert rc == 2
    _one_line_error(err, "--device board (memory - reserved): 512.00 MiB does not hold the runtime")


def test_unreadable_profiles_name_the_file(tmp_path, capsys, monkeypatch):
    f = tmp_path / "latin1.json"
    f.write_bytes(b'{"name": "caf\xe9"}')
    with pytest.raises(ValueError, match=f"device: {f} is not valid UTF-8 JSON"):
        devices.load_device(str(f))
    rc, _, err = _run([*PI[:-1], tmp_path], capsys)
    assert rc == 2
    _one_line_error(err, f"device: {tmp_path} is a directory; expected a JSON profile file")
    good = _profile(tmp_path)

    def denied(self, *a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(ValueError, match=f"device: cannot read {good} \\(Permission denied\\)"):
        devices.load_device(str(good))


def test_catalogue_names_are_case_insensitive(tmp_path, capsys, monkeypatch):
    _profile(tmp_path, "MyBoard.json", name="MyBoard")
    (tmp_path / "folder.json").mkdir()  # not a profile: not listed
    monkeypatch.setenv("EDGESNN_DEVICE_PATH", str(tmp_path))
    listed = devices.list_devices()
    assert "myboard" in listed and "folder" not in listed
    for spelling in ("MyBoard", "myboard", "MYBOARD"):
        assert devices.load_device(spelling).name == "MyBoard"
    rc, out, err = _run([*PI[:-1], "MyBoard"], capsys)
    assert rc == 0, err
    assert out.startswith("device: MyBoard")
    _profile(tmp_path, "myboard.json")
    with pytest.raises(ValueError, match="MyBoard.json and .*myboard.json name the same device 'myboard'"):
        devices.load_device("myboard")


# 7. no plan JSON holds Infinity / NaN

def test_non_finite_plan_values_are_never_written(tmp_path, capsys, monkeypatch):
    import edgesnn.planner.plan as plan_mod

    real = plan_mod.make_plan

    def poisoned(*a, **k):
        plan = real(*a, **k)
        plan.predicted["time_s"] = float("inf")
        return plan

    monkeypatch.setattr(plan_mod, "make_plan", poisoned)
    js = tmp_path / "p.json"
    rc, _, err = _run([*PI, "--json", js], capsys)
    assert rc == 2
    _one_line_error(err, "--json: the plan holds a non-finite number")
    assert not js.exists()
    monkeypatch.setattr(plan_mod, "make_plan", real)
    # --memopt writes its own document: same rule (a profile built in code skips the file checks)
    bad = devices.DeviceProfile(name="nan-board", memory_bytes=4 * 2**30, reserved_bytes=2**29,
                                runtime_overhead_bytes=2**28, bandwidth_gbs=float("nan"), cores=4)
    monkeypatch.setattr(devices, "load_device", lambda name: bad)
    rc, _, err = _run([*PI, "--memopt", "--json", js], capsys)
    assert rc == 2
    _one_line_error(err, "--json: the plan holds a non-finite number")
    assert not js.exists()


def test_plan_json_is_save_plans_text(tmp_path, capsys, monkeypatch):
    # one format: the CLI's --json file is byte for byte what save_plan writes for the same plan
    import edgesnn.planner.plan as plan_mod

    made = []
    real = plan_mod.make_plan
    monkeypatch.setattr(plan_mod, "make_plan", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    js = tmp_path / "cli.json"
    rc, _, err = _run([*PI, "--json", js], capsys)
    assert rc == 0, err
    ref = plan_mod.save_plan(made[0], tmp_path / "api.json")
    assert js.read_bytes() == ref.read_bytes()
    # the text comes from plan_text (a format change there reaches both writers)
    monkeypatch.setattr(plan_mod, "plan_text", lambda plan: '{"marker": 1}\n')
    rc, _, err = _run([*PI, "--json", js, "--force"], capsys)
    assert rc == 0, err
    assert js.read_text() == '{"marker": 1}\n'


def test_cuda_backend_on_a_board_without_a_cuda_gpu_is_refused(capsys):
    """``--backend cuda`` for a Raspberry Pi planned without Numba's runtime bytes (a peak 120 MiB low)
    and wrote a plan ``edgesnn train --plan`` then refused on the CPU; a CUDA board is planned."""
    rc, out, err = _run(PI + ["--backend", "cuda"], capsys)
    assert rc == 2 and out == ""
    _one_line_error(err, "--backend cuda: device raspberry-pi-4-4gb has no CUDA GPU")
    rc, out, err = _run(["plan", "--model", "mlp", "--input", "784", "-T", "4", "--device", "jetson-orin-nano-8gb",
                         "--backend", "cuda", "--batch", "8"], capsys)
    assert rc == 0 and "peak" in out, err
