"""``edgesnn-device --lr-schedule``: constant (the default, unchanged) or per-step cosine decay.

* The cosine rates are ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=K)`` stepped once per
  batch, K = epochs x steps per epoch; the onnx-step runner's weights equal a hand-driven
  :class:`StepSession` fed those rates step by step, bit for bit.
* The default (constant) run trains exactly as a hand-driven session at the one rate and records
  no schedule in its state (what older runners wrote); such a state resumes as constant.
* A cosine run interrupted after an epoch and resumed with the epochs it had left equals the
  uninterrupted run bit for bit (state, params, the schedule's horizon); a resume with another
  ``--lr-schedule``, past the recorded horizon or of a finished run is refused in one line.
* The legacy onnx-training path sets ORT's optimizer rate per step: it equals a hand-driven ORT
  training loop fed torch's rates, and resumes the same way.

Every run goes through the runner in its own (torch-free) interpreter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch

from test_export_common import needs_ort, needs_onnx_runtime, run_python
from test_export_step import _RUNNER
from _lr_rates import torch_cosine

BATCH, N, CLASSES, LR = 8, 36, 4, 0.05  # 5 steps per epoch, the last filled with 4 repeated samples
STEPS_PER_EPOCH = -(-N // BATCH)

#: ``finetune(**json.loads(argv[1]))`` in a fresh interpreter; ``stop_after`` raises Ctrl-C from the
#: log after that many epoch lines (the output then holds those epochs, as after a real Ctrl-C).
_FINETUNE = """
import json, sys
from edgesnn.export.runner import finetune
from edgesnn.export.run_state import RunInterrupted
kw = json.loads(sys.argv[1]); stop = kw.pop('stop_after', None); seen = []
def log(line):
    seen.append(line)
    if stop is not None and sum(s.startswith('epoch ') for s in seen) >= stop:
        raise KeyboardInterrupt
try:
    m = finetune(log=log, **kw)
    print(json.dumps({'ok': True, 'log': seen, 'torch': 'torch' in sys.modules}))
except RunInterrupted as exc:
    print(json.dumps({'interrupted': exc.message, 'log': seen}))
except Exception as exc:
    print(json.dumps({'error': type(exc).__name__, 'message': str(exc), 'log': seen}))
"""


def _finetune(art: Path, data: Path, out: Path, **kw) -> Dict:
    args = {"artifact_dir": str(art), "data": str(data), "out_dir": str(out), "threads": 1, "holdout": 0.0, **kw}
    proc = run_python(_FINETUNE, json.dumps(args), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _model():
    from edgesnn.models import build_model

    torch.manual_seed(0)
    return build_model("mlp", (16,), CLASSES, 4, neuron="revlif", hidden=(8, 8)).eval()


def _data(path: Path) -> Path:
    rng = np.random.default_rng(5)
    np.savez(path, x=rng.random((N, 16), dtype=np.float32), y=rng.integers(0, CLASSES, N).astype(np.int64))
    return path


@pytest.fixture(scope="module")
def step_art(tmp_path_factory):
    from edgesnn.export.onnx_step import export_onnx_step

    tmp = tmp_path_factory.mktemp("lr-step")
    export_onnx_step(_model(), tmp / "art", BATCH, "adamw", LR)
    return tmp / "art", _data(tmp / "data.npz")


def _arrays(path: Path) -> Dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: np.array(npz[k]) for k in npz.files}


def _same(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> bool:
    return sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def _by_hand(art: Path, data: Path, epochs: int, rates: List[float]) -> Dict[str, np.ndarray]:
    """A StepSession driven by hand: the runner's batch orders, ``rates[k]`` at step k."""
    from edgesnn.export.artifacts import STEP_INIT, validate_artifact_dir
    from edgesnn.export.run_state import epoch_batches
    from edgesnn.export.runner import import_plain_ort
    from edgesnn.export.step_runner import StepSession

    manifest = validate_artifact_dir(art)
    d = _arrays(data)
    sess = StepSession(import_plain_ort(), art, manifest, _arrays(art / STEP_INIT), threads=1, lean_memory=True)
    k = 0
    for epoch in range(epochs):
        for idx in epoch_batches(N, BATCH, 0, epoch)[0]:
            sess.set_lr(rates[k])
            sess.step(d["x"][idx], d["y"][idx])
            k += 1
    return sess.values()


def test_cosine_rates_are_torchs_cosine_annealing():
    from edgesnn.export.run_schedule import LrSchedule

    for lr, total in ((0.05, 15), (1e-3, 7), (0.3, 1)):
        ours = [LrSchedule("cosine", lr, 1, total).lr(k) for k in range(total)]
        np.testing.assert_allclose(ours, torch_cosine(lr, total), rtol=1e-12, atol=0)
        assert np.array_equal(np.float32(ours), np.float32(torch_cosine(lr, total)))  # what the graph is fed
    assert [LrSchedule("constant", 0.05).lr(k) for k in range(3)] == [0.05] * 3
    with pytest.raises(ValueError, match="outside its horizon"):
        LrSchedule("cosine", 0.05, 1, 15).lr(15)


