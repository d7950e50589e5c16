"""A plan's batch is an upper bound, and ``--batch auto`` says when it leaves an epoch few steps.

``edgesnn plan --batch auto --dataset digits`` picks batch 1024 (the most that fits, capped by
``--max-batch``): 2 optimizer steps per epoch over digits' 1348 training samples. ``edgesnn train
--plan P --batch-size 64`` was refused as contradicting the plan, although the planner's predicted
peak grows with the batch, so the plan's per-layer choices fit every smaller batch.
"""

import json

import pytest

from edgesnn import cli
from edgesnn.models import build_model
from edgesnn.planner.epoch_steps import MIN_STEPS_PER_EPOCH, few_steps_note, largest_batch_with_steps
from edgesnn.planner.memory_model import ChainModel
from edgesnn.planner.solver import Extras, predict
from edgesnn.training.lr_schedule import steps_per_epoch

PI = "raspberry-pi-4-4gb"
BATCHES = (1, 2, 3, 17, 64, 65, 1024)


def _lines(text: str):
    return [line for line in text.strip().splitlines() if line]


@pytest.fixture
def planner_and_train(monkeypatch):
    monkeypatch.setattr(cli, "SUBCOMMANDS", ["edgesnn.planner.cli", "edgesnn.training.cli"])


@pytest.mark.parametrize("name,shape,events", [("mlp", (64,), False), ("convnet", (1, 8, 8), False),
                                               ("convnet", (2, 16, 16), True), ("vgg11", (3, 32, 32), False)])
@pytest.mark.parametrize("backend", ["torch", "numba", "reference"])
def test_predicted_peak_never_falls_as_the_batch_grows(name, shape, events, backend):
    """The claim ``train --plan --batch-size N`` rests on: for fixed per-layer choices the planner's
    predicted peak (one plain step, and a later micro-batch part) is non-decreasing in the batch,
    for every built-in model, neuron kind and backend; the evaluation pass (its own batch) is unchanged."""
    T = 3
    chain = ChainModel(build_model(name, shape, 10, T, neuron="lif", node={"backend": backend}), events=events)
    n = len(chain.spiking)
    extras = Extras(dataset_bytes=12345, eval_batch=256)
    for opts in (["lif"] * n, ["revlif:2"] * n, (["lif", "revlif:2"] * n)[:n]):
        for accumulate in (False, True):
            rows = [predict(chain, opts, T, B, 300 * 2**20, extras=extras, accumulate=accumulate) for B in BATCHES]
            peaks = [r["peak_bytes"] for r in rows]
            steps = [r["step_bytes"] for r in rows]
            assert peaks == sorted(peaks) and steps == sorted(steps) and steps[0] < steps[-1], (opts, accumulate, peaks)
            assert len({r["eval_bytes"] for r in rows}) == 1


def _plan(tmp_path, name="p.json", *extra):
    js = tmp_path / name
    assert cli.main(["plan", "--model", "mlp", "--input", "64", "--timesteps", "2", "--dataset", "digits",
                     "--device", PI, "--json", str(js), *extra]) == 0
    return js, json.loads(js.read_text())


def test_train_plan_takes_a_smaller_batch_with_one_note(tmp_path, capsys, monkeypatch, planner_and_train):
    from edgesnn.training import cli as train_cli

    js, doc = _plan(tmp_path)
    assert doc["batch"] == 1024  # --batch auto: the most that fits, capped by --max-batch
    capsys.readouterr()
    seen = {}
    monkeypatch.setattr(train_cli, "train", lambda cfg, **kw: seen.update(cfg=cfg) or
                        {"test_accuracy": 0.0, "test_samples": 0})
    run = ["train", "--plan", str(js), "--epochs", "1", "--no-progress"]
    assert cli.main([*run, "--batch-size", "64"]) == 0
    cfg = seen["cfg"]
    assert cfg.batch_size == 64 and cfg.neuron == doc["neuron"] and cfg.batchnorm and cfg.micro_batch is None
    err = _lines(capsys.readouterr().err)
    peak = doc["predicted"]["peak_bytes"] / 2**20
    assert err == [f"edgesnn train: note: --batch-size 64 is below the plan {js}'s batch 1024: its neurons fit, and "
                   f"its predicted peak ({peak:.0f} MiB, for batch 1024) bounds this run's from above; "
                   "`edgesnn plan --batch 64` predicts this batch"]
    for same in ([], ["--batch-size", "1024"]):  # the plan's own batch: no note
        assert cli.main([*run, *same]) == 0 and seen["cfg"].batch_size == 1024
        assert capsys.readouterr().err == ""
    # in parts smaller than the batch the plan's micro-batch figure rules, as before: no note
    assert cli.main([*run, "--batch-size", "64", "--micro-batch", "16"]) == 0
    assert (seen["cfg"].batch_size, seen["cfg"].micro_batch) == (64, 16) and capsys.readouterr().err == ""
    # a larger batch is refused as before; BatchNorm's 2 samples name the plan, not --no-batchnorm
    for size, text in (("2048", f"--batch-size: 2048 contradicts the plan {js} (1024); to step on batches of 2048 "
                                "within the plan's memory add --micro-batch 1024"),
                       ("1", f"--batch-size: the plan {js}'s model has BatchNorm, which needs at least 2 samples per "
                             "batch; got 1 (use 2 to 1024)"),
                       ("0", "--batch-size: expected an integer >= 1, got 0")):
        assert cli.main([*run, "--batch-size", size]) == 2
        assert _lines(capsys.readouterr().err) == [f"edgesnn train: error: {text}"]


