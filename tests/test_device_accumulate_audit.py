"""Audit of ``edgesnn-device --accumulate N`` (:mod:`edgesnn.export.accumulate_session`): a
non-finite ``recon_error`` of any part reaches the runner's check, as it does without accumulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from _step_compare import small_runner_case
from test_export_common import needs_onnx_runtime

pytestmark = needs_onnx_runtime

B, N = 8, 40


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return small_runner_case(tmp_path_factory.mktemp("accaudit"), "revlif", N)


def _nan_err_on_part(monkeypatch, part):
    """Make the ``part``-th run of ``grad.onnx`` (1-based, over the session's life) report a NaN
    ``recon_error`` (a reconstruction gone non-finite), the graph's other outputs untouched."""
    from edgesnn.export.accumulate_session import AccumulatingSession

    bind = AccumulatingSession._bind_training

    def patched(self, start):
        bind(self, start)
        real, calls = self.grad_sess, []

        class Spy:
            def run_with_iobinding(self_, binding):
                real.run_with_iobinding(binding)
                calls.append(1)
                if len(calls) == part:
                    self.err.update_inplace(np.asarray(np.nan, np.float32))

        self.grad_sess = Spy()

    monkeypatch.setattr(AccumulatingSession, "_bind_training", patched)


@pytest.mark.parametrize("part", [1, 2])
def test_a_nan_recon_error_of_any_part_is_returned(art, monkeypatch, part):
    """The step's recon_error is the largest over its parts; a NaN one (which the runner's
    ``not err <= tolerance`` refuses) was dropped by Python's ``max(0.0, nan) == 0.0``."""
    from edgesnn.export.accumulate_session import AccumulatingSession
    from edgesnn.export.artifacts import validate_artifact_dir
    from edgesnn.export.runner import import_plain_ort

    _nan_err_on_part(monkeypatch, part)
    manifest = validate_artifact_dir(art / "art")
    with np.load(art / "art" / "init.npz") as npz:
        start = {k: npz[k] for k in npz.files}
    acc = AccumulatingSession(import_plain_ort(), art / "art", manifest, start, threads=1, lean_memory=True, parts=3)
    acc.set_lr(0.05)
    g = np.random.default_rng(1)
    loss, _, err = acc.step((g.random((3 * B, 16)) * 2).astype(np.float32), g.integers(0, 4, 3 * B))
    assert math.isfinite(loss)
    assert math.isnan(err), err


def test_the_runner_stops_on_a_nan_recon_error_with_accumulate(art, tmp_path, monkeypatch):
    """Without --accumulate a NaN recon_error stops the run (step 1); with it, the run went on."""
    from edgesnn.export.runner import StepCheckError, finetune

    monkeypatch.setattr("edgesnn.export.step_runner.training_modules_imported", lambda: [])  # torch is loaded here
    _nan_err_on_part(monkeypatch, 2)
    with pytest.raises(StepCheckError, match=r"^step 1: RevLIF reconstruction error nan exceeds"):
        finetune(art / "art", art / "data.npz", 1, out_dir=tmp_path / "o", threads=1, log=lambda s: None,
                 holdout=0.0, accumulate=3)
    assert not (tmp_path / "o" / "state.npz").exists()
