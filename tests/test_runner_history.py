"""``edgesnn-device``: the whole run's per-epoch ``history`` across resumes, and ``--keep-best``.

* ``metrics.json``'s ``history`` of a run interrupted after an epoch and resumed equals the
  uninterrupted run's (epoch, loss, lr, steps); ``epoch_loss`` / ``epoch_lr`` keep covering this
  invocation only. The printed epoch lines and stop messages number epochs as ``history`` does. An output of an older runner (no ``history``) resumes, its rows rebuilt from what
  it has: ``history_complete`` true when they cover every epoch, else false with a ``history_note``.
* ``--keep-best`` keeps ``best_params.npz`` of the best held-out epoch (``best_epoch`` /
  ``best_accuracy``), the same across an interrupt and resume as in one run; it folds back into a
  checkpoint like ``params.npz``. Refused without held-out data, on legacy artifacts, and on a resume
  that adds or drops it.

Every run goes through the runner in its own (torch-free) interpreter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

from test_export_common import needs_onnx_runtime, needs_ort, run_python
from test_export_step import _RUNNER, _export_cli
from test_runner_lr_schedule import BATCH, LR, _arrays, _data, _finetune, _model, _same, legacy_artifacts

KEYS = ("epoch", "loss", "lr", "steps")


@pytest.fixture(scope="module")
def legacy_art(tmp_path_factory):
    return legacy_artifacts(tmp_path_factory.mktemp("hist-legacy"))


def _metrics(out: Path) -> Dict:
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    from edgesnn.checkpoint import save_checkpoint
    from edgesnn.export.onnx_step import export_onnx_step

    tmp = tmp_path_factory.mktemp("hist-step")
    model = _model()
    export_onnx_step(model, tmp / "art", BATCH, "adamw", LR)
    ck = save_checkpoint(tmp / "model.ckpt", model.config, model.state_dict(), epoch=1)
    return tmp / "art", _data(tmp / "data.npz"), ck


@needs_onnx_runtime
def test_history_is_cumulative_across_resumes(art, tmp_path):
    art, data, _ = art
    assert _finetune(art, data, tmp_path / "full", epochs=3, lr_schedule="cosine").get("ok")
    r = _finetune(art, data, tmp_path / "split", epochs=3, lr_schedule="cosine", stop_after=1)
    assert "interrupted" in r, r
    r = _finetune(art, data, tmp_path / "split", epochs=2, lr_schedule="cosine", resume=True)
    assert r.get("ok"), r
    full, split = _metrics(tmp_path / "full"), _metrics(tmp_path / "split")
    assert split["total_epochs"] == 3 and len(split["epoch_loss"]) == 2  # per-invocation lists as before
    assert split["history_complete"] is True and "history_note" not in split
    assert [row["epoch"] for row in split["history"]] == [1, 2, 3]
    assert [[row[k] for k in KEYS] for row in split["history"]] == [[row[k] for k in KEYS] for row in full["history"]]
    assert [row["loss"] for row in split["history"]][1:] == split["epoch_loss"]
    assert [row["lr"] for row in full["history"]] == full["epoch_lr"]
    assert split["history"][-1]["steps"] == split["total_steps"]
    assert split["history"][-1]["accuracy"] == split["accuracy_after"]


def _epoch_lines(log):
    """``[(E, N, lr)]`` of the ``epoch E/N: ..., lr X`` lines in ``log``."""
    out = []
    for line in log:
        if line.startswith("epoch "):
            e, n = line.split()[1].rstrip(":").split("/")
            out.append((int(e), int(n), line.rsplit(", lr ", 1)[1]))
    return out


@needs_onnx_runtime
def test_resumed_epoch_lines_number_the_whole_run_as_metrics_does(art, tmp_path):
    """A cosine run of 4 epochs stopped after epoch 1, resumed for 1 (stopped again), then for the 2
    left: every epoch line and stop message counts over the whole run (``epoch 3/4``, not ``1/2``),
    as ``history`` does, and shows the rate ``history`` records for that epoch (the schedule's step
    index runs over the whole run too: the rates equal the uninterrupted run's)."""
    art, data, _ = art
    full = _finetune(art, data, tmp_path / "full", epochs=4, lr_schedule="cosine")
    assert full.get("ok"), full
    out = tmp_path / "split"
    r1 = _finetune(art, data, out, epochs=4, lr_schedule="cosine", stop_after=1)
    r2 = _finetune(art, data, out, epochs=3, lr_schedule="cosine", resume=True, stop_after=1)
    assert "interrupted in epoch 2/4 " in r1["interrupted"], r1
    assert "interrupted in epoch 3/4 " in r2["interrupted"] and "after epoch 2;" in r2["interrupted"], r2
    r3 = _finetune(art, data, out, epochs=2, lr_schedule="cosine", resume=True)
    assert r3.get("ok"), r3
    lines = [_epoch_lines(r["log"]) for r in (r1, r2, r3)]
    assert [[(e, n) for e, n, _ in part] for part in lines] == [[(1, 4)], [(2, 4)], [(3, 4), (4, 4)]]
    history = _metrics(out)["history"]
    assert [row["epoch"] for row in history] == [e for part in lines for e, _, _ in part]
    assert [f"{row['lr']:.4g}" for row in history] == [lr for part in lines for _, _, lr in part]
    assert [row["lr"] for row in history] == [row["lr"] for row in _metrics(tmp_path / "full")["history"]]
    assert _epoch_lines(full["log"]) == [e for part in lines for e in part]


@needs_onnx_runtime
def test_an_old_output_without_history_resumes_and_says_so(art, tmp_path):
    art, data, _ = art
    for tail in (False, True):
        out = tmp_path / f"old-{tail}"
        assert "interrupted" in _finetune(art, data, out, epochs=3, stop_after=2)
        m = _metrics(out)
        for key in [k for k in m if k.startswith(("history", "best_", "keep_best"))]:
            del m[key]  # what a runner without history wrote
        if tail:
            m["epoch_loss"] = m["epoch_loss"][1:]  # its last invocation trained only epoch 2 of 2
        (out / "metrics.json").write_text(json.dumps(m))
        r = _finetune(art, data, out, epochs=1, resume=True)
        assert r.get("ok"), r
        assert any("no per-epoch history" in line for line in r["log"]), r["log"]
        new = _metrics(out)
        # every epoch rebuilt (its one invocation trained them all): complete; else the gap is noted
        assert new["history_complete"] is (not tail) and ("history_note" in new) is tail
        assert not tail or "no per-epoch history" in new["history_note"]
        assert [row["epoch"] for row in new["history"]] == ([2, 3] if tail else [1, 2, 3])
        assert [row["loss"] for row in new["history"]] == m["epoch_loss"] + new["epoch_loss"]
        assert new["history"][-2]["steps"] == m["total_steps"]
        r = _finetune(art, data, out, epochs=1, resume=True)  # the gap stays noted on the next resume
        assert r.get("ok"), r
        new = _metrics(out)
        assert new["history_complete"] is (not tail) and ("history_note" in new) is tail
        assert [row["epoch"] for row in new["history"]] == ([2, 3, 4] if tail else [1, 2, 3, 4])
    (out / "metrics.json").unlink()  # no metrics at all: still resumes, with what it has (nothing)
    r = _finetune(art, data, out, epochs=1, resume=True)
    assert r.get("ok"), r
    new = _metrics(out)
    assert new["history_complete"] is False and [row["epoch"] for row in new["history"]] == [5]


@needs_onnx_runtime
def test_keep_best_survives_resume_and_folds_back(art, tmp_path):
    art, data, ck = art
    kw = dict(holdout=0.25, keep_best=True)
    assert _finetune(art, data, tmp_path / "full", epochs=3, **kw).get("ok")
    r = _finetune(art, data, tmp_path / "split", epochs=3, stop_after=1, **kw)
    assert "interrupted" in r, r
    m1 = _metrics(tmp_path / "split")
    assert (m1["best_epoch"], m1["best_accuracy"]) == (1, m1["history"][0]["accuracy"])
    assert _same(_arrays(tmp_path / "split" / "best_params.npz"), _arrays(tmp_path / "split" / "params.npz"))
    assert _finetune(art, data, tmp_path / "split", epochs=2, resume=True, **kw).get("ok")
    full, split = _metrics(tmp_path / "full"), _metrics(tmp_path / "split")
    accs = [row["accuracy"] for row in full["history"]]
    assert all(a is not None for a in accs)
    assert full["best_epoch"] == int(np.argmax(accs)) + 1 and full["best_accuracy"] == max(accs)
    assert (split["best_epoch"], split["best_accuracy"]) == (full["best_epoch"], full["best_accuracy"])
    assert [row["accuracy"] for row in split["history"]] == accs
    assert _same(_arrays(tmp_path / "full" / "best_params.npz"), _arrays(tmp_path / "split" / "best_params.npz"))
    assert set(_arrays(tmp_path / "full" / "best_params.npz")) == set(_arrays(tmp_path / "full" / "params.npz"))

    # the host folds best_params.npz back like params.npz
    from edgesnn.export.prepare import model_from_checkpoint

    assert _export_cli(["--checkpoint", str(ck), "--format", "checkpoint", "--params",
                        str(tmp_path / "full" / "best_params.npz"), "--out", str(tmp_path / "best.ckpt")]) == 0
    tuned, _ = model_from_checkpoint(tmp_path / "best.ckpt")
    best = _arrays(tmp_path / "full" / "best_params.npz")
    state = tuned.state_dict()
    folded = [k for k in best if k in state]
    assert folded
    for k in folded:
        np.testing.assert_array_equal(state[k].detach().numpy(), best[k])


@needs_onnx_runtime
def test_keep_best_refusals_are_one_line(art, tmp_path):
    art, data, _ = art
    r = _finetune(art, data, tmp_path / "none", epochs=1, keep_best=True)  # holdout 0: no held-out data
    assert r.get("error") == "UsageError" and r["message"].startswith("--keep-best:"), r
    assert "\n" not in r["message"] and not (tmp_path / "none").exists()
    proc = run_python(_RUNNER, str(art), "--data", str(data), "--out", str(tmp_path / "cli"), "--holdout", "0",
                      "--keep-best")
    assert json.loads(proc.stdout.strip().splitlines()[-1])["code"] == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "--keep-best" in proc.stderr, proc.stderr

    assert _finetune(art, data, tmp_path / "kb", epochs=1, holdout=0.25, keep_best=True).get("ok")
    r = _finetune(art, data, tmp_path / "kb", epochs=1, holdout=0.25, resume=True)
    assert r.get("error") == "UsageError" and "--keep-best on (now off)" in r["message"], r
    assert _finetune(art, data, tmp_path / "plain", epochs=1, holdout=0.25).get("ok")
    r = _finetune(art, data, tmp_path / "plain", epochs=1, holdout=0.25, resume=True, keep_best=True)
    assert r.get("error") == "UsageError" and "--keep-best off (now on)" in r["message"], r
    assert not (tmp_path / "plain" / "best_params.npz").exists()
    # through the CLI: a keep-best resume continues
    proc = run_python(_RUNNER, str(art), "--data", str(data), "--out", str(tmp_path / "kb"), "--holdout", "0.25",
                      "--keep-best", "--resume", "--threads", "1", timeout=300)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"code": 0, "bad": [], "ort": True}, proc.stderr[-2000:]
    m = _metrics(tmp_path / "kb")
    assert m["total_epochs"] == 2 and m["best_epoch"] in (1, 2) and len(m["history"]) == 2
    assert (f"best epoch {m['best_epoch']} of 2: accuracy {m['best_accuracy']:.4f} (its parameters: best_params.npz "
            "beside params.npz)") in proc.stdout  # the summary names it


@needs_ort
def test_legacy_history_across_resume_and_keep_best_refused(legacy_art, tmp_path):
    art, data = legacy_art
    assert "interrupted" in _finetune(art, data, tmp_path / "leg", epochs=2, stop_after=1)
    assert _finetune(art, data, tmp_path / "leg", epochs=1, resume=True).get("ok")
    m = _metrics(tmp_path / "leg")
    assert m["format"] == "onnx-training" and m["history_complete"] is True
    assert [row["epoch"] for row in m["history"]] == [1, 2] and m["history"][-1]["steps"] == m["total_steps"]
    assert m["history"][-1]["accuracy"] == m["accuracy_after"] and m["history"][-1]["loss"] == m["epoch_loss"][-1]
    r = _finetune(art, data, tmp_path / "leg-kb", epochs=1, holdout=0.25, keep_best=True)
    assert r.get("error") == "UsageError" and r["message"].startswith("--keep-best:") and "onnx-step" in r["message"], r