def test_train_plan_without_batchnorm_takes_batch_one(tmp_path, capsys, monkeypatch, planner_and_train):
    from edgesnn.devices import load_device
    from edgesnn.planner import make_plan, save_plan
    from edgesnn.training import cli as train_cli

    plan = make_plan(build_model("mlp", (64,), 10, 2, batchnorm=False), load_device(PI), 2, 32, dataset="digits")
    save_plan(plan, tmp_path / "nobn.json")
    seen = {}
    monkeypatch.setattr(train_cli, "train", lambda cfg, **kw: seen.update(cfg=cfg) or
                        {"test_accuracy": 0.0, "test_samples": 0})
    assert cli.main(["train", "--plan", str(tmp_path / "nobn.json"), "--batch-size", "1", "--epochs", "1",
                     "--no-progress"]) == 0
    assert seen["cfg"].batch_size == 1 and not seen["cfg"].batchnorm
    assert "below the plan" in capsys.readouterr().err


def test_train_plan_steps_on_the_smaller_batch(tmp_path, capsys, planner_and_train):
    """A real run: the smaller batch is what each step takes (torch backend, no kernel compile)."""
    js, _ = _plan(tmp_path, "t.json", "--backend", "torch")
    report = tmp_path / "r.json"
    assert cli.main(["train", "--plan", str(js), "--batch-size", "100", "--epochs", "1", "--max-steps", "3",
                     "--no-progress", "--threads", "1", "--json", str(report)]) == 0
    rep = json.loads(report.read_text())
    assert rep["config"]["batch_size"] == 100 and rep["steps"] == 3 and rep["history"][0]["samples"] == 300


def test_auto_batch_notes_few_steps_per_epoch(tmp_path, capsys, planner_and_train):
    from edgesnn.training.data import load_digits_dataset

    n = len(load_digits_dataset().train)  # what edgesnn train steps over
    js, doc = _plan(tmp_path)
    out = capsys.readouterr().out
    steps = steps_per_epoch(n, 1, doc["batch"], True)
    cap = largest_batch_with_steps(n, MIN_STEPS_PER_EPOCH, True, doc["batch"])
    note = (f"batch 1024 leaves {steps} optimizer steps per epoch on the {n} training samples of digits (fewer than "
            f"10): plan with --max-batch {cap} ({steps_per_epoch(n, 1, cap, True)} steps), or keep this plan and train "
            f"with --batch-size {cap} or less (edgesnn train --plan accepts a batch below the plan's)")
    assert steps == 2 and doc["notes"] == [note] and f"  note: {note}\n" in out
    # the remedy works: that cap plans that batch, with 10 or more steps and no note; so does a chosen batch
    _, capped = _plan(tmp_path, "c.json", "--max-batch", str(cap), "--force")
    assert capped["batch"] == cap and steps_per_epoch(n, 1, cap, True) >= 10 > steps_per_epoch(n, 1, cap + 1, True)
    assert capped["notes"] == []
    _, chosen = _plan(tmp_path, "b.json", "--batch", "1024")
    assert chosen["batch"] == 1024 and chosen["notes"] == []
    capsys.readouterr()
    assert cli.main(["plan", "--model", "mlp", "--input", "64", "--timesteps", "2", "--dataset", "digits",
                     "--device", PI, "--memopt"]) == 0
    out = capsys.readouterr().out
    assert f"  note: batch 1024 leaves {steps} optimizer steps per epoch" in out
    assert f"or train with --memopt --batch-size {cap} or less\n" in out


def test_few_steps_rule():
    assert few_steps_note(None, 1024, True) is None  # custom data: the plan knows no sample count
    assert few_steps_note("cifar10", 1024, True) is None  # 49 steps
    assert "leaves 8 optimizer steps" in few_steps_note("shd", 1024, False)  # 8156 samples: ceil(8156 / 1024)
    for n in (2, 3, 11, 21, 1348):
        for bn in (False, True):
            want = max([b for b in range(1, 200) if steps_per_epoch(n, 1, b, bn) >= 2], default=0)
            assert largest_batch_with_steps(n, 2, bn, 199) == want, (n, bn)
