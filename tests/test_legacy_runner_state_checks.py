"""The legacy onnx-training runner checks a resumed checkpoint as the onnx-step runner checks its
state.npz (twins of tests/test_runner_state_files_audit.py):

* ``runner_steps`` that disagrees with ``runner_epochs`` x the steps per epoch was taken as it is
  (a cosine schedule then runs at shifted rates); a negative or text counter gave
  "expected non-negative integer" / "invalid literal for int()" without the file;
* start values holding NaN or a negative BatchNorm variance gave a finite loss (NaN membranes never
  spike) and stopped at the epoch's end blaming ``--lr``;
* a first loss that is not finite, computed before any update, blamed ``--lr`` too;
* ``--no-lean-memory`` (onnx-step only) was accepted and did nothing.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from test_export_common import needs_ort, run_python
from test_export_runner import _RUNNER, _digits, _export_cli, _host_trained_model

pytestmark = needs_ort


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """onnx-training artifacts of a small LIF MLP with BatchNorm (batch 16), digits data (8 steps
    per epoch) and a finished two-epoch run in ``out``."""
    from edgesnn.checkpoint import save_checkpoint

    tmp = tmp_path_factory.mktemp("legacystate")
    model = _host_trained_model()
    ck = save_checkpoint(tmp / "model.ckpt", model.config, model.state_dict(), epoch=3)
    assert _export_cli(["--checkpoint", str(ck), "--format", "onnx-training", "--out", str(tmp / "art"),
                        "--batch-size", "16", "--lr", "0.05"]) == 0
    x, y = _digits()
    np.savez(tmp / "data.npz", x=x, y=y)
    proc = run_python(_RUNNER, str(tmp / "art"), "--data", str(tmp / "data.npz"), "--epochs", "2", "--lr", "0.1",
                      "--out", str(tmp / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp


def _resume(base, out):
    """Resume ``out`` for one epoch in a fresh interpreter (the runner refuses to finish with torch
    loaded): its exit status and stderr."""
    proc = run_python(_RUNNER, str(base / "art"), "--data", str(base / "data.npz"), "--epochs", "1", "--lr", "0.1",
                      "--out", str(out), "--resume")
    return proc.returncode, proc.stderr.strip()


def _edited_copy(base, tmp_path, properties=None, values=None):
    """A copy of the finished run whose ORT checkpoint has ``properties`` set and the bytes of each
    named tensor in ``values`` (name -> fill value) overwritten in the file (ORT's Python setter of
    parameter data crashes the interpreter)."""
    from onnxruntime.training.api import CheckpointState

    out = tmp_path / "out"
    shutil.copytree(base / "out", out)
    path = out / "checkpoint"
    if properties:
        state = CheckpointState.load_checkpoint(str(path))
        for k, v in properties.items():
            state.properties[k] = v
        CheckpointState.save_checkpoint(state, str(path), include_optimizer_state=True)
    for name, fill in (values or {}).items():
        old = np.asarray(CheckpointState.load_checkpoint(str(path)).parameters[name].data)
        raw = path.read_bytes()
        assert raw.count(old.tobytes()) == 1
        path.write_bytes(raw.replace(old.tobytes(), np.full(old.shape, fill, np.float32).tobytes()))
    return out


@pytest.mark.parametrize("properties, words", [
    ({"runner_steps": 5}, "runner_steps 5 does not match runner_epochs 2 x 8 steps per epoch"),
    ({"runner_epochs": 3}, "runner_steps 16 does not match runner_epochs 3 x 8 steps per epoch"),
    ({"runner_epochs": -3}, "runner_epochs: expected an integer >= 0, got int '-3'"),
    ({"runner_steps": "x"}, "runner_steps: expected an integer >= 0, got str 'x'"),
])
def test_resume_with_edited_counters_is_one_line_naming_the_file(base, tmp_path, properties, words):
    out = _edited_copy(base, tmp_path, properties=properties)
    rc, err = _resume(base, out)
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert f"{out / 'checkpoint'}: {words}" in err and "--force" in err, err


@pytest.mark.parametrize("name, fill, words", [
    ("body.1.module.weight", np.nan, "holds NaN or Inf values"),
    ("body.2.module.running_var", -1.0, "holds a negative BatchNorm variance"),
])
def test_resume_with_unsound_start_values_names_the_tensor(base, tmp_path, name, fill, words):
    out = _edited_copy(base, tmp_path, values={name: fill})
    rc, err = _resume(base, out)
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert f"{out / 'checkpoint'}: '{name}' {words}" in err and "lower --lr" not in err, err


def test_a_first_loss_that_is_not_finite_names_the_start_values(base, tmp_path):
    """Finite head biases of 3e38 overflow the logits: the first loss, computed before any update,
    is NaN, and --lr plays no part in it."""
    out = _edited_copy(base, tmp_path, values={"body.7.module.bias": 3e38})
    rc, err = _resume(base, out)
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "step 17: the loss is nan before any update of this run" in err and str(out / "checkpoint") in err, err
    assert "lower --lr" not in err


def test_an_unedited_resume_still_trains(base, tmp_path):
    out = _edited_copy(base, tmp_path)
    rc, err = _resume(base, out)
    assert rc == 0, err


@pytest.mark.parametrize("flag", [["--no-lean-memory"], ["--keep-best", "--holdout", "0.2"], ["--accumulate", "2"]])
def test_onnx_step_only_flags_are_refused_on_legacy_artifacts(base, tmp_path, flag):
    """--no-lean-memory was accepted and did nothing here (the legacy session keeps ONNX Runtime's
    arena); the other onnx-step-only flags were already refused."""
    proc = run_python(_RUNNER, str(base / "art"), "--data", str(base / "data.npz"), "--epochs", "1",
                      "--out", str(tmp_path / "o"), *flag)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1, err
    assert f"{flag[0]}: needs onnx-step artifacts" in err and not (tmp_path / "o").exists(), err
