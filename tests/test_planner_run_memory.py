"""The plan counts the whole run: the dataset held in memory and the evaluation pass (issue item 5)."""

import json

import pytest

from edgesnn import cli
from edgesnn.devices import load_device
from edgesnn.models import build_model
from edgesnn.planner import Extras, PlanningError, load_plan, make_plan, plan_model, predict
from edgesnn.planner.datasets import DATASET_SPECS, dataset_memory
from edgesnn.planner.evalpass import eval_dynamic_peak, eval_lines
from edgesnn.planner.memory_model import ChainModel
from edgesnn.planner.solver import max_batch, static_resident

from _rss_measure import eval_pass_script, measured_and_predicted  # tests/ helper (pytest puts tests/ on sys.path)

OVH = 300 * 2**20


@pytest.fixture(scope="module")
def mlp():
    m = build_model("mlp", (784,), 10, 8, neuron="lif", hidden=[1024, 1024])
    return m, ChainModel(m)


def test_dataset_term_lowers_the_largest_batch_by_its_bytes(mlp):
    _, chain = mlp
    opts = ["lif"] * len(chain.spiking)
    budget = 440 * 2**20
    b0 = max_batch(chain, opts, 8, budget, OVH)
    per_sample = predict(chain, opts, 8, b0, OVH)["peak_bytes"] - predict(chain, opts, 8, b0 - 1, OVH)["peak_bytes"]
    data = 37 * per_sample  # the bytes of 37 samples of the step
    b1 = max_batch(chain, opts, 8, budget, OVH, extras=Extras(dataset_bytes=data))
    assert 300 < b0 < 1024 and b1 in (b0 - 37, b0 - 38)  # floor of the binding line: within one sample
    res = plan_model(chain, 8, budget, OVH, kinds=("lif",), extras=Extras(dataset_bytes=data))
    assert res["batch"] == b1 and res["dataset_bytes"] == data
    assert res["peak_bytes"] <= budget < predict(chain, opts, 8, b1 + 1, OVH, extras=Extras(dataset_bytes=data))["peak_bytes"]
    assert res["peak_bytes"] == static_resident(chain, OVH, "adam") + data + res["step_bytes"]


def test_digits_spec_matches_the_loader():
    from edgesnn.training.data import load_digits_dataset

    ds = load_digits_dataset()
    held = sum(t.numel() * t.element_size() for s in (ds.train, ds.test) for t in (s.x, s.y))
    assert dataset_memory("digits", 4, (64,))["bytes"] == held
    spec = DATASET_SPECS["digits"]
    assert (spec.train_samples, spec.test_samples) == (len(ds.train), len(ds.test))
    ev = dataset_memory("nmnist", 8, (2, 34, 34))
    assert ev["held"] == "mmap" and ev["bytes"] == 70000 * 8 and ev["mapped_bytes"] == 70000 * 8 * 2 * 34 * 34


def test_larger_eval_batch_raises_the_peak_when_its_forward_dominates(mlp):
    _, chain = mlp
    opts = ["lif"] * len(chain.spiking)
    step_only = predict(chain, opts, 8, 16, OVH)
    small = predict(chain, opts, 8, 16, OVH, extras=Extras(eval_batch=8))
    big = predict(chain, opts, 8, 16, OVH, extras=Extras(eval_batch=1024))
    assert small["peak_bytes"] == step_only["peak_bytes"] and small["peak_phase"] != "eval"  # the step dominates
    assert big["eval_bytes"] > big["step_bytes"] and big["peak_phase"] == "eval"
    assert big["peak_bytes"] == static_resident(chain, OVH, "adam") + big["eval_bytes"] > step_only["peak_bytes"]
    # no_grad: nothing saved, so the pass costs less per sample than a training step
    assert eval_dynamic_peak(chain, opts, 8, 16) < step_only["peak_bytes"] - static_resident(chain, OVH, "adam")
    # the closed-form lines give the replay's peak
    for B in (1, 7, 300):
        assert max(a * B + c for a, c in eval_lines(chain, opts, 8)) == eval_dynamic_peak(chain, opts, 8, B)


def test_an_eval_batch_that_does_not_fit_names_the_flag(mlp):
    _, chain = mlp
    budget = 700 * 2**20
    assert plan_model(chain, 8, budget, OVH, batch=None, extras=Extras(eval_batch=256))["batch"] >= 1
    with pytest.raises(PlanningError, match="--eval-batch"):
        plan_model(chain, 8, budget, OVH, batch=None, extras=Extras(eval_batch=100000))


_MEASURE = eval_pass_script("mlp", (784,), "lif", "hidden=[1024, 1024]", T=8, B=256)


def test_eval_forward_peak_matches_measured_rss():
    """evaluate()'s forward under no_grad on an MLP: peak RSS above the idle process vs the replay.

    In a fresh process: earlier tests leave freed heap the pass would reuse unseen.
    """
    measured, predicted = measured_and_predicted(_MEASURE)
    assert abs(predicted - measured) <= 0.15 * measured, (predicted, measured)


@pytest.fixture
def only_planner_and_train(monkeypatch):
    monkeypatch.setattr(cli, "SUBCOMMANDS", ["edgesnn.planner.cli", "edgesnn.training.cli"])


