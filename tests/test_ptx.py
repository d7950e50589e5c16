"""Every CUDA kernel compiles to PTX for the Jetson compute capabilities (5.3 Nano, 7.2 Xavier,
8.7 Orin) with the cu12 12.6 toolchain (PTX ISA <= 8.5 for JetPack 6), in a process WITHOUT the
simulator, and ``ptxas -v`` reports no register spills and no float64 instructions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _has(mod: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


@pytest.mark.skipif(not (_has("numba_cuda") and _has("nvidia.cuda_nvcc")),
                    reason="needs numba-cuda and nvidia-cuda-nvcc-cu12==12.6.* (pip install -e .[dev])")
def test_ptx_compiles_for_jetson_without_spills():
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-m", "edgesnn.kernels.ptx_check", "5.3", "7.2", "8.7"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.stdout.strip(), res.stderr[-4000:]
    report = json.loads(res.stdout)
    kernels = {r["kernel"] for r in report}
    assert kernels == {"lif_fwd", "lif_bwd", "revlif_fwd", "revlif_bwd"}
    assert {r["cc"] for r in report} == {"5.3", "7.2", "8.7"}
    for r in report:
        assert r["target"] == "sm_" + r["cc"].replace(".", ""), r
        major, minor = map(int, r["ptx_version"].split("."))
        assert (major, minor) <= (8, 5), f"PTX ISA {r['ptx_version']} is newer than JetPack 6's CUDA 12.6 accepts: {r}"
        assert not r["uses_f64"], f"float64 instructions in {r['kernel']} (a Python float constant?)"
        assert "ptxas_rc" in r, "ptxas not found"
        assert r["ptxas_rc"] == 0, r
        assert r["spill_bytes"] == 0, r
        assert r["stack_bytes"] == 0, r
    assert res.returncode == 0, res.stderr[-4000:]


@pytest.mark.parametrize("args, sim, needle", [
    (["abc"], False, "argument cc: expected a compute capability MAJOR.MINOR such as 8.7, got 'abc'"),
    (["8"], False, "got '8'"),  # was int()'s / numba-cuda's traceback
    (["8.7"], True, "NUMBA_ENABLE_CUDASIM is set"),  # was check_ptx's RuntimeError traceback
])
def test_ptx_check_bad_input_is_one_line(args, sim, needle, monkeypatch, capsys):
    from edgesnn.kernels import ptx_check

    if sim:
        monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    else:
        monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    monkeypatch.setattr(ptx_check, "check_ptx", lambda ccs: pytest.fail("compiled despite bad input"))
    with pytest.raises(SystemExit) as e:
        ptx_check.main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err and err.count("\n") == 1, err
