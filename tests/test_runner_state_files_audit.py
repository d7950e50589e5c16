"""The onnx-step device runner checks the arrays and names it feeds ONNX Runtime before the first step
(audit of ``edgesnn-device`` with edited state files):

* ``--resume`` with an ``OUT/state.npz`` whose array has the wrong shape, rank or element type
  reached ONNX Runtime ("Invalid rank for input", a traceback); now one line naming the file, the
  array and expected vs got, suggesting ``--force``;
* non-integer or negative ``runner.steps`` / ``runner.epochs`` were "invalid literal for int()"
  without the file, and run settings that are JSON but not an object a traceback;
* ``ARTIFACTS/init.npz`` edited with its SHA-256 recomputed in the manifest: the same, naming init.npz;
* manifest names that the graphs do not have (a shortened ``frozen`` list, a renamed ``carried``
  output), the manifest's checksum recomputed: one line naming manifest.json.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")  # the fixture exports (a board-only install has no onnx)
pytest.importorskip("onnxruntime")

N = 24


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A small LIF MLP exported as onnx-step (batch 8), a data file and a finished one-epoch run."""
    from edgesnn.export import runner
    from edgesnn.export.onnx_step import export_onnx_step
    from edgesnn.models import build_model

    tmp = tmp_path_factory.mktemp("statefiles")
    torch.manual_seed(0)
    model = build_model("mlp", (16,), 4, 2, neuron="lif", hidden=(8,)).eval()
    export_onnx_step(model, tmp / "art", 8, "sgd", 0.05, momentum=0.9)
    g = np.random.default_rng(0)
    np.savez(tmp / "data.npz", x=g.random((N, 16)).astype(np.float32), y=g.integers(0, 4, N))
    import edgesnn.export.step_runner as sr

    keep, sr.training_modules_imported = sr.training_modules_imported, lambda: []
    try:
        assert runner.main(_argv(tmp / "art", tmp, tmp / "out")) == 0
    finally:
        sr.training_modules_imported = keep
    return tmp


@pytest.fixture(autouse=True)
def _in_process(monkeypatch):
    """In pytest's process torch is loaded: the runner's torch-free check is tested elsewhere."""
    monkeypatch.setattr("edgesnn.export.step_runner.training_modules_imported", lambda: [])


def _argv(art, base, out, *extra):
    return [str(art), "--data", str(base / "data.npz"), "--out", str(out), "--threads", "1", *extra]


def _arrays(path):
    with np.load(path) as npz:
        return {k: np.array(npz[k]) for k in npz.files}


def _one_line_error(capsys, argv):
    from edgesnn.export import runner

    assert runner.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def _write_manifest(art, doc):
    from edgesnn.export.artifacts import MANIFEST_CHECKSUM, _canonical

    doc = {k: v for k, v in doc.items() if k != MANIFEST_CHECKSUM}
    doc[MANIFEST_CHECKSUM] = hashlib.sha256(_canonical(doc).encode()).hexdigest()
    (art / "manifest.json").write_text(json.dumps(doc))


def _resume_edited(base, tmp_path, capsys, **edits):
    """A copy of the finished run whose state.npz has ``edits`` (array name -> value) written over it,
    resumed: ``(state path, the one-line error)``."""
    out = tmp_path / "out"
    shutil.copytree(base / "out", out)
    state = _arrays(out / "state.npz")
    state.update({k: np.asarray(v) for k, v in edits.items()})
    np.savez(out / "state.npz", **state)
    return out / "state.npz", _one_line_error(capsys, _argv(base / "art", base, out, "--resume"))


def _weight(arrays):
    return next(k for k in arrays if k.endswith("weight") and arrays[k].ndim == 2)


