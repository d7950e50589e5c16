"""The device runner's checks that a board user hits (audit of ``edgesnn.export.runner``):

* the legacy (onnx-training) runner stops at a non-finite loss, naming the step, as the onnx-step
  runner does (it trained on and saved NaN weights with exit 0);
* ``--resume`` into a non-empty ``--out`` without this format's state is refused (it silently
  started again from the export and overwrote that folder's ``params.npz``);
* ``--out`` that is a mount point is refused before training (the swap failed with a traceback
  after the first epoch);
* ``--threads`` beyond 4 per core and unknown flags are one-line errors;
* a failed write (disk full) says what ``--out`` still holds; ONNX Runtime's write failures in the
  legacy runner are one line;
* the onnx-step graph's gradient equals torch autograd's for batch 1 and batch 32 (the
  cross-entropy gradient is not scaled by the batch size).
"""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
import torch

from test_export_common import needs_ort

pytest.importorskip("onnx")  # every test here runs an export (a board-only install has no onnx)
pytest.importorskip("onnxruntime")

N = 45


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    """A small LIF MLP exported as onnx-step and (where onnxruntime-training is installed) as
    onnx-training, batch 8, and a 45-sample data file."""
    from edgesnn.export.onnx_step import export_onnx_step
    from edgesnn.models import build_model

    tmp = tmp_path_factory.mktemp("checks")
    torch.manual_seed(0)
    model = build_model("mlp", (16,), 4, 2, neuron="lif", hidden=(8,)).eval()
    export_onnx_step(model, tmp / "step", 8, "sgd", 0.05, momentum=0.9)
    try:
        from edgesnn.export.onnx_training import export_onnx_training

        export_onnx_training(model, tmp / "legacy", 8, "sgd", 0.05)
    except Exception:  # no onnxruntime-training: the legacy tests are skipped (needs_ort)
        pass
    g = np.random.default_rng(0)
    np.savez(tmp / "data.npz", x=(g.random((N, 16)) * 2).astype(np.float32), y=g.integers(0, 4, N))
    return tmp


@pytest.fixture(autouse=True)
def _in_process(monkeypatch):
    """In pytest's process torch is loaded: the runner's torch-free check is tested elsewhere."""
    monkeypatch.setattr("edgesnn.export.step_runner.training_modules_imported", lambda: [])


def _main(arts, fmt, out, *flags):
    from edgesnn.export.runner import main

    return main([str(arts / fmt), "--data", str(arts / "data.npz"), "--out", str(out), "--holdout", "0",
                 "--threads", "1", *flags])


def _err(capsys):
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@needs_ort
def test_legacy_runner_stops_at_a_non_finite_loss(arts, tmp_path, capsys):
    """Before: exit 0, ``epoch_loss`` NaN and NaN weights in params.npz."""
    out = tmp_path / "ft"
    assert _main(arts, "legacy", out, "--epochs", "2", "--lr", "3e38") == 2
    err = _err(capsys)
    assert "error: step " in err and "the loss is" in err and "lower --lr" in err, err
    assert not out.exists()  # nothing diverged was saved


@pytest.mark.parametrize("fmt,other", [("step", "checkpoint"), ("legacy", "state.npz"), ("step", "notes.txt")])
def test_resume_refuses_a_folder_without_this_formats_state(arts, tmp_path, capsys, fmt, other):
    """Before: the run started again from the exported weights and replaced the folder's
    params.npz and metrics.json, leaving the other run's state beside them."""
    if fmt == "legacy" and not (arts / "legacy").is_dir():
        pytest.skip("onnxruntime-training not installed")
    out = tmp_path / "ft"
    out.mkdir()
    (out / other).write_bytes(b"another run")
    (out / "params.npz").write_bytes(b"their weights")
    assert _main(arts, fmt, out, "--resume") == 2
    err = _err(capsys)
    assert "--resume" in err and str(out) in err and "--force" in err, err
    assert (out / "params.npz").read_bytes() == b"their weights"
    assert sorted(p.name for p in out.iterdir()) == sorted([other, "params.npz"])


def test_resume_into_an_empty_or_missing_folder_starts_a_run(arts, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for name in ("empty", "missing"):
        assert _main(arts, "step", tmp_path / name, "--resume") == 0
        assert (tmp_path / name / "state.npz").is_file()
    capsys.readouterr()


def test_a_mount_point_out_is_refused_before_training(arts, tmp_path, capsys, monkeypatch):
    """Before: an epoch trained, then replace_dir's rename of the mount point failed (EBUSY) with a traceback."""
    out = tmp_path / "sdcard"
    out.mkdir()
    real_ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: os.path.realpath(p) == os.path.realpath(out) or real_ismount(p))
    assert _main(arts, "step", out) == 2
    err = _err(capsys)
    assert "mount point" in err and str(out / "finetuned") in err, err
    assert list(out.iterdir()) == []
    assert _main(arts, "step", out / "finetuned") == 0  # a folder inside it is fine
    capsys.readouterr()


@pytest.mark.parametrize("flags,words", [
    (["--threads", "99999999999"], ["--threads: expected at most"]),  # before: a pybind TypeError traceback
    (["--threads", str(4 * (os.cpu_count() or 1) + 1)], ["--threads: expected at most"]),  # before: accepted
    (["--bogus"], ["unrecognized arguments: --bogus"]),  # before: the usage block, then the error
    (["--epochs", "1.5"], ["--epochs", "invalid int value"]),
])
def test_bad_flags_are_one_line_errors(arts, tmp_path, capsys, flags, words):
    from edgesnn.export.runner import main

    argv = [str(arts / "step"), "--data", str(arts / "data.npz"), "--out", str(tmp_path / "ft"), *flags]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    assert code == 2
    err = _err(capsys)
    assert err.startswith("edgesnn-device: error: ") and all(w in err for w in words), err
    assert not (tmp_path / "ft").exists()