def test_plan_cli_records_and_prints_both_terms(tmp_path, capsys, only_planner_and_train):
    js = tmp_path / "p.json"
    rc = cli.main(["plan", "--model", "mlp", "--input", "64", "--timesteps", "4", "--batch", "16",
                   "--device", "raspberry-pi-4-4gb", "--dataset", "digits", "--eval-batch", "128", "--json", str(js)])
    out = capsys.readouterr().out
    assert rc == 0 and "dataset: digits" in out and "evaluation: batch 128" in out and "max(train step" in out
    doc = json.loads(js.read_text())
    assert doc["eval_batch"] == 128 and doc["dataset"]["name"] == "digits"
    pr = doc["predicted"]
    assert pr["dataset_bytes"] == doc["dataset"]["bytes"] > 0 and pr["eval_bytes"] > 0 and pr["step_bytes"] > 0
    assert load_plan(js).eval_batch == 128
    # edgesnn train --plan refuses a conflicting evaluation batch or dataset, in one line naming the flag
    for flag, value in (("--eval-batch", "64"), ("--dataset", "cifar10")):
        rc = cli.main(["train", "--plan", str(js), flag, value, "--epochs", "1", "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith(f"edgesnn train: error: {flag}: {value} contradicts")


def test_train_uses_the_plans_eval_batch(tmp_path, monkeypatch, only_planner_and_train):
    from edgesnn.training import cli as train_cli

    model = build_model("mlp", (64,), 10, 2, neuron="lif")
    plan = make_plan(model, load_device("raspberry-pi-4-4gb"), 2, 8, dataset="digits", eval_batch=100)
    assert plan.predicted["eval_batch"] == 100 and plan.dataset["bytes"] == DATASET_SPECS["digits"].resident_bytes(2)
    js = tmp_path / "p.json"
    from edgesnn.planner import save_plan

    save_plan(plan, js)
    seen = {}
    monkeypatch.setattr(train_cli, "train", lambda cfg, **kw: seen.update(kw, dataset=cfg.dataset) or
                        {"test_accuracy": 0.0, "test_samples": 0})
    assert cli.main(["train", "--plan", str(js), "--epochs", "1", "--no-progress"]) == 0
    assert seen["eval_batch_size"] == 100 and seen["dataset"] == "digits"


def test_train_builds_the_planned_model(tmp_path, monkeypatch, capsys, only_planner_and_train):
    """The plan's widths, backend and BatchNorm choice reach the trained model (they were dropped:
    a 256-64 plan trained the default 128-128 model); a plan for SGD or a contradicting flag is refused."""
    from edgesnn.training import cli as train_cli

    seen = {}
    monkeypatch.setattr(train_cli, "train", lambda cfg, **kw: seen.update(cfg=cfg) or {"test_accuracy": 0.0, "test_samples": 0})
    for model, widths, flag in (("mlp", "256,64,32", "--hidden"), ("convnet", "4,6", "--channels")):
        js = tmp_path / f"{model}.json"
        shape = "64" if model == "mlp" else "1,8,8"
        assert cli.main(["plan", "--model", model, "--input", shape, "--timesteps", "2", "--batch", "8", flag, widths,
                         "--backend", "torch", "--device", "raspberry-pi-4-4gb", "--dataset", "digits",
                         "--json", str(js)]) == 0
        assert cli.main(["train", "--plan", str(js), "--epochs", "1", "--no-progress"]) == 0
        cfg = seen["cfg"]
        assert getattr(cfg, flag[2:]) == [int(w) for w in widths.split(",")] and cfg.backend == "torch" and cfg.batchnorm
        rc = cli.main(["train", "--plan", str(js), "--backend", "numba", "--epochs", "1", "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and err[-1].startswith("edgesnn train: error: --backend: numba contradicts the plan")
    js = tmp_path / "sgd.json"
    assert cli.main(["plan", "--model", "mlp", "--input", "64", "--timesteps", "2", "--batch", "8", "--optimizer", "sgd",
                     "--device", "raspberry-pi-4-4gb", "--json", str(js)]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--plan", str(js), "--epochs", "1", "--no-progress"]) == 2
    assert "made for the sgd optimizer, but edgesnn train runs Adam" in capsys.readouterr().err


@pytest.mark.parametrize("argv,needle", [
    (["--eval-batch", "0"], "--eval-batch: expected a positive integer"),
    (["--dataset-bytes", "lots"], "--dataset-bytes: expected a size"),
    (["--dataset", "digits", "--dataset-bytes", "1MiB"], "--dataset-bytes: give --dataset"),
    (["--dataset", "folder"], "--dataset-bytes instead"),
    (["--dataset", "cifar10"], "--dataset: cifar10 gives samples of 3x32x32"),
])
def test_plan_cli_rejects_bad_values_in_one_line(argv, needle, capsys, only_planner_and_train):
    rc = cli.main(["plan", "--model", "mlp", "--input", "64", "--timesteps", "2", "--device", "raspberry-pi-4-4gb"] + argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0]


def test_plans_without_the_new_fields_still_load(tmp_path):
    model = build_model("mlp", (64,), 10, 2, neuron="lif")
    doc = make_plan(model, load_device("raspberry-pi-4-4gb"), 2, 8).to_dict()
    del doc["eval_batch"], doc["dataset"]
    js = tmp_path / "old.json"
    js.write_text(json.dumps(doc))
    plan = load_plan(js)
    assert plan.eval_batch == 256 and plan.dataset == {}
    doc["eval_batch"] = 0
    js.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="eval_batch"):
        load_plan(js)
