"""README claims audit of "Backends and kernels" and "Memory planner": the claims found false, each
test failed on the code before its fix.

* ``NUMBA_NUM_THREADS`` "must be an integer >= 1 (otherwise a one-line error when the kernels
  load)": ``edgesnn train`` imported Numba in its cold-cache notice before the check, so
  ``NUMBA_NUM_THREADS=0`` ended with Numba's "Number of threads specified must be > 0." (naming no
  setting) and ``=x`` printed Numba's parse warning, a traceback in it, before the line.
* ``edgesnn plan``: a shape another model cannot take "is refused in one line": it named the
  internal ``in_shape`` (and an unknown ``--model`` the internal ``model``), not the flag.
* "~3 s for 50 layers with ``--groups 2,4``": the planner built a fresh RevLIF / LIF node for every
  cost query (82,000 for a 50-layer plan, two thirds of its time).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from edgesnn import cli
from edgesnn.models import build_model
from edgesnn.nn import LIF, RevLIF
from edgesnn.planner.memory_model import ChainModel
from edgesnn.planner.solver import plan_model

PLAN = ["plan", "-T", "4", "--batch", "8", "--device", "raspberry-pi-4-4gb"]


@pytest.fixture
def only_planner(monkeypatch):
    monkeypatch.setattr(cli, "SUBCOMMANDS", ["edgesnn.planner.cli"])


def _plan_error(argv, capsys) -> str:
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("value", ["0", "x"])
def test_cold_cache_notice_names_numba_num_threads(value, tmp_path):
    """The notice ``edgesnn train`` prints before the first kernel checks ``NUMBA_NUM_THREADS``
    before it imports Numba: the one-line error names the setting, and Numba says nothing first."""
    env = dict(os.environ, NUMBA_NUM_THREADS=value, NUMBA_CACHE_DIR=str(tmp_path))
    env.pop("EDGESNN_CACHE_DIR", None)
    code = ("from edgesnn.errors import UsageError\n"
            "from edgesnn.kernels.cli import compile_notice\n"
            "try:\n    compile_notice()\nexcept UsageError as e:\n    print('USAGE', e)\n")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert f"USAGE NUMBA_NUM_THREADS={value!r}: expected an integer >= 1" in r.stdout, (r.stdout, r.stderr)
    assert "could not be parsed" not in r.stderr, r.stderr


@pytest.mark.parametrize("model, shape", [("convnet", "64"), ("vgg11", "3,32")])
def test_plan_conv_model_shape_names_input(model, shape, capsys, only_planner):
    err = _plan_error([*PLAN, "--model", model, "--input", shape], capsys)
    assert err.startswith(f"edgesnn plan: error: --input: model '{model}' takes one sample as C,H,W"), err


def test_plan_unknown_model_names_the_flag(capsys, only_planner):
    err = _plan_error([*PLAN, "--model", "resnet", "--input", "3,32,32"], capsys)
    assert err.startswith("edgesnn plan: error: --model: expected one of mlp, convnet, vgg11, got 'resnet'"), err


def test_plan_builds_no_node_per_cost_query(monkeypatch):
    """Planning an all-LIF chain with RevLIF allowed builds at most one default RevLIF and LIF per
    backend (it built one per layer, option and replay: thousands), and still plans the same."""
    built = []
    for cls in (LIF, RevLIF):
        init = cls.__init__

        def counting(self, *a, _init=init, _cls=cls, **k):
            built.append(_cls.__name__)
            _init(self, *a, **k)

        monkeypatch.setattr(cls, "__init__", counting)
    model = build_model("mlp", (64,), 10, 4, neuron="lif", hidden=[32] * 6, node={"backend": "torch"})
    built.clear()
    res = plan_model(ChainModel(model), 4, 400 * 2**20, 300 * 2**20, batch=None, groups=(2, 4))
    assert len(res["options"]) == 6 and res["peak_bytes"] <= 400 * 2**20
    assert len(built) <= 4, f"{len(built)} nodes built while planning"