def test_disk_full_says_what_out_still_holds(arts, tmp_path, capsys, monkeypatch):
    """The second epoch's write fails: one line that names the failure and says --out holds epoch 1."""
    from edgesnn.atomic import WriteError
    from edgesnn.export import step_runner

    real = step_runner.atomic_write_bytes
    calls = []

    def full(path, data):
        calls.append(path)
        if len(calls) > 2:  # epoch 1 wrote state.npz and params.npz
            raise WriteError(f"cannot write {path}: no space left on device", errno.ENOSPC)
        return real(path, data)

    monkeypatch.setattr(step_runner, "atomic_write_bytes", full)
    out = tmp_path / "ft"
    assert _main(arts, "step", out, "--epochs", "3") == 2
    err = _err(capsys)
    assert "no space left on device" in err and f"{out} holds the state after epoch 1" in err, err
    assert "--resume --epochs 2" in err, err
    with np.load(out / "state.npz") as npz:
        assert int(npz["runner.epochs"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft"]  # no temp folder left


def test_legacy_ort_write_failure_is_one_line():
    """ONNX Runtime reports a full disk as a RuntimeError ("Protobuf serialization failed")."""
    from edgesnn.atomic import WriteError
    from edgesnn.export.legacy_runner import _ort_write

    def fail():
        raise RuntimeError("/onnxruntime_src/module.cc:688 onnxruntime::Status Export(...) [ONNXRuntimeError] : 7 : "
                           "INVALID_PROTOBUF : Protobuf serialization failed.\n")

    with pytest.raises(WriteError, match=r"^cannot write /x/inference.onnx: .*7 : INVALID_PROTOBUF : Protobuf "
                                         r"serialization failed\.$"):
        _ort_write("/x/inference.onnx", fail)


@pytest.mark.parametrize("neuron", ["lif", "revlif"])
@pytest.mark.parametrize("batch", [1, 32])
def test_step_gradient_equals_autograd_at_batch_1_and_32(tmp_path, neuron, batch):
    """Plain SGD (no momentum, no weight decay) at lr 0.5 from the same weights: (w0 - w1) / lr is
    the graph's gradient; it equals torch autograd's cross-entropy (mean over the batch) gradient."""
    from edgesnn.export.artifacts import validate_artifact_dir
    from edgesnn.export.onnx_step import export_onnx_step
    from edgesnn.export.prepare import export_copy
    from edgesnn.export.runner import import_plain_ort
    from edgesnn.export.step_runner import StepSession
    from edgesnn.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp", (16,), 4, 4, neuron=neuron, hidden=(8,)).eval()
    export_onnx_step(model, tmp_path / "art", batch, "sgd", 0.05, momentum=0.0)
    manifest = validate_artifact_dir(tmp_path / "art")
    with np.load(tmp_path / "art" / "init.npz") as npz:
        start = {k: np.array(npz[k]) for k in npz.files}
    sess = StepSession(import_plain_ort(), tmp_path / "art", manifest, start, 1, True)
    lr = 0.5
    sess.set_lr(lr)
    g = np.random.default_rng(batch)
    x = (g.random((batch, 16)) * 2).astype(np.float32)
    y = g.integers(0, 4, batch)
    ref = export_copy(model)
    loss = torch.nn.functional.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()
    got_loss, _, _ = sess.step(x, y)
    assert abs(got_loss - loss.item()) < 1e-5
    new = sess.values()
    for name, p in ref.named_parameters():
        grad = (start[name] - new[name]) / lr
        np.testing.assert_allclose(grad, p.grad.numpy(), atol=2e-6, rtol=1e-4, err_msg=name)
    assert max(float(p.grad.abs().max()) for p in ref.parameters()) > 1e-3  # not vacuous


def test_a_file_given_as_artifacts_is_named_without_out(tmp_path, capsys, arts):
    """An `--format onnx` file given as ARTIFACTS, without --out, was told "--out: ... is a file, so
    model.onnx/finetuned cannot be created" (the default --out lies inside ARTIFACTS)."""
    from edgesnn.export.runner import main

    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx")
    assert main([str(model), "--data", str(arts / "data.npz")]) == 2
    err = _err(capsys)
    assert f"ARTIFACTS: {model} is a file, not a directory" in err and "--out" not in err, err
    assert model.read_bytes() == b"onnx"


@pytest.mark.parametrize("has_package", [False, True])
def test_legacy_artifacts_without_the_training_api_name_the_onnx_step_export(tmp_path, monkeypatch, has_package):
    """On a board (plain onnxruntime, or none) the refusal named only onnxruntime-training, whose
    wheels are x86-64 and Python <= 3.12: not that the folder is legacy, nor the export that runs."""
    import importlib.util
    import sys

    from edgesnn.export.runner import DependencyError, import_ort_training_api

    plain = tmp_path / "onnxruntime"
    plain.mkdir()
    (plain / "__init__.py").write_text("")
    spec = importlib.util.spec_from_file_location("onnxruntime", plain / "__init__.py") if has_package else None
    monkeypatch.setitem(sys.modules, "onnxruntime.training", None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: spec if name == "onnxruntime" else None)
    with pytest.raises(DependencyError) as info:
        import_ort_training_api()
    text = str(info.value)
    assert "legacy onnx-training artifacts need onnxruntime-training" in text and "--format onnx-step" in text, text
    assert ("no training API" in text) == has_package
