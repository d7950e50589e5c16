"""Sizes too large for the machine (T, batch, widths from flags or a checkpoint): one line, never a
traceback or a doomed allocation. Nothing here allocates much: refusals come before any buffer,
and the command lines that could allocate on older code run in a subprocess under RLIMIT_AS."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from _address_limit import LIMIT_AFTER_IMPORTS  # tests/ helper (pytest puts tests/ on sys.path)
from edgesnn import cli, memory_guard
from edgesnn.memory_guard import check_fits_in_memory, is_out_of_memory, is_size_overflow, shape_bytes

ROOT = Path(__file__).resolve().parents[1]


def _run_limited(args, cwd) -> subprocess.CompletedProcess:
    """``python -m edgesnn ARGS`` under RLIMIT_AS = its imports + 3 GiB (so an attempted huge buffer fails at once)."""
    code = LIMIT_AFTER_IMPORTS + textwrap.dedent(f"""
        import sys
        from edgesnn.cli import main
        sys.exit(main({list(args)!r}))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _checkpoint(path: Path, timesteps: int) -> Path:
    """A small mlp checkpoint whose model_config says ``timesteps`` (T does not change the weights)."""
    from edgesnn.checkpoint import save_checkpoint
    from edgesnn.models import build_model

    model = build_model("mlp", (64,), 10, 4, "lif", hidden=(16,))
    cfg = dict(model.config, timesteps=timesteps)
    save_checkpoint(path, cfg, model.state_dict())
    return path


# ----------------------------------------------------------------------------- the shared helper

def test_check_fits_in_memory_refuses_only_above_physical_memory(monkeypatch):
    monkeypatch.setattr(memory_guard, "physical_memory", lambda: 1000)
    check_fits_in_memory(1000, "x")  # exactly what the machine has: fits
    with pytest.raises(ValueError, match=r"^--timesteps 9: the input needs 1001 bytes, but this machine has 1000 "
                                         r"bytes of memory; see edgesnn plan$"):
        check_fits_in_memory(1001, "--timesteps 9: the input", "see edgesnn plan")
    monkeypatch.setattr(memory_guard, "physical_memory", lambda: None)  # unknown: nothing refused
    check_fits_in_memory(10**30, "x")


def test_shape_bytes_never_overflows():
    assert shape_bytes((2**40, 2**40, 2**40), 4) == 2**122  # a NumPy int64 product would wrap


def test_physical_memory_is_the_machines():
    want = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert memory_guard.physical_memory() == want


def test_failure_kinds_are_narrow():
    alloc = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                         "you tried to allocate 16384000000000 bytes. Error code 12 (Cannot allocate memory)")
    assert is_out_of_memory(alloc) and is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert is_size_overflow(TypeError("empty(): argument 'size' failed to unpack the object at pos 2 with error "
                                      "\"Overflow when unpacking long long"))
    assert is_size_overflow(TypeError("empty(): argument 'size' failed to unpack the object at pos 2 with error "
                                      "\"Overflow when unpacking long\""))  # torch 2.5's wording
    assert not is_size_overflow(OverflowError("math range error"))  # float math, not a size
    assert not is_size_overflow(TypeError("unsupported operand type(s)"))


# ----------------------------------------------------------------------------- the command line's top level

def _plan_raising(monkeypatch, exc: BaseException):
    """``edgesnn plan`` whose work raises ``exc``."""
    import edgesnn.planner.cli as plan_cli

    def boom(args):
        raise exc

    monkeypatch.setattr(plan_cli, "run", boom)
    return cli.main(["plan", "--model", "mlp", "--input", "64", "--timesteps", "4"])


def test_cli_allocation_failure_is_one_line(monkeypatch, capsys):
    exc = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                       "tried to allocate 16384000000000 bytes. Error code 12 (Cannot allocate memory)")
    assert _plan_raising(monkeypatch, exc) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("edgesnn plan: error: out of memory: a buffer of 16384000000000 bytes (14.90 TiB) needs "
                           "more memory than this machine has; lower --batch/--timesteps"), line


def test_cli_memory_error_is_one_line(monkeypatch, capsys):
    assert _plan_raising(monkeypatch, MemoryError()) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("edgesnn plan: error: out of memory: edgesnn plan needs more memory than this machine has")


def test_cli_other_runtime_errors_keep_their_traceback(monkeypatch):
    with pytest.raises(RuntimeError, match="a bug"):
        _plan_raising(monkeypatch, RuntimeError("a bug"))
    with pytest.raises(TypeError, match="a bug"):
        _plan_raising(monkeypatch, TypeError("a bug"))


