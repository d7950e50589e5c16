"""Corrupt and hostile input files (audit): every file edgesnn reads loads or is refused in one line
naming the file and what was expected; never a traceback or an allocation a small file never held.

* plan JSON (``edgesnn train --plan``), device profiles (``edgesnn plan --device FILE``) and
  artifact manifests (``edgesnn-device``): arrays nested thousands deep (``RecursionError``) and an
  integer of more than 4300 digits (Python's ``ValueError`` without the file's name) are one line
  naming the file;
* a step manifest's fields are checked for their JSON types and ranges (it was read unchecked:
  ``carried: [7]``, ``trainable: null``, ``files: {"step.onnx": 5}`` ended in tracebacks, and a
  ``batch_size`` of 2**40 made the runner allocate the batch buffer);
* a checkpoint whose ``model_config`` builds a model far larger than its ``model_state`` (``hidden:
  [1048576, 1048576]``, 4 TiB of weights from a 300 kB file) is refused before it is built.
"""

from __future__ import annotations

import hashlib
import re
import json

import pytest
import torch

from edgesnn import cli
from edgesnn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from edgesnn.devices import load_device
from edgesnn.export.artifacts import (MANIFEST_CHECKSUM, STEP_ACCUMULATE_FILES, STEP_FILES, ArtifactError,
                                      StepManifest, _canonical, validate_artifact_dir, write_step_manifest)
from edgesnn.models import build_model
from edgesnn.planner import load_plan

DEEP = "[" * 100_000 + "]" * 100_000


def _huge_int(fmt: str) -> str:
    return '{"format": "%s", "version": %s}' % (fmt, "9" * 5000)


# -- JSON files nested too deep, or with an integer too long for Python ----------------------------------------


