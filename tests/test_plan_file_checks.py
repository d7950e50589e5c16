"""Plan files: what `edgesnn plan` writes is what `edgesnn train --plan` and `apply()` accept.

Audit items: a plan without a dataset trained on CIFAR-10 (1), input shapes and class counts the
training loop does not feed (2), hand-edited fields read silently or with a traceback (3),
``apply()`` on another model (4), an all-RevLIF comparison row that cannot be built (5).
"""

import copy
import json
import re
import shlex
from pathlib import Path

import pytest

from edgesnn import cli
from edgesnn.devices import load_device
from edgesnn.models import build_model, spiking_layers
from edgesnn.nn import RevLIF
from edgesnn.planner import Plan, apply, load_plan, make_plan, save_plan
from edgesnn.planner.datasets import DATASET_SPECS, dataset_classes, dataset_memory

PI = "raspberry-pi-4-4gb"
TRAIN = ["--epochs", "1", "--max-steps", "1", "--no-progress"]


@pytest.fixture
def cmds(monkeypatch):
    monkeypatch.setattr(cli, "SUBCOMMANDS", ["edgesnn.planner.cli", "edgesnn.training.cli"])


@pytest.fixture
def no_training(monkeypatch):
    """``edgesnn train``'s ``train()`` replaced: records the config and keyword arguments."""
    from edgesnn.training import cli as train_cli

    seen = {}
    monkeypatch.setattr(train_cli, "train", lambda cfg, **kw: seen.update(kw, cfg=cfg) or
                        {"test_accuracy": 0.0, "test_samples": 0})
    return seen


def _err(capsys) -> list:
    return capsys.readouterr().err.strip().splitlines()


# -- 1: a plan that counted no dataset ----------------------------------------------------------------------


def test_plan_without_dataset_is_refused_when_cifar10_overflows_its_budget(tmp_path, cmds, no_training, capsys):
    model = build_model("mlp", (3072,), 10, 2)
    plan = make_plan(model, load_device(PI), 2, None, budget=700 * 2**20)  # batch auto: peak close to the budget
    assert plan.dataset["held"] == "none" and plan.predicted["peak_bytes"] <= plan.budget_bytes
    js = save_plan(plan, tmp_path / "p.json")
    held = DATASET_SPECS["cifar10"].resident_bytes(2)
    assert held == 737_760_000
    rc = cli.main(["train", "--plan", str(js), "--dataset", "cifar10", "--data-dir", str(tmp_path / "none"), *TRAIN])
    err = _err(capsys)
    assert rc == 2 and len(err) == 1 and "cfg" not in no_training  # refused before any data is read
    assert err[0].startswith("edgesnn train: error: --plan:") and f"cifar10 holds {held} bytes" in err[0]
    assert "re-plan with --dataset cifar10" in err[0]


