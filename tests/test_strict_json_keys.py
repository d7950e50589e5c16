"""Unknown keys in device profiles and plan files are refused (a misspelt optional key was silently
its default: ``"gpu_memroy_bytes"`` planned for the default memory), in one line naming the file,
the key's path, the known keys and the closest one; ``_`` keys are comments; every file edgesnn
writes or wrote (older plan layouts from the git history) still loads."""

import copy
import json
from pathlib import Path

import pytest

from edgesnn import cli
from edgesnn.devices import DeviceProfile, load_device
from edgesnn.models import build_model, spiking_layers
from edgesnn.nn import RevLIF
from edgesnn.planner import apply, load_plan, make_plan
from edgesnn.planner.plan import VERSION

PI = "raspberry-pi-4-4gb"
SHIPPED = sorted((Path(__file__).resolve().parents[1] / "devices").glob("*.json"))
BASE = dict(name="myboard", memory_bytes=4 * 2**30, reserved_bytes=2**29, runtime_overhead_bytes=2**28,
            bandwidth_gbs=10.0, cores=4)


@pytest.fixture
def cmds(monkeypatch):
    monkeypatch.setattr(cli, "SUBCOMMANDS", ["edgesnn.planner.cli", "edgesnn.training.cli"])


@pytest.fixture(scope="module")
def plan_dict():
    return make_plan(build_model("mlp", (64,), 10, 2), load_device(PI), 2, 8, dataset="digits").to_dict()


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# -- device profiles ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_profile_loads(path):
    assert load_device(path.stem).name == path.stem
    assert load_device(str(path)).to_dict() == load_device(path.stem).to_dict()


@pytest.mark.parametrize("extra, where, hint", [
    ({"gpu_memroy_bytes": 2**30}, "gpu_memroy_bytes", '"memory_bytes"'),
    ({"acelerator": "cuda"}, "acelerator", '"accelerator"'),
    ({"runs": {"trainig": True}}, "runs.trainig", '"training"'),
])
def test_misspelt_profile_key_is_refused_with_a_suggestion(tmp_path, extra, where, hint):
    f = _write(tmp_path / "myboard.json", {**BASE, **extra})
    with pytest.raises(ValueError) as exc:
        load_device(str(f))
    msg = _one_line(exc)
    assert msg.startswith(f"device: {f}: {where}: unknown key (did you mean {hint}?); known keys: ")
    assert "memory_bytes" in msg or "planner" in msg  # the known keys are listed


def test_plan_cli_names_a_misspelt_profile_key(tmp_path, cmds, capsys):
    f = _write(tmp_path / "myboard.json", {**BASE, "reserved_byte": 2**30})
    js = tmp_path / "p.json"
    rc = cli.main(["plan", "--model", "mlp", "--input", "64", "-T", "2", "--batch", "8", "--device", str(f),
                   "--json", str(js)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and not js.exists()
    assert f"{f}: reserved_byte: unknown key" in err[0] and 'did you mean "reserved_bytes"' in err[0]


def test_profile_comment_keys_and_free_sources_are_accepted(tmp_path):
    data = {**BASE, "_comment": "my board, measured 2026", "sources": {"memory_bytes, cores": "data sheet"},
            "runs": {"planner": True, "_note": "checked by hand"}}
    d = load_device(str(_write(tmp_path / "myboard.json", data)))
    assert d.memory_bytes == BASE["memory_bytes"] and d.runs == {"planner": True}
    assert d.sources == {"memory_bytes, cores": "data sheet"}
    with pytest.raises(ValueError) as exc:  # a comment written without the underscore is told how
        DeviceProfile.from_dict({**BASE, "comment": "x"}, origin="b.json")
    assert 'comment: unknown key (for a comment write "_comment")' in _one_line(exc)


# -- plan files --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where, parent, key, hint", [
    ("top", (), "eval_bacth", "eval_batch"),
    ("model", ("model",), "batchnorn", "batchnorm"),
    ("model.node", ("model", "node"), "backedn", "backend"),
    ("model.revlif", ("model", "revlif"), "alpah", "alpha"),
    ("device", ("device",), "reserved_byte", "reserved_bytes"),
    ("device.runs", ("device", "runs"), "trainig", "training"),
    ("dataset", ("dataset",), "test_sample", "test_samples"),
    ("predicted", ("predicted",), "micro_bach", "micro_batch"),
    ("layers[1]", ("layers", 1), "neuronn", "neuron"),
    ("alternatives", ("alternatives",), "all-lfi", "all-lif"),
    ('alternatives["all-lif"]', ("alternatives", "all-lif"), "peak_byte", "peak_bytes"),
])
def test_misspelt_plan_key_is_refused_at_every_level(tmp_path, plan_dict, where, parent, key, hint):
    d = copy.deepcopy(plan_dict)
    d["model"]["revlif"] = {"alpha": 0.5}
    obj = d
    for p in parent:
        obj = obj[p]
    obj[key] = 1
    f = _write(tmp_path / "plan.json", d)
    with pytest.raises(ValueError) as exc:
        load_plan(f, label="--plan")
    msg = _one_line(exc)
    path = key if where == "top" else (f'{where}["{key}"]' if "-" in key else f"{where}.{key}")
    assert msg.startswith(f'--plan: {path}: unknown key (did you mean "{hint}"?); known keys: ')
    assert msg.endswith(f" in {f}")