@pytest.mark.parametrize("text", [DEEP, _huge_int("edgesnn-plan")], ids=["deep", "huge-int"])
def test_a_plan_json_python_cannot_parse_is_one_line_naming_it(text, tmp_path, monkeypatch, capsys):
    path = tmp_path / "plan.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"^--plan: .*plan\.json is not a plan JSON file edgesnn can read"):
        load_plan(path, label="--plan")
    monkeypatch.setattr(cli, "SUBCOMMANDS", ["edgesnn.training.cli"])
    assert cli.main(["train", "--plan", str(path), "--epochs", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "Traceback" not in err[0], err


@pytest.mark.parametrize("text", [DEEP, '{"name": "x", "memory_bytes": %s}' % ("1" * 5000)], ids=["deep", "huge-int"])
def test_a_device_json_python_cannot_parse_is_one_line_naming_it(text, tmp_path):
    path = tmp_path / "board.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"^device: .*board\.json is not a device profile edgesnn can read"):
        load_device(str(path))


# -- the device runner's manifest --------------------------------------------------------------------------------


@pytest.fixture
def step_dir(tmp_path):
    """An onnx-step directory with placeholder graph files and a manifest as the export writes it."""
    d = tmp_path / "art"
    d.mkdir()
    for name in STEP_FILES + STEP_ACCUMULATE_FILES:
        (d / name).write_bytes(name.encode())
    write_step_manifest(d, StepManifest(
        model_config={"name": "mlp"}, batch_size=8, in_shape=[64], num_classes=10, timesteps=2, trainable=["w", "b"],
        frozen=["rm"], optimizer_state=["w.m", "b.m"], carried=[["w", "new/w"], ["b", "new/b"], ["w.m", "new/w.m"],
                                                                ["b.m", "new/b.m"]],
        hyperparameters={"momentum": 0.9}, neurons=[{"layer": "body.3", "kind": "lif"}], input_range=[0.0, 1.0]))
    return d


def _edit(d, **fields) -> None:
    """Set manifest fields and recompute its checksum (a deliberate edit, or an export of another build)."""
    doc = json.loads((d / "manifest.json").read_text())
    doc.update(fields)
    doc.pop(MANIFEST_CHECKSUM)
    doc[MANIFEST_CHECKSUM] = hashlib.sha256(_canonical(doc).encode()).hexdigest()
    (d / "manifest.json").write_text(json.dumps(doc))


def test_a_valid_step_manifest_still_loads(step_dir):
    m = validate_artifact_dir(step_dir)
    assert m.batch_size == 8 and m.carried[0] == ["w", "new/w"]


BAD_MANIFEST = [
    ({"carried": [7]}, "carried"), ({"carried": [["nope", "new/nope"]]}, "carried"),
    ({"carried": [["w", ["x"]]]}, "carried"), ({"trainable": None}, "trainable"), ({"frozen": [1]}, "frozen"),
    ({"optimizer_state": "w.m"}, "optimizer_state"), ({"files": {"step.onnx": 5}}, "files"),
    ({"batch_size": "8"}, "batch_size"), ({"batch_size": 0}, "batch_size"), ({"batch_size": True}, "batch_size"),
    ({"batch_size": 2**40}, "batch_size x in_shape"), ({"in_shape": [2**20, 2**20]}, "batch_size x in_shape"),
    ({"in_shape": []}, "in_shape"), ({"in_shape": [64.0]}, "in_shape"), ({"num_classes": -1}, "num_classes"),
    ({"timesteps": None}, "timesteps"), ({"learning_rate": "0.01"}, "learning_rate"),
    ({"learning_rate": -1}, "learning_rate"), ({"input_range": [1, 0]}, "input_range"),
    ({"hyperparameters": {"momentum": "high"}}, "hyperparameters"), ({"chunk": 0}, "chunk"),
    ({"neurons": [1]}, "neurons"), ({"recon_tolerance": -0.5}, "recon_tolerance"),
    ({"input_name": ["input"]}, "input_name"), ({"lr_name": None}, "lr_name"), ({"model_config": []}, "model_config"),
]


@pytest.mark.parametrize("fields,name", BAD_MANIFEST, ids=[next(iter(f)) + "=" + repr(next(iter(f.values())))[:20]
                                                            for f, _ in BAD_MANIFEST])
def test_a_manifest_field_of_the_wrong_type_or_range_is_one_line_naming_it(step_dir, fields, name):
    _edit(step_dir, **fields)
    with pytest.raises(ArtifactError) as info:
        validate_artifact_dir(step_dir)
    msg = str(info.value)
    assert f"manifest.json: {name}: expected" in msg and "\n" not in msg, msg


def test_a_manifest_without_its_checksum_is_checked_too(step_dir):
    doc = json.loads((step_dir / "manifest.json").read_text())
    del doc[MANIFEST_CHECKSUM]  # an older export: no checksum, still read
    doc["carried"] = [["w", "new/w"], 5]
    (step_dir / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match=r"manifest\.json: carried: expected"):
        validate_artifact_dir(step_dir)


@pytest.mark.parametrize("text", [DEEP, _huge_int("edgesnn-onnx-step")], ids=["deep", "huge-int"])
def test_a_manifest_python_cannot_parse_is_a_corrupt_artifact_file(step_dir, text):
    (step_dir / "manifest.json").write_text(text)
    with pytest.raises(ArtifactError, match=r"manifest\.json: corrupt artifact file"):
        validate_artifact_dir(step_dir)


# -- checkpoints --------------------------------------------------------------------------------------------------


def _checkpoint(path, **config_edit):
    model = build_model("mlp", (16,), 4, 2, hidden=(8,))
    save_checkpoint(path, model.config, model.state_dict())
    ck = torch.load(path, weights_only=True)
    ck["model_config"].update(config_edit)
    torch.save(ck, path)  # edited behind save_checkpoint's back
    return path


@pytest.mark.parametrize("edit,needle", [({"hidden": [2**20, 2**20]}, "builds a model of"),
                                         ({"hidden": [8] * 1000}, "lists 1000 layers")], ids=["wide", "deep"])
def test_a_checkpoint_config_far_larger_than_its_state_is_refused_before_building(tmp_path, edit, needle):
    path = _checkpoint(tmp_path / "ck.pt", **edit)
    with pytest.raises(CheckpointError, match=needle) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_checkpoint_whose_config_matches_loads(tmp_path):
    from edgesnn.training import model_from_checkpoint

    model = model_from_checkpoint(str(_checkpoint(tmp_path / "ck.pt")))
    assert model.config["hidden"] == [8]


@pytest.mark.parametrize("dtype", [torch.bool, torch.int64, torch.complex64])
def test_a_checkpoint_tensor_of_another_kind_is_refused_not_cast(tmp_path, dtype):
    from edgesnn.training import model_from_checkpoint

    path = _checkpoint(tmp_path / "ck.pt")
    ck = torch.load(path, weights_only=True)
    name = next(k for k, v in ck["model_state"].items() if v.is_floating_point())
    ck["model_state"][name] = ck["model_state"][name].to(dtype)  # bool: every weight becomes 0.0 or 1.0
    torch.save(ck, path)
    with pytest.raises(CheckpointError, match=rf"does not match its model \({name}: {dtype}"):
        model_from_checkpoint(str(path))


# ------------------------------------------------------------------ symlink loops, folders as --device


def test_a_symlink_loop_as_an_input_path_is_one_line(tmp_path, monkeypatch):
    """`Path.resolve` raised RuntimeError("Symlink loop") out of check_not_inside (a traceback from
    edgesnn-device --data / train --checkpoint); check_input_file said 'no such file'."""
    from edgesnn.atomic import check_input_file, check_not_inside

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    check_not_inside("out", "--out", data="a")  # no loop error: the loop is not the output
    with pytest.raises(FileNotFoundError, match=r"^--data: a is a symlink to nothing \(dangling, or a loop\); expected"):
        check_input_file("a", "--data", "a .npz file")


@pytest.mark.parametrize("given", [".", "profiles", "prof"])
def test_a_device_path_without_slash_or_json_suffix_is_read_as_a_path(tmp_path, monkeypatch, given):
    """`edgesnn plan --device .` (or a folder / a profile file named without .json) was 'unknown
    device'; it is a path the user gave: a folder is named as one, a file is read as a profile."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "profiles").mkdir()
    good = load_device("raspberry-pi-4-4gb").to_dict()
    (tmp_path / "prof").write_text(json.dumps(dict(good, name="my-pi")))
    if given == "prof":
        assert load_device(given).name == "my-pi"
    else:
        with pytest.raises(IsADirectoryError, match=rf"^device: {re.escape(given)} is a directory; expected a JSON profile"):
            load_device(given)
    assert load_device("raspberry-pi-4-4gb").name == "raspberry-pi-4-4gb"  # a catalogue name stays one
