"""CUDA kernels against the Numba CPU kernels.

* under the simulator (``NUMBA_ENABLE_CUDASIM=1`` set before numba is imported, so in a
  subprocess; tiny sizes): always, in CI;
* on a real GPU (``torch.cuda.is_available()``): larger sizes, CUDA tensors through
  ``cuda.as_cuda_array`` on PyTorch's current stream, and the dispatch path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _has(mod: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


pytestmark = pytest.mark.skipif(not _has("numba_cuda"), reason="numba-cuda not installed (pip install -e .[dev])")


def _run(kind: str, sim: bool):
    env = dict(os.environ)
    if sim:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    else:
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, os.path.join(HERE, "_cuda_compare.py"), kind], capture_output=True, text=True,
                         env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def _check(report):
    assert report["results"]
    for r in report["results"]:
        assert r["fwd_equal"], r
        assert r["grad_rel"] <= 1e-5, r
        if r["op"] == "revlif":
            assert r["v0_rec_equal"], r
            if r["mode"] == "exact":
                assert r["v0_rec_exact"], r
        if r["op"] == "expanded":  # an input repeated over T: read in place, bit for bit the contiguous run
            assert r["in_place"] and r["grad_equal"], r
    assert any(r.get("spikes", 0) > 0 for r in report["results"] if r["op"] == "lif")


def test_cuda_kernels_under_simulator():
    report = _run("sim", sim=True)
    assert report["simulator"] is True
    _check(report)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_kernels_on_gpu():
    report = _run("gpu", sim=False)
    assert report["simulator"] is False
    _check(report)