def test_train_plan_names_a_misspelt_layer_key(tmp_path, plan_dict, cmds, capsys):
    d = copy.deepcopy(plan_dict)
    d["layers"][0]["nueron"] = "revlif:2"
    f = _write(tmp_path / "plan.json", d)
    rc = cli.main(["train", "--plan", str(f), "--epochs", "1", "--max-steps", "1", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith('edgesnn train: error: --plan: layers[0].nueron: unknown key (did you mean "neuron"?)')


def test_fresh_plan_from_the_cli_loads_and_applies(tmp_path, cmds, capsys):
    js = tmp_path / "plan.json"
    assert cli.main(["plan", "--model", "mlp", "--input", "64", "-T", "2", "--batch", "8", "--dataset", "digits",
                     "--device", PI, "--json", str(js)]) == 0
    plan = load_plan(js)
    model = apply(build_model("mlp", (64,), 10, 2, neuron="revlif:2"), str(js))
    kinds = [f"revlif:{n.groups}" if isinstance(n, RevLIF) else "lif" for _, n in spiking_layers(model)]
    assert kinds == plan.neuron and model.config["neuron"] == plan.neuron


def test_plan_of_the_first_layout_still_loads(tmp_path, plan_dict):
    """The plan as edgesnn first wrote it (8f2a74f: no eval_batch / dataset / notes, fewer predicted
    figures, no alternatives' neuron lists, a device without os / python / cuda / runs)."""
    d = copy.deepcopy(plan_dict)
    for k in ("eval_batch", "dataset", "notes"):
        del d[k]
    d["predicted"] = {k: d["predicted"][k] for k in ("activation_bytes", "static_bytes", "runtime_overhead_bytes",
                                                     "peak_bytes", "peak_phase", "time_s", "fixed_activation_bytes")}
    for alt in d["alternatives"].values():
        del alt["neuron"]
    for k in ("os", "python", "cuda", "runs"):
        del d["device"][k]
    plan = load_plan(_write(tmp_path / "old.json", d))
    assert plan.neuron == plan_dict["neuron"] and plan.dataset == {}
    model = apply(build_model("mlp", (64,), 10, 2), plan)
    assert len(spiking_layers(model)) == len(plan.layers)


def test_plan_comment_keys_are_accepted(tmp_path, plan_dict):
    d = copy.deepcopy(plan_dict)
    d["_comment"] = "hand-edited: layer 0 as RevLIF"
    d["layers"][0]["_why"] = "saves bytes"
    d["model"]["node"]["_note"] = "default backend"
    d["predicted"]["_note"] = "from the Pi profile"
    plan = load_plan(_write(tmp_path / "plan.json", d))
    assert plan.neuron == plan_dict["neuron"]
    assert isinstance(apply(build_model("mlp", (64,), 10, 2), plan).body, type(build_model("mlp", (64,), 10, 2).body))


def test_newer_plan_version_is_refused_by_its_version_not_its_keys(tmp_path, plan_dict):
    d = {**copy.deepcopy(plan_dict), "version": VERSION + 1, "chunks": []}
    with pytest.raises(ValueError) as exc:
        load_plan(_write(tmp_path / "new.json", d))
    msg = _one_line(exc)
    assert msg.startswith(f"plan: version: expected {VERSION}") and "unknown key" not in msg



# -- a key written twice -----------------------------------------------------------------------------------


def test_a_profile_key_written_twice_is_refused(tmp_path):
    """A second ``memory_bytes`` line (an edit beside the old one) was read as the last, silently."""
    text = json.dumps(BASE).replace('"memory_bytes"', '"memory_bytes": 1073741824, "memory_bytes"', 1)
    f = tmp_path / "myboard.json"
    f.write_text(text)
    assert json.loads(text)["memory_bytes"] == BASE["memory_bytes"]  # what a plain JSON reader takes
    with pytest.raises(ValueError) as exc:
        load_device(str(f))
    assert _one_line(exc) == (f'device: {f}: key "memory_bytes" appears twice in one object; keep one (a JSON '
                              'reader would take the last, silently)')
    nested = json.dumps({**BASE, "runs": {"planner": True}}).replace('"planner"', '"planner": false, "planner"')
    f.write_text(nested)
    with pytest.raises(ValueError, match='key "planner" appears twice'):
        load_device(str(f))
    f.write_text(json.dumps(BASE)[:-1] + ', "_comment": "a", "_comment": "b"}')  # comments may repeat
    assert load_device(str(f)).memory_bytes == BASE["memory_bytes"]


def test_a_plan_key_written_twice_is_refused_by_train(tmp_path, plan_dict, cmds, capsys):
    text = json.dumps(plan_dict).replace('"batch"', '"batch": 3, "batch"', 1)
    f = tmp_path / "plan.json"
    f.write_text(text)
    with pytest.raises(ValueError) as exc:
        load_plan(f)
    assert _one_line(exc) == (f'plan: {f}: key "batch" appears twice in one object; keep one (a JSON reader '
                              'would take the last, silently)')
    ck = tmp_path / "m.ckpt"
    rc = cli.main(["train", "--plan", str(f), "--epochs", "1", "--checkpoint", str(ck)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and not ck.exists()
    assert err[0].endswith(f'--plan: {f}: key "batch" appears twice in one object; keep one (a JSON reader '
                           'would take the last, silently)')
