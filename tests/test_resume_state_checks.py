"""``edgesnn train --resume`` refuses, in one line naming the checkpoint and the field and before any
training step, a resume payload it cannot continue from (edited, or not written by edgesnn train):

* Adam state (``exp_avg`` / ``exp_avg_sq`` / ``step``) of another shape, dtype, count or value than
  the parameters, other param_groups, or another optimizer's state (SGD's ``momentum_buffer``):
  ``load_state_dict`` took them and the run crashed at the first step, cast them silently, or
  started the moments again;
* a ``train_config`` holding tensors (the settings comparison was a traceback);
* a cosine scheduler state, history rows or ``world_size`` of other types or counts.
"""

from __future__ import annotations

import copy

import pytest
import torch

from edgesnn.checkpoint import CheckpointError
from edgesnn.training.loop import TrainConfig, config_diff, train

CFG = dict(dataset="digits", model="mlp", hidden=[16, 16], timesteps=2, batch_size=128, seed=3, backend="torch")
QUIET = dict(progress=False, log=lambda s: None)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A constant and a cosine checkpoint stopped by max_steps 14 inside epoch 2 (loaded dicts)."""
    out = {}
    for sched in ("constant", "cosine"):
        path = tmp_path_factory.mktemp(sched) / "ck.pt"
        train(TrainConfig(epochs=2, lr_schedule=sched, **CFG), checkpoint=str(path), max_steps=14, **QUIET)
        out[sched] = torch.load(path, weights_only=True)
    return out


def _resume(stored, tmp_path, edit, sched="constant", started=None):
    """Write the edited checkpoint, resume it for 2 more steps; returns (path, report)."""
    ck = copy.deepcopy(stored[sched])
    edit(ck)
    path = tmp_path / "edited.pt"
    torch.save(ck, path)
    started = [] if started is None else started
    report = train(TrainConfig(epochs=2, lr_schedule=sched, **CFG), checkpoint=str(path), resume=True, max_steps=16,
                   before_training=lambda: started.append(1), **QUIET)
    return path, report


def _refused(stored, tmp_path, edit, needles, sched="constant"):
    path, started = tmp_path / "edited.pt", []
    with pytest.raises(CheckpointError) as info:
        _resume(stored, tmp_path, edit, sched, started)
    assert not started, "refused after training had begun"
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("--resume: ") and str(path) in msg, msg
    for needle in needles:
        assert needle in msg, msg
    assert torch.load(path, weights_only=True)["steps"] == 14  # nothing trained, nothing written


def _sgd(ck):  # what torch.optim.SGD(momentum=0.9).state_dict() holds for the same parameters
    o = ck["optimizer_state"]
    o["state"] = {k: {"momentum_buffer": v["exp_avg"]} for k, v in o["state"].items()}
    o["param_groups"] = [{"lr": 1e-3, "momentum": 0.9, "dampening": 0, "weight_decay": 0, "nesterov": False,
                          "maximize": False, "foreach": None, "differentiable": False, "fused": None,
                          "params": o["param_groups"][0]["params"]}]


def _state(ck):
    return ck["optimizer_state"]["state"]


OPTIMIZER_EDITS = {
    "exp_avg-transposed": (lambda ck: _state(ck)[0].update(exp_avg=_state(ck)[0]["exp_avg"].t().contiguous()),
                           ["state[0] exp_avg", "[64, 16]"]),
    "exp_avg_sq-float64": (lambda ck: _state(ck)[1].update(exp_avg_sq=_state(ck)[1]["exp_avg_sq"].double()),
                           ["state[1] exp_avg_sq", "float64"]),
    "exp_avg-bool": (lambda ck: _state(ck)[2].update(exp_avg=_state(ck)[2]["exp_avg"].bool()), ["state[2] exp_avg"]),
    "all-entries-missing": (lambda ck: _state(ck).clear(), ["optimizer_state state is empty after 14 step(s)"]),
    "nan-moment": (lambda ck: _state(ck)[0]["exp_avg"].view(-1)[0].fill_(float("nan")), ["state[0] exp_avg", "NaN"]),
    "negative-second-moment": (lambda ck: _state(ck)[4]["exp_avg_sq"].view(-1)[0].fill_(-1.0), ["state[4] exp_avg_sq"]),
    "step-negative": (lambda ck: _state(ck)[0].update(step=torch.tensor(-1.0)), ["state[0] step"]),
    "step-fraction": (lambda ck: _state(ck)[0].update(step=torch.tensor(14.5)), ["state[0] step"]),
    "step-nan": (lambda ck: _state(ck)[0].update(step=torch.tensor(float("nan"))), ["state[0] step"]),
    "step-past-the-steps": (lambda ck: _state(ck)[5].update(step=torch.tensor(15.0)), ["state[5] step", "within 1..14"]),
    "two-groups": (lambda ck: ck["optimizer_state"]["param_groups"].append(
        dict(ck["optimizer_state"]["param_groups"][0], params=[])), ["param_groups", "2 groups"]),
    "betas-edited": (lambda ck: ck["optimizer_state"]["param_groups"][0].update(betas=(0.5, 0.999)), ["betas"]),
    "lr-a-string": (lambda ck: ck["optimizer_state"]["param_groups"][0].update(lr="0.001"), ["param_groups[0] lr"]),
    "sgd-momentum-state": (_sgd, ["optimizer_state is not Adam's", "momentum"]),
}


@pytest.mark.parametrize("name", list(OPTIMIZER_EDITS))
def test_optimizer_state_the_run_cannot_continue_is_refused_before_any_step(stored, tmp_path, name):
    """The transposed moment was a RuntimeError traceback at the first step; float64 / bool moments
    were cast silently; missing entries restarted Adam's moments silently; NaN moments and bad step
    counts trained NaN weights until the loss check stopped the run; SGD state was a KeyError."""
    edit, needles = OPTIMIZER_EDITS[name]
    _refused(stored, tmp_path, edit, needles)


def test_a_train_config_holding_tensors_is_one_line_naming_the_field(stored, tmp_path):
    """``hidden`` stored as a tensor made config_diff raise 'Boolean value of Tensor ... ambiguous'."""
    _refused(stored, tmp_path, lambda ck: ck["train_config"].update(hidden=torch.tensor([16, 16])),
             ["train_config['hidden']", "torch.Tensor", "plain data"])
    diff = config_diff({"hidden": torch.tensor([16, 32])}, {"hidden": [16, 16]})  # direct callers: compared safely
    assert len(diff) == 1 and diff[0].startswith("hidden (stored tensor([16, 32]), given [16, 16])")


@pytest.mark.parametrize("key, value, needle", [
    ("last_epoch", "14", "lr_schedule state last_epoch"),
    ("base_lrs", [1.0], "lr_schedule state base_lrs"),
    ("optimizer", None, "lr_schedule state holds 'optimizer'"),  # load_state_dict would replace the scheduler's optimizer
    ("step", 3, "lr_schedule state holds 'step'"),  # ... or its step() method
])
def test_a_cosine_scheduler_state_it_cannot_continue_is_refused(stored, tmp_path, key, value, needle):
    _refused(stored, tmp_path, lambda ck: ck["lr_schedule"]["state"].update({key: value}), [needle], sched="cosine")


def _row(i, **edit):
    return lambda ck: ck["metrics"]["history"][i].update(edit)


@pytest.mark.parametrize("edit, needle", [
    (_row(1, loss="abc"), "metrics history[1] loss"),  # the partial row this run adds to: float('abc') mid-run
    (_row(1, samples=None), "metrics history[1] samples"),
    (_row(0, epoch=2), "history[0] is epoch 2"),
    (lambda ck: ck["metrics"]["history"].insert(0, dict(ck["metrics"]["history"][0])), "history[1] is epoch 1"),
    (lambda ck: ck.update(world_size=None), "world_size is None"),  # int(None): a TypeError traceback
])
def test_history_rows_and_counts_it_cannot_continue_are_refused(stored, tmp_path, edit, needle):
    _refused(stored, tmp_path, edit, [needle])


def test_a_state_with_plain_step_numbers_still_resumes(stored, tmp_path):
    """Older torch stored Adam's ``step`` as a number: still resumed, and training continues."""
    def plain(ck):
        for entry in _state(ck).values():
            entry["step"] = float(entry["step"])
    _, report = _resume(stored, tmp_path, plain)
    assert report["steps"] == 16 and [r["epoch"] for r in report["history"]] == [1, 2]


def test_a_parameter_without_adam_state_or_with_fewer_steps_still_resumes(stored, tmp_path):
    """Adam keeps no entry for a parameter that never had a gradient, and counts only the steps in
    which it had one: a checkpoint with such an entry missing, or a smaller step, is one edgesnn
    train could write and resumes as torch would (not refused)."""
    def fewer(ck):
        _state(ck).pop(3)
        _state(ck)[5]["step"] = torch.tensor(3.0)
    _, report = _resume(stored, tmp_path, fewer)
    assert report["steps"] == 16 and [r["epoch"] for r in report["history"]] == [1, 2]


def test_scheduler_keys_of_another_torch_version_still_resume(stored, tmp_path):
    """torch 2.13 keeps ``_is_initial`` in CosineAnnealingLR's state, 2.5 does not: a checkpoint
    carried between versions (either way) holds private keys this torch's state lacks; they are
    state, not a damaged file (the first version of the check refused a 2.13 checkpoint on 2.5)."""
    def other_version(ck):
        ck["lr_schedule"]["state"]["_a_key_of_another_torch"] = True
    _, report = _resume(stored, tmp_path, other_version, sched="cosine")
    assert report["steps"] == 16