@needs_onnx_runtime
def test_step_cosine_run_equals_torch_schedule_and_constant_is_unchanged(step_art, tmp_path):
    art, data = step_art
    epochs, total = 3, 3 * STEPS_PER_EPOCH
    rates = torch_cosine(LR, total)
    r = _finetune(art, data, tmp_path / "cos", epochs=epochs, lr_schedule="cosine")
    assert r.get("ok") and r["torch"] is False, r
    m = json.loads((tmp_path / "cos" / "metrics.json").read_text())
    assert (m["lr_schedule"], m["lr_schedule_epochs"], m["lr_schedule_steps"]) == ("cosine", epochs, total)
    last = [rates[(e + 1) * STEPS_PER_EPOCH - 1] for e in range(epochs)]
    np.testing.assert_allclose(m["epoch_lr"], last, rtol=1e-12)
    assert [line.split(", lr ")[-1] for line in r["log"] if line.startswith("epoch ")] == [f"{v:.4g}" for v in last]
    state = _arrays(tmp_path / "cos" / "state.npz")
    assert json.loads(str(state["runner.settings"]))["lr_schedule"] == {"name": "cosine", "epochs": 3, "steps": total}
    hand = _by_hand(art, data, epochs, rates)
    assert all(np.array_equal(state[k], v) for k, v in hand.items()), "cosine run != hand-driven torch rates"

    # the default: one rate, as before; nothing about a schedule in the state
    r = _finetune(art, data, tmp_path / "const", epochs=2)
    assert r.get("ok"), r
    m = json.loads((tmp_path / "const" / "metrics.json").read_text())
    assert (m["lr_schedule"], m["lr_schedule_steps"], m["epoch_lr"]) == ("constant", None, [LR, LR])
    state = _arrays(tmp_path / "const" / "state.npz")
    assert "lr_schedule" not in json.loads(str(state["runner.settings"]))
    hand = _by_hand(art, data, 2, [LR] * (2 * STEPS_PER_EPOCH))
    assert all(np.array_equal(state[k], v) for k, v in hand.items()), "constant run != hand-driven constant rate"
    assert not np.array_equal(_arrays(tmp_path / "cos" / "params.npz")[next(iter(hand))],
                              _by_hand(art, data, 3, [LR] * total)[next(iter(hand))])  # the schedule really acts


@needs_onnx_runtime
def test_step_cosine_resume_equals_one_run_and_refuses_other_schedules(step_art, tmp_path):
    art, data = step_art
    assert _finetune(art, data, tmp_path / "full", epochs=3, lr_schedule="cosine").get("ok")
    r = _finetune(art, data, tmp_path / "split", epochs=3, lr_schedule="cosine", stop_after=1)
    assert "after epoch 1; --resume --epochs 2 finishes the run" in r["interrupted"], r
    for more in (1, 1):  # two resumes of one epoch each
        r = _finetune(art, data, tmp_path / "split", epochs=more, lr_schedule="cosine", resume=True)
        assert r.get("ok"), r
    assert _same(_arrays(tmp_path / "full" / "state.npz"), _arrays(tmp_path / "split" / "state.npz"))
    assert _same(_arrays(tmp_path / "full" / "params.npz"), _arrays(tmp_path / "split" / "params.npz"))
    full, split = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("full", "split"))
    assert split["epoch_lr"] == full["epoch_lr"][2:] and split["lr_schedule_steps"] == full["lr_schedule_steps"]

    def refused(out, **kw):
        r = _finetune(art, data, tmp_path / out, resume=True, **kw)
        assert r.get("error") == "UsageError" and "\n" not in r["message"], r
        return r["message"]

    assert "finished --lr-schedule cosine run" in refused("split", epochs=1, lr_schedule="cosine")
    r = _finetune(art, data, tmp_path / "part", epochs=3, lr_schedule="cosine", stop_after=1)
    assert "interrupted" in r
    msg = refused("part", epochs=3, lr_schedule="cosine")
    assert msg.startswith("--epochs:") and "pass --epochs 2 or fewer" in msg, msg
    msg = refused("part", epochs=1)  # the default, constant
    assert "--lr-schedule cosine (now constant)" in msg, msg
    assert _finetune(art, data, tmp_path / "const", epochs=1).get("ok")
    assert "--lr-schedule constant (now cosine)" in refused("const", epochs=1, lr_schedule="cosine")

    # an output folder of a runner without schedules (no lr_schedule recorded; or no settings at all)
    for drop_all in (False, True):
        state = _arrays(tmp_path / "const" / "state.npz")
        if drop_all:
            del state["runner.settings"]
        np.savez(tmp_path / "const" / "state.npz", **state)
        assert "--lr-schedule constant (now cosine)" in refused("const", epochs=1, lr_schedule="cosine")
        r = _finetune(art, data, tmp_path / "const", epochs=1, resume=True)
        assert r.get("ok"), r
        assert json.loads((tmp_path / "const" / "metrics.json").read_text())["lr_schedule"] == "constant"


