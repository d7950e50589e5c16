"""Thread settings, second audit: a threading layer Numba cannot start is a one-line error naming
the setting (Numba's own is four lines, ``No threading layer could be loaded. HINT: ...``, and the
command lines printed all of them without saying which setting caused it).
A warning on the command line (``--threads`` above the cores) is one line of the command's own,
``edgesnn CMD: warning: ...``, not Python's ``<frozen runpy>:88: RuntimeWarning: ...``.

Each case runs in a fresh interpreter (Numba starts its threading layer once per process) with the
default kernel cache; none compiles a kernel (the layer starts before the first one runs).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgesnn.kernels import dispatch

ROOT = Path(__file__).resolve().parents[1]
_CLEARED = ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "PYTHONPATH")

pytestmark = pytest.mark.skipif(not dispatch.numba_available(), reason="needs Numba")

needs_no_tbb = pytest.mark.skipif(importlib.util.find_spec("tbb") is not None,
                                  reason="the tbb package is installed: Numba's tbb layer starts")


def _run(args: list, **env_vars: str) -> subprocess.CompletedProcess:
    """``python ARGS`` in a fresh interpreter in the repository root, with ``env_vars``."""
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    env["PYTHONPATH"] = str(ROOT)
    env.update(env_vars)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120,
                          cwd=str(ROOT))


_SET_THREADS = """
from edgesnn.kernels.config import set_num_threads
try:
    set_num_threads(1)
except ValueError as exc:
    print(type(exc).__name__, exc)
"""


@needs_no_tbb
def test_missing_tbb_layer_is_one_line_naming_the_variable():
    res = _run(["-c", _SET_THREADS], NUMBA_THREADING_LAYER="tbb")
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1, res.stdout
    assert lines[0].startswith("UsageError NUMBA_THREADING_LAYER='tbb': "), lines[0]
    assert "tbb" in lines[0].partition(": ")[2] and "workqueue" in lines[0], lines[0]


def test_unknown_layer_is_one_line_naming_the_variable():
    res = _run(["-c", _SET_THREADS], NUMBA_THREADING_LAYER="bogus")
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("UsageError NUMBA_THREADING_LAYER='bogus': "), res.stdout


def test_layer_set_in_code_is_named_as_such():
    code = "import numba\nnumba.config.THREADING_LAYER = 'bogus'\n" + _SET_THREADS
    res = _run(["-c", code])
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("UsageError numba.config.THREADING_LAYER='bogus': "), res.stdout


@needs_no_tbb
def test_cli_missing_tbb_layer_is_one_line():
    """``edgesnn warmup --threads 1`` (the layer starts at the thread setting, before any compiling)."""
    res = _run(["-m", "edgesnn", "warmup", "--threads", "1"], NUMBA_THREADING_LAYER="tbb")
    assert res.returncode == 2, res.stderr[-3000:]
    err = res.stderr.strip()
    assert "\n" not in err and err.startswith("edgesnn warmup: error: NUMBA_THREADING_LAYER='tbb': "), err


_KERNEL_AFTER_FAILURE = """
import torch
from edgesnn.nn import LIF
x = torch.randn(4, 2, 8)
for _ in range(2):  # the failed start is retried, and fails the same way
    try:
        LIF(backend="numba", step_mode="m")(x)
    except ValueError as exc:
        print(type(exc).__name__, str(exc).partition(":")[0])
print(torch.equal(LIF(backend="torch", step_mode="m")(x), LIF(backend="reference", step_mode="m")(x)))
"""


@needs_no_tbb
def test_kernel_call_with_missing_tbb_layer_is_one_line_each_time():
    res = _run(["-c", _KERNEL_AFTER_FAILURE], NUMBA_THREADING_LAYER="tbb")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines() == ["UsageError NUMBA_THREADING_LAYER='tbb'"] * 2 + ["True"], res.stdout


def test_a_warning_of_the_command_line_is_one_line_of_its_own(tmp_path):
    # `--threads` above the cores warns; it printed "<frozen runpy>:88: RuntimeWarning: set_num_threads(99): ..."
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    env["PYTHONPATH"] = str(ROOT)
    p = subprocess.run([sys.executable, "-m", "edgesnn", "train", "--threads", "99", "--epochs", "1", "--max-steps", "1"],
                       capture_output=True, text=True, env=env, timeout=300, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr[-2000:]
    warned = [ln for ln in p.stderr.splitlines() if "set_num_threads(99)" in ln]
    assert len(warned) == 1 and warned[0].startswith("edgesnn train: warning: set_num_threads(99): "), p.stderr[-2000:]
    assert "RuntimeWarning" not in p.stderr and "runpy" not in p.stderr