def test_plan_without_dataset_warns_when_the_dataset_still_fits(tmp_path, cmds, no_training, capsys):
    js = tmp_path / "p.json"
    assert cli.main(["plan", "--model", "mlp", "--input", "64", "-T", "2", "--batch", "8", "--device", PI,
                     "--json", str(js)]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--plan", str(js), *TRAIN]) == 0
    err = _err(capsys)
    held = DATASET_SPECS["digits"].resident_bytes(2)
    assert len(err) == 1 and err[0].startswith("edgesnn train: warning: --plan:")
    assert f"digits holds {held} bytes" in err[0] and "--dataset digits" in err[0]
    assert no_training["cfg"].dataset == "digits"
    # a plan that counted the dataset (or custom data) says nothing
    for extra in (["--dataset", "digits"], ["--dataset-bytes", "1MiB"]):
        assert cli.main(["plan", "--model", "mlp", "--input", "64", "-T", "2", "--batch", "8", "--device", PI,
                         "--json", str(js), "--force", *extra]) == 0
        capsys.readouterr()
        assert cli.main(["train", "--plan", str(js), *TRAIN]) == 0
        assert _err(capsys) == []


def test_readme_plan_example_counts_the_dataset_it_trains_on(tmp_path, cmds, capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Memory planner"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    plan_cmd, train_cmd = [shlex.split(line) for line in block.splitlines()
                           if line.startswith(("edgesnn plan", "edgesnn train"))]
    argv = plan_cmd[1:]
    argv[argv.index("--json") + 1] = str(tmp_path / "plan.json")
    del argv[argv.index("--plot"):argv.index("--plot") + 2]  # matplotlib aside, the plan is the same
    assert cli.main(argv) == 0
    doc = json.loads((tmp_path / "plan.json").read_text())
    dataset = train_cmd[train_cmd.index("--dataset") + 1]
    assert doc["dataset"]["name"] == dataset == "cifar10"
    assert doc["predicted"]["dataset_bytes"] == DATASET_SPECS["cifar10"].resident_bytes(doc["timesteps"])
    assert doc["predicted"]["peak_bytes"] <= doc["budget_bytes"]


# -- 2: shapes and class counts the training loop feeds -------------------------------------------------------


@pytest.mark.parametrize("model,shape,fed", [("convnet", "8,8,1", "1,8,8"), ("mlp", "1,8,8", "64"),
                                             ("mlp", "2,34,34", "2312")])
def test_plan_refuses_an_input_shape_training_does_not_feed(model, shape, fed, cmds, capsys):
    dataset = "nmnist" if shape == "2,34,34" else "digits"
    rc = cli.main(["plan", "--model", model, "--input", shape, "--dataset", dataset, "-T", "2", "--batch", "8",
                   "--device", PI])
    err = _err(capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"edgesnn plan: error: --dataset: {dataset}")
    assert err[0].endswith(f"use --input {fed}")


def test_a_conv_plan_for_digits_trains(tmp_path, cmds, capsys):
    js = tmp_path / "c.json"
    assert cli.main(["plan", "--model", "convnet", "--input", "1,8,8", "--channels", "4,4", "--dataset", "digits",
                     "-T", "2", "--batch", "8", "--backend", "torch", "--device", PI, "--json", str(js)]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--plan", str(js), *TRAIN]) == 0  # the real loop: check_plan_fits passes
    assert "final test accuracy" in capsys.readouterr().out


def test_a_built_in_datasets_class_count_is_the_plans(tmp_path, cmds, capsys):
    assert [dataset_classes(n) for n in ("digits", "cifar10", "nmnist", "dvsgesture", "shd")] == [10, 10, 10, 11, 20]
    assert dataset_classes(None) == 10 and dataset_classes(None, 5) == 5 and dataset_classes("shd", 20) == 20
    with pytest.raises(ValueError, match=r"^--classes: shd has 20 classes, got 10; pass --classes 20$"):
        dataset_classes("shd", 10)
    with pytest.raises(ValueError, match="--classes: dvsgesture has 11 classes"):
        dataset_memory("dvsgesture", 4, (2, 32, 32), model="convnet", num_classes=10)
    with pytest.raises(ValueError, match="--classes: shd has 20"):
        make_plan(build_model("mlp", (700,), 10, 2), load_device(PI), 2, 8, dataset="shd")
    base = ["plan", "--model", "mlp", "--input", "700", "--dataset", "shd", "-T", "2", "--batch", "8", "--device", PI]
    assert cli.main([*base, "--classes", "10"]) == 2
    err = _err(capsys)
    assert len(err) == 1 and err[0] == "edgesnn plan: error: --classes: shd has 20 classes, got 10; pass --classes 20"
    js = tmp_path / "shd.json"
    assert cli.main([*base, "--classes", "20", "--json", str(js)]) == 0
    assert json.loads(js.read_text())["model"]["num_classes"] == 20


# -- 3: hand-edited plan files ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_plan():
    return make_plan(build_model("mlp", (64,), 10, 2), load_device(PI), 2, 8, dataset="digits").to_dict()


def _set(path: str, value):
    def edit(doc):
        *keys, last = path.split(".")
        for k in keys:
            doc = doc[int(k)] if isinstance(doc, list) else doc[k]
        last = int(last) if isinstance(doc, list) else last
        if value is KeyError:
            del doc[last]
        else:
            doc[last] = value
    return edit


BAD = [
    ("timesteps", None, "timesteps"), ("timesteps", "abc", "timesteps"), ("timesteps", True, "timesteps"),
    ("timesteps", 4.7, "timesteps"), ("batch", 32.9, "batch"), ("batch", KeyError, "batch"),
    ("version", True, "version"), ("version", 1.0, "version"), ("budget_bytes", "2GiB", "budget_bytes"),
    ("layers", 5, "layers"), ("layers", [5, 6], "layers"), ("layers", [], "layers"),
    ("layers.0.neuron", 5, "layers[0].neuron"), ("layers.0.neuron", KeyError, "layers[0].neuron"),
    ("layers.0", {"neuron": "revlif:3"}, "layers[0].neuron"),  # 3 groups do not divide 128 channels
    ("layers.0.groups", 4, "layers[0].groups"), ("layers.0.kind", "revlif", "layers[0].kind"),
    ("model", [1], "model"), ("model", {"node": "auto"}, "model.name"), ("model", {"hidden": 128}, "model.name"),
    ("model.node", "auto", "model.node"), ("model.node.backend", "gpu", "model.node.backend"),
    ("model.hidden", 128, "model.hidden"), ("model.hidden", ["a"], "model.hidden"), ("model.hidden", [], "model.hidden"),
    ("model.hidden", [128, 128, 64], "layers"),  # three spiking layers, two entries
    ("model.num_classes", "ten", "model.num_classes"), ("model.batchnorm", "false", "model.batchnorm"),
    ("model.name", KeyError, "model.name"), ("model.name", "resnet", "model.name"),
    ("model.name", "convnet", "model.in_shape"), ("model.in_shape", [0], "model.in_shape"),
    ("dataset", "digits", "dataset"), ("dataset.name", "mnist", "dataset.name"), ("dataset.bytes", -1, "dataset.bytes"),
    ("neuron", ["revlif", "lif"], "neuron"), ("model.neuron", "revlif", "model.neuron"),
    ("predicted.peak_bytes", "big", "predicted.peak_bytes"), ("eval_batch", 2.5, "eval_batch"),
    ("optimizer", 7, "optimizer"),
    ("model.timesteps", "four", "model.timesteps"), ("model.timesteps", 3, "model.timesteps"),
    ("model.timesteps", 2.0, "model.timesteps"),  # the plan's T as a float was accepted
    # the model's widths edited by hand: the figures are for 128-wide layers (training built the edited model)
    ("model.hidden", [4096, 4096], "layers[0].channels"), ("layers.1.channels", 64, "layers[1].channels"),
    ("layers.0.channels", True, "layers[0].channels"),
]


@pytest.mark.parametrize("path,value,field", BAD, ids=[f"{p}={v!r}" for p, v, _ in BAD])
def test_train_refuses_a_bad_plan_field_in_one_line(path, value, field, base_plan, tmp_path, cmds, no_training,
                                                    capsys):
    doc = copy.deepcopy(base_plan)
    _set(path, value)(doc)
    js = tmp_path / "bad.json"
    js.write_text(json.dumps(doc))
    rc = cli.main(["train", "--plan", str(js), *TRAIN])
    err = _err(capsys)
    assert rc == 2 and len(err) == 1 and "cfg" not in no_training
    assert err[0].startswith(f"edgesnn train: error: --plan: {field}: expected "), err[0]
    assert str(js) in err[0]


@pytest.mark.parametrize("path,value,field", [("model.node", {"backend": "auto", "tau": 4.0}, "model.node.tau"),
                                              ("model.revlif", {"alpha": 0.25}, "model.revlif.alpha")])
def test_train_refuses_planned_node_settings_it_cannot_build(path, value, field, base_plan, tmp_path, cmds,
                                                             no_training, capsys):
    """A plan for nodes with other settings (made from Python) trained the default nodes, silently:
    not the model the plan's memory figures were for."""
    doc = copy.deepcopy(base_plan)
    _set(path, value)(doc)
    js = tmp_path / "nodes.json"
    js.write_text(json.dumps(doc))
    assert cli.main(["train", "--plan", str(js), *TRAIN]) == 2
    err = _err(capsys)
    assert len(err) == 1 and "cfg" not in no_training
    assert err[0].startswith(f"edgesnn train: error: --plan: {field}: {js} plans nodes with settings edgesnn train does "
                             "not set"), err[0]


def test_good_plan_fields_reach_training(base_plan, tmp_path, cmds, no_training, capsys):
    doc = copy.deepcopy(base_plan)
    assert load_plan(save_plan(Plan.from_dict(doc), tmp_path / "rt.json")).to_dict() == doc
    doc["model"]["batchnorm"] = False
    doc["model"]["hidden"] = [32, 16]
    doc["model"]["neuron"] = "revlif"  # one spec for every layer: agrees with layers[]
    for L, width in zip(doc["layers"], [32, 16]):  # (a layer's channels must say its width)
        L.update(neuron="revlif:2", kind="revlif", groups=2, channels=width)
    doc["neuron"] = ["revlif:2", "revlif:2"]
    js = tmp_path / "ok.json"
    js.write_text(json.dumps(doc))
    assert cli.main(["train", "--plan", str(js), *TRAIN]) == 0
    cfg = no_training["cfg"]
    assert cfg.batchnorm is False and cfg.hidden == [32, 16] and cfg.neuron == ["revlif:2", "revlif:2"]
    assert cfg.timesteps == 2 and cfg.batch_size == 8 and cfg.model == "mlp"


# -- 4: apply() checks the model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def conv_revlif4(tmp_path_factory):
    js = tmp_path_factory.mktemp("apply") / "p.json"
    assert cli.main(["plan", "--model", "convnet", "--input", "3,16,16", "--timesteps", "4", "--batch", "8",
                     "--device", PI, "--neurons", "revlif", "--groups", "4", "--json", str(js)]) == 0
    return js


@pytest.mark.parametrize("model,needle", [
    (lambda: build_model("convnet", (3, 16, 16), 10, 4, channels=[6, 10]),
     r"^plan: layers\[0\]\.neuron: expected a group count that divides the 6 channels"),
    (lambda: build_model("convnet", (3, 16, 16), 10, 4, channels=[8, 8]), r"^plan: model\.channels: expected \[8, 8\]"),
    (lambda: build_model("mlp", (768,), 10, 4, hidden=[16, 32]), r"^plan: model\.name: expected 'mlp'"),
    # (train --plan refused these two; apply() swapped the nodes of a model the plan's figures are not for)
    (lambda: build_model("convnet", (3, 16, 16), 10, 4, pool="max"), r"^plan: pool: expected max \(the model's\), got avg"),
    (lambda: build_model("convnet", (3, 16, 16), 10, 4, batchnorm=False),
     r"^plan: batchnorm: expected False \(the model's\), got True"),
])
def test_apply_refuses_a_plan_for_another_model(model, needle, conv_revlif4):
    m = model()
    before = [type(n) for _, n in spiking_layers(m)]
    with pytest.raises(ValueError, match=needle):
        apply(m, conv_revlif4)
    assert [type(n) for _, n in spiking_layers(m)] == before  # nothing swapped


def test_apply_and_train_share_the_group_check(conv_revlif4, tmp_path, cmds, no_training, capsys):
    m = build_model("convnet", (3, 16, 16), 10, 4)
    apply(m, json.loads(conv_revlif4.read_text()))  # a dict goes through the same field checks
    assert all(isinstance(n, RevLIF) and n.groups == 4 for _, n in spiking_layers(m))
    doc = json.loads(conv_revlif4.read_text())
    doc["model"]["channels"] = [6, 10]
    js = tmp_path / "edited.json"
    js.write_text(json.dumps(doc))
    assert cli.main(["train", "--plan", str(js), *TRAIN]) == 2
    err = _err(capsys)
    assert len(err) == 1 and "--plan: layers[0].neuron: expected a group count that divides the 6 channels" in err[0]
    with pytest.raises(ValueError, match=r"layers\[0\]\.neuron: expected a group count that divides the 6"):
        apply(build_model("convnet", (3, 16, 16), 10, 4, channels=[6, 10]), doc)


# -- 5: the all-RevLIF comparison row -------------------------------------------------------------------------


def test_all_revlif_row_uses_group_counts_that_divide_or_is_left_out():
    dev = load_device(PI)
    plan = make_plan(build_model("mlp", (20,), 10, 2, hidden=[3, 3]), dev, 2, 8)
    assert "all-revlif" not in plan.alternatives and "all-lif" in plan.alternatives
    assert plan.notes == ["all-revlif left out: none of --groups 2 divides the 3 channels of body.3"]
    plan = make_plan(build_model("mlp", (20,), 10, 2, hidden=[3, 4]), dev, 2, 8, groups=(2, 3))
    specs = plan.alternatives["all-revlif"]["neuron"]
    assert specs == ["revlif:3", "revlif:2"] and plan.notes == []
    m = build_model("mlp", (20,), 10, 2, hidden=[3, 4], neuron=specs)  # the row's model can be built
    assert [n.groups for _, n in spiking_layers(m)] == [3, 2]