@needs_onnx_runtime
def test_bad_schedule_is_one_line_and_the_cli_prints_the_rate(step_art, tmp_path):
    art, data = step_art
    r = _finetune(art, data, tmp_path / "bad", epochs=1, lr_schedule="linear")
    assert r.get("error") == "UsageError" and r["message"].startswith("--lr-schedule:"), r
    proc = run_python(_RUNNER, str(art), "--data", str(data), "--out", str(tmp_path / "cli"), "--lr-schedule", "linear")
    assert json.loads(proc.stdout.strip().splitlines()[-1])["code"] == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "--lr-schedule" in proc.stderr, proc.stderr
    proc = run_python(_RUNNER, str(art), "--data", str(data), "--out", str(tmp_path / "cli"), "--lr-schedule", "cosine",
                      "--epochs", "2", "--holdout", "0", "--threads", "1", timeout=300)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"code": 0, "bad": [], "ort": True}, proc.stderr[-2000:]
    rates = torch_cosine(LR, 2 * STEPS_PER_EPOCH)
    assert "epoch 2/2: loss" in proc.stdout and proc.stdout.count(", lr ") == 2, proc.stdout
    assert f", lr {rates[-1]:.4g}" in proc.stdout, proc.stdout


# ----------------------------------------------------------------------------- legacy onnx-training


def legacy_artifacts(tmp: Path):
    """Legacy onnx-training artifacts of :func:`_model` in ``tmp/art``, and device data: ``(art, data)``."""
    from edgesnn.export.onnx_training import export_onnx_training

    export_onnx_training(_model(), tmp / "art", BATCH, "sgd", LR)
    return tmp / "art", _data(tmp / "data.npz")


@pytest.fixture(scope="module")
def legacy_art(tmp_path_factory):
    return legacy_artifacts(tmp_path_factory.mktemp("lr-legacy"))


@needs_ort
def test_legacy_cosine_sets_the_rate_per_step_and_resumes(legacy_art, tmp_path):
    from onnxruntime.training.api import CheckpointState, Module, Optimizer

    from edgesnn.export.artifacts import CHECKPOINT, EVAL_MODEL, OPTIMIZER_MODEL, TRAINING_MODEL
    from edgesnn.export.run_state import epoch_batches

    art, data = legacy_art
    epochs, total = 2, 2 * STEPS_PER_EPOCH
    rates = torch_cosine(LR, total)
    r = _finetune(art, data, tmp_path / "full", epochs=epochs, lr_schedule="cosine")
    assert r.get("ok") and r["torch"] is False, r
    m = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert (m["format"], m["lr_schedule"], m["lr_schedule_steps"]) == ("onnx-training", "cosine", total)
    np.testing.assert_allclose(m["epoch_lr"], [rates[STEPS_PER_EPOCH - 1], rates[-1]], rtol=1e-12)

    # by hand with ORT's training API, fed torch's rates
    state = CheckpointState.load_checkpoint(str(art / CHECKPOINT))
    module = Module(str(art / TRAINING_MODEL), state, str(art / EVAL_MODEL), device="cpu")
    opt = Optimizer(str(art / OPTIMIZER_MODEL), module)
    module.train()
    d, k = _arrays(data), 0
    for epoch in range(epochs):
        for idx in epoch_batches(N, BATCH, 0, epoch)[0]:
            opt.set_learning_rate(rates[k])
            module(d["x"][idx], d["y"][idx])
            opt.step()
            module.lazy_reset_grad()
            k += 1
    got = _arrays(tmp_path / "full" / "params.npz")
    trained = [n for n in got if n in state.parameters]
    assert trained and all(np.array_equal(got[n], np.asarray(state.parameters[n].data)) for n in trained)

    r = _finetune(art, data, tmp_path / "split", epochs=epochs, lr_schedule="cosine", stop_after=1)
    assert "--resume --epochs 1 finishes the run" in r["interrupted"], r
    r = _finetune(art, data, tmp_path / "split", epochs=1, resume=True)
    assert r.get("error") == "UsageError" and "--lr-schedule cosine (now constant)" in r["message"], r
    assert _finetune(art, data, tmp_path / "split", epochs=1, lr_schedule="cosine", resume=True).get("ok")
    assert _same(got, _arrays(tmp_path / "split" / "params.npz"))
    r = _finetune(art, data, tmp_path / "split", epochs=1, lr_schedule="cosine", resume=True)
    assert r.get("error") == "UsageError" and "finished --lr-schedule cosine run" in r["message"], r
