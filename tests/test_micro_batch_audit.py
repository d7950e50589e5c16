"""Audit of ``--micro-batch`` with plans: every remedy a message names is one that then runs.

* ``edgesnn train --plan``: a ``--batch-size`` above the plan's batch, or a part above what the plan
  holds, names the plan's ``predicted.micro_batch`` (a later part holds every parameter gradient as
  well, so it is often less than the plan's batch), and names no ``--micro-batch`` at all when no
  part fits (0 samples, or fewer than BatchNorm's 3).
* ``edgesnn plan`` prints no "at most 0 samples per part".
* ``edgesnn plan --batch B`` that does not fit names a ``--micro-batch`` that a plan at the batch it
  names then holds (not the plain step's largest batch).
"""

from __future__ import annotations

import json
import re

import pytest

from edgesnn.cli import main
from edgesnn.models import build_model


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def _plan(tmp_path, capsys, name, micro, batchnorm=True):
    args = ["plan", "--model", "mlp", "--input", "64", "-T", "2", "--batch", "16", "--dataset", "digits",
            "--device", "raspberry-pi-4-4gb", "--json", str(tmp_path / "base.json"), "--force"]
    assert main(args) == 0
    plan = json.loads((tmp_path / "base.json").read_text())
    plan["predicted"]["micro_batch"] = micro
    plan["model"]["batchnorm"] = batchnorm
    (tmp_path / name).write_text(json.dumps(plan))
    capsys.readouterr()
    return ["train", "--plan", str(tmp_path / name), "--epochs", "1", "--max-steps", "1", "--no-progress"]


def test_plan_remedies_name_the_plans_micro_batch(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = _plan(tmp_path, capsys, "tight.json", 10)  # the plan's batch is 16, a later part holds 10
    assert main([*run, "--batch-size", "64"]) == 2
    assert _err(capsys).endswith("to step on batches of 64 within the plan's memory add --micro-batch 10")
    assert main([*run, "--batch-size", "64", "--micro-batch", "32"]) == 2
    assert _err(capsys).endswith("(batch 16); use --micro-batch 10 or less")
    assert main([*run, "--batch-size", "64", "--micro-batch", "10"]) == 0  # the remedy runs


def test_no_part_fits_names_no_micro_batch(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for micro, bn in ((0, True), (2, True), (0, False)):
        run = _plan(tmp_path, capsys, f"none{micro}{bn}.json", micro, bn)
        for extra in (["--batch-size", "64"], ["--batch-size", "64", "--micro-batch", "4"],
                      ["--batch-size", "64", "--micro-batch", "32"]):
            assert main([*run, *extra]) == 2
            err = _err(capsys)
            assert not re.search(r"--micro-batch \d+ or less|add --micro-batch \d", err), err
            assert "drop --micro-batch and train with --batch-size 16 or less" in err, err
        # --micro-batch 32 on the plan's own batch of 16 splits nothing: the plan's step, which fits
        assert main([*run, "--micro-batch", "32"]) == 0
        capsys.readouterr()


def test_plan_prints_no_part_of_zero_samples(tmp_path, capsys):
    _plan(tmp_path, capsys, "none0.json", 0)
    _plan(tmp_path, capsys, "none2.json", 2)
    assert main(["plan", "--model", "mlp", "--input", "64", "-T", "2", "--batch", "16", "--dataset", "digits",
                 "--device", "raspberry-pi-4-4gb"]) == 0
    from edgesnn.planner import load_plan
    from edgesnn.planner.cli import print_plan
    import io

    capsys.readouterr()
    for micro in (0, 2):
        buf = io.StringIO()
        print_plan(load_plan(str(tmp_path / f"none{micro}.json")), file=buf)
        line = next(s for s in buf.getvalue().splitlines() if s.startswith("batch: "))
        assert "at most" not in line and "no larger batch fits in parts" in line, line


def test_impossible_batch_hint_names_a_part_the_plan_then_holds(tmp_path, capsys):
    common = ["plan", "--model", "mlp", "--input", "64", "-T", "4", "--dataset", "digits", "--device",
              "raspberry-pi-4-4gb", "--budget", "495MiB", "--hidden", "512,512"]
    assert main([*common, "--batch", "1000"]) == 2
    err = _err(capsys)
    bmax = int(re.search(r"use --batch (\d+) or less", err).group(1))
    micro = int(re.search(r"edgesnn train --micro-batch (\d+) still steps on batches of 1000", err).group(1))
    assert main([*common, "--batch", str(bmax), "--json", str(tmp_path / "p.json")]) == 0
    fits = json.loads((tmp_path / "p.json").read_text())["predicted"]["micro_batch"]
    assert 1 <= micro <= fits < bmax, (micro, fits, bmax)


def test_memopt_plans_for_the_samples_computed_at_once():
    """``--memopt`` traces the most samples a step computes at once: a micro-batch above the batch
    changes nothing (one part per batch), so optimize_memory plans the batch, as without it."""
    from edgesnn.training.loop import TrainConfig, train

    cfg = dict(dataset="digits", model="convnet", channels=[8, 16], timesteps=4, batch_size=16, seed=5,
               backend="torch", lr=0.01, epochs=1, memopt=True)
    lines = {}
    for m in (None, 16, 1000):
        logged = []
        train(TrainConfig(**cfg, micro_batch=m), progress=False, log=logged.append, max_steps=1)
        lines[m] = [s for s in logged if s.startswith("optimize_memory:")]
    assert len(lines[None]) == 1 and lines[None] == lines[16] == lines[1000], lines


@pytest.mark.parametrize("batchnorm", [True, False])
def test_impossible_batch_hint_names_no_part_batchnorm_refuses(batchnorm):
    """At the smallest budget that fits any batch, a later part holds one or two samples: with
    BatchNorm, which needs 3 per part, the hint names no --micro-batch (edgesnn train would refuse
    it); without, it names the part."""
    from edgesnn.planner.memory_model import ChainModel
    from edgesnn.planner.solver import PlanningError, plan_model

    chain = ChainModel(build_model("mlp", (64,), 10, 4, neuron="lif", hidden=(512, 512), batchnorm=batchnorm))
    ovh = 100 * 2**20
    base = ovh + chain.static_bytes("adam")

    def message(extra: int) -> str:
        with pytest.raises(PlanningError) as err:
            plan_model(chain, 4, base + extra, ovh, batch=1000)
        return str(err.value)

    lo, hi = 0, 4 * 2**20  # the smallest extra budget at which some batch fits
    assert "use --batch" in message(hi) and "use --batch" not in message(lo)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if "use --batch" in message(mid) else (mid, hi)
    msg = message(hi)
    bmax = int(re.search(r"use --batch (\d+) or less", msg).group(1))
    assert bmax <= 2, msg
    if batchnorm:
        assert "--micro-batch" not in msg, msg
    else:
        assert re.search(r"edgesnn train --micro-batch [12] still steps on batches of 1000", msg), msg