@pytest.mark.parametrize("edit, got", [
    (lambda a: a[:, 0].copy(), "float32 [{0}]"),                 # wrong rank
    (lambda a: a[:-1].copy(), "float32 [{1}, {2}]"),             # wrong size
    (lambda a: a.astype(np.float64), "float64 [{0}, {2}]"),      # wrong element type
    (lambda a: np.zeros((), np.float32), "float32 []"),          # a scalar
    (lambda a: np.full(a.shape, "x"), "<U1 [{0}, {2}]"),         # text
])
def test_resume_with_an_edited_state_array_is_one_line(base, tmp_path, capsys, edit, got):
    out = tmp_path / "out"
    shutil.copytree(base / "out", out)
    state = _arrays(out / "state.npz")
    name = _weight(state)
    rows, cols = state[name].shape
    momentum = name + ".momentum_buffer"
    state[name] = edit(state[name])
    if momentum in state:
        state[momentum] = edit(state[momentum])
    np.savez(out / "state.npz", **state)
    err = _one_line_error(capsys, _argv(base / "art", base, out, "--resume"))
    assert f"{out / 'state.npz'}: {name}: expected float32 [{rows}, {cols}], got {got.format(rows, rows - 1, cols)}" in err
    assert "--force" in err


@pytest.mark.parametrize("key, value", [("runner.steps", "abc"), ("runner.epochs", -1), ("runner.steps", 1.5),
                                        ("runner.epochs", [1, 2])])
def test_resume_with_bad_counters_is_one_line_naming_the_file(base, tmp_path, capsys, key, value):
    path, err = _resume_edited(base, tmp_path, capsys, **{key: value})
    assert f"{path}: {key}: expected an integer >= 0" in err and "--force" in err


@pytest.mark.parametrize("settings", ["[1, 2]", "5", "null"])
def test_resume_with_settings_that_are_not_an_object_is_one_line(base, tmp_path, capsys, settings):
    _, err = _resume_edited(base, tmp_path, capsys, **{"runner.settings": settings})
    assert "unreadable run settings" in err and "--force" in err


@pytest.mark.parametrize("accumulate", ["1", "2"])
def test_an_edited_init_npz_with_its_hash_recomputed_is_one_line(base, tmp_path, capsys, accumulate):
    art = tmp_path / "art"
    shutil.copytree(base / "art", art)
    init = _arrays(art / "init.npz")
    name = _weight(init)
    rows, cols = init[name].shape
    init[name] = init[name][:, :1].copy()
    np.savez(art / "init.npz", **init)
    doc = json.loads((art / "manifest.json").read_text())
    doc["files"]["init.npz"] = hashlib.sha256((art / "init.npz").read_bytes()).hexdigest()
    _write_manifest(art, doc)
    err = _one_line_error(capsys, _argv(art, base, tmp_path / "out", "--accumulate", accumulate))
    assert f"{art / 'init.npz'}: {name}: expected float32 [{rows}, {cols}], got float32 [{rows}, 1]" in err
    assert not (tmp_path / "out").exists()


def _shorten_frozen(doc):
    doc["frozen"] = doc["frozen"][:-1]
    return "is in none of the manifest's lists"


def _rename_carried_output(doc):
    doc["carried"][0][1] = "new/renamed"
    return "'new/renamed': not an output of"


def _drop_carried(doc):
    doc["carried"] = doc["carried"][:-1]
    return "carried lacks"


def _rename_label(doc):
    doc["label_name"] = "targets"
    return "label_name 'targets': not an input of"


@pytest.mark.parametrize("edit", [_shorten_frozen, _rename_carried_output, _drop_carried, _rename_label])
@pytest.mark.parametrize("accumulate", ["1", "2"])
def test_manifest_names_the_graphs_lack_are_one_line(base, tmp_path, capsys, edit, accumulate):
    art = tmp_path / "art"
    shutil.copytree(base / "art", art)
    doc = json.loads((art / "manifest.json").read_text())
    if edit is _shorten_frozen and not doc["frozen"]:
        pytest.skip("this export has no frozen buffers")
    words = edit(doc)
    _write_manifest(art, doc)
    err = _one_line_error(capsys, _argv(art, base, tmp_path / "out", "--accumulate", accumulate))
    assert f"{art / 'manifest.json'}: does not match the graphs beside it" in err and words in err, err


def test_a_valid_resume_still_continues(base, tmp_path, capsys):
    from edgesnn.export import runner

    out = tmp_path / "out"
    shutil.copytree(base / "out", out)
    assert runner.main(_argv(base / "art", base, out, "--resume")) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["total_epochs"] == 2 and m["total_steps"] == 2 * m["steps"]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("where", ["state", "init"])