def test_plan_input_past_64_bits_is_one_line(capsys):
    # the model's first layer would take 2**96 inputs: torch's sizes overflow (no allocation is tried)
    assert cli.main(["plan", "--model", "mlp", "--input", "4294967296,4294967296,4294967296", "--timesteps", "4"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("edgesnn plan: error: a size is too large") and "2**63" in line, line


# ----------------------------------------------------------------------------- edgesnn train

def test_train_huge_timesteps_refused_before_allocating(tmp_path):
    proc = _run_limited(["train", "--timesteps", str(10**9), "--epochs", "1", "--no-progress"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = _one_line(proc.stderr)
    assert line.startswith("edgesnn train: error: --timesteps 1000000000 with --batch-size 64:"), line
    assert f"needs {shape_bytes((10**9, 64, 64))} bytes" in line and "edgesnn plan" in line, line


def test_train_batch_bound_by_the_dataset_and_what_fits_passes():
    from edgesnn.training.flag_checks import check_batch_fits_memory
    from edgesnn.training.loop import TrainConfig

    have = memory_guard.physical_memory()
    # digits holds 1348 training samples: a batch of 10**12 computes 1348 at once, which fits at T = 4
    check_batch_fits_memory(TrainConfig(dataset="digits", model="mlp", timesteps=4, batch_size=10**12), (64,), 10)
    T = have // (4 * 1348 * 64) + 1  # just past the machine with the dataset's 1348 samples
    with pytest.raises(ValueError, match=r"--batch-size 1000000000000: .* B = 1348 \(digits has 1348 training"):
        check_batch_fits_memory(TrainConfig(dataset="digits", model="mlp", timesteps=T, batch_size=10**12), (64,), 10)
    check_batch_fits_memory(TrainConfig(dataset="digits", model="mlp", timesteps=T - 2, batch_size=10**12), (64,), 10)


def test_train_batch_check_counts_ranks_as_the_run_does(monkeypatch):
    """The per-rank sample count comes from the same WORLD_SIZE reading as the run: 2 ranks split
    digits' 1348 samples, and a malformed value is refused naming the variable (it was taken as 1)."""
    from edgesnn.training.flag_checks import check_batch_fits_memory
    from edgesnn.training.loop import TrainConfig

    T = memory_guard.physical_memory() // (4 * 674 * 64) + 1  # just past the machine with 674 samples
    cfg = TrainConfig(dataset="digits", model="mlp", timesteps=T, batch_size=10**12)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match=r"B = 674 \(digits has 674 training samples per rank\)"):
        check_batch_fits_memory(cfg, (64,), 10)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match=r"^distributed: environment variable WORLD_SIZE='two' is not an integer$"):
        check_batch_fits_memory(cfg, (64,), 10)


# ----------------------------------------------------------------------------- edgesnn export

def test_export_traced_formats_refuse_a_checkpoint_T_past_memory(tmp_path):
    ck = _checkpoint(tmp_path / "big.ckpt", 10**9)
    proc = _run_limited(["export", "--checkpoint", str(ck), "--format", "onnx", "--out", str(tmp_path / "m.onnx")],
                        tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = _one_line(proc.stderr)
    assert "the model's T = 1000000000 with batch 2" in line and f"needs {shape_bytes((10**9, 2, 64))} bytes" in line
    assert not (tmp_path / "m.onnx").exists()


def test_export_onnx_step_refuses_T_past_the_onnx_limit(tmp_path):
    from edgesnn.export.prepare import ExportError, model_from_checkpoint
    from edgesnn.export.step_program import build_step_program

    model, _ = model_from_checkpoint(_checkpoint(tmp_path / "big.ckpt", 10**9))
    with pytest.raises(ExportError, match=r"^timesteps: the model's T = 1000000000 in chunks of 1 .* 2 GiB limit"):
        build_step_program(model, 8)


def test_export_onnx_step_refuses_a_batch_past_memory(tmp_path):
    from edgesnn.export.prepare import ExportError, model_from_checkpoint
    from edgesnn.export.step_program import build_step_program

    model, _ = model_from_checkpoint(_checkpoint(tmp_path / "ck.ckpt", 4))
    with pytest.raises(ExportError, match=rf"^batch_size {10**15}: the example input \[B, 64\] float32 needs "):
        build_step_program(model, 10**15)