def test_non_finite_start_values_are_named_not_blamed_on_the_learning_rate(base, tmp_path, capsys, bad, where):
    """A NaN/Inf in a resumed state.npz (or an init.npz whose hash was recomputed) ran into the first
    step's check: 'step 1: the update made [...] non-finite; lower --lr', naming neither the file nor
    its cause."""
    out, art = tmp_path / "out", base / "art"
    if where == "state":
        shutil.copytree(base / "out", out)
        path, argv = out / "state.npz", _argv(art, base, out, "--resume")
    else:
        art = tmp_path / "art"
        shutil.copytree(base / "art", art)
        path, argv = art / "init.npz", _argv(art, base, out)
    arrays = _arrays(path)
    name = _weight(arrays)
    arrays[name][0, 0] = bad
    np.savez(path, **arrays)
    if where == "init":
        doc = json.loads((art / "manifest.json").read_text())
        doc["files"]["init.npz"] = hashlib.sha256(path.read_bytes()).hexdigest()
        _write_manifest(art, doc)
    err = _one_line_error(capsys, argv)
    assert f"{path}: '{name}' holds NaN or Inf values" in err and "lower --lr" not in err
    assert ("--force" in err) == (where == "state")


@pytest.mark.parametrize("key, value", [("runner.steps", 1), ("runner.steps", 10**6), ("runner.epochs", 5)])
def test_resume_with_counters_that_disagree_is_one_line(base, tmp_path, capsys, key, value):
    """An edited runner.steps was taken as is: a cosine schedule then ran at shifted rates without a
    word (or failed later naming neither the file nor the field)."""
    path, err = _resume_edited(base, tmp_path, capsys, **{key: value})
    assert f"{path}: runner.steps " in err and "steps per epoch" in err and "--force" in err, err


def _cross_carried(doc):
    doc["carried"][0][1], doc["carried"][1][1] = doc["carried"][1][1], doc["carried"][0][1]
    return "carried pairs"


def _more_classes(doc):
    doc["num_classes"] = 20
    return "output 'logits' has shape [8, 4], num_classes says 20 classes"


@pytest.mark.parametrize("edit", [_cross_carried, _more_classes])
def test_manifest_fields_the_graphs_contradict_are_one_line(base, tmp_path, capsys, edit):
    """Crossed carried pairs gave ONNX Runtime's 'Invalid rank' traceback (or, between a weight and its
    momentum, training that diverged and blamed --lr); num_classes 20 beside 4 logits trained on
    labels the graph cannot output."""
    art = tmp_path / "art"
    shutil.copytree(base / "art", art)
    doc = json.loads((art / "manifest.json").read_text())
    words = edit(doc)
    _write_manifest(art, doc)
    err = _one_line_error(capsys, _argv(art, base, tmp_path / "out"))
    assert f"{art / 'manifest.json'}: does not match the graphs beside it" in err and words in err, err


def test_a_first_loss_that_is_not_finite_names_the_start_values(base, tmp_path, capsys):
    """Finite start values whose first loss is not (head biases +-3e38: the cross-entropy of every
    label but one overflows) were blamed on --lr, which a resume refuses to change and which plays no
    part before the first update."""
    state = _arrays(base / "out" / "state.npz")
    name = next(k for k in state if k.endswith("bias") and state[k].shape == (4,))  # the head: 4 classes
    path, err = _resume_edited(base, tmp_path, capsys, **{name: np.asarray([3e38, -3e38, -3e38, -3e38], np.float32)})
    assert "before any update of this run" in err and str(path) in err and "lower --lr" not in err, err


def test_resume_with_a_negative_batchnorm_variance_names_the_array(base, tmp_path, capsys):
    """A negative running_var (finite) gave a finite loss, since NaN membranes never spike, and the
    first epoch's end blamed the NaN update on --lr."""
    state = _arrays(base / "out" / "state.npz")
    name = next(k for k in state if k.endswith("running_var"))
    path, err = _resume_edited(base, tmp_path, capsys, **{name: -np.abs(state[name]) - 1})
    assert f"{path}: '{name}' holds a negative BatchNorm variance" in err and "--force" in err, err
    assert "lower --lr" not in err
