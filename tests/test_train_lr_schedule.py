"""``edgesnn train --lr-schedule``: constant (the default, unchanged) or per-step cosine decay.

* The cosine rates are ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=K)`` stepped once per
  batch, K = --epochs x steps per epoch: Adam sees exactly torch's sequence (and the closed form
  ``lr * 0.5 * (1 + cos(pi k / K))`` to rounding).
* The default (constant) run trains at the one rate and stores nothing new: its checkpoint and
  report hold exactly the keys older versions wrote; such a checkpoint resumes as constant.
* A cosine run stopped by --max-steps inside an epoch, or killed after an epoch's checkpoint, and
  resumed (also in two steps, --epochs growing up to the horizon) equals one uninterrupted run,
  bit for bit (weights, optimizer and scheduler state).
* Refused in one line: another --lr-schedule than the checkpoint's, --epochs past a cosine run's
  horizon; constant runs may still grow --epochs.
* The CLI passes the flag (also with --plan), logs and reports the rate; --memopt and torchrun
  DDP (2 gloo ranks: every rank the same rates) keep working.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import List

import pytest
import torch
import torch.distributed as dist

from edgesnn import cli
from edgesnn.checkpoint import load_checkpoint
from edgesnn.errors import UsageError
from edgesnn.training import loop
from edgesnn.training.loop import TrainConfig, train

from _lr_rates import torch_cosine
from _ranks import run_ranks

# 1348 digits training samples: 11 steps of 128 per epoch (the last one 68 samples)
CFG = dict(dataset="digits", model="mlp", hidden=[16, 16], timesteps=2, batch_size=128, seed=3, backend="torch", lr=0.01)
PER_EPOCH = 11
OLD_KEYS = {"format", "version", "model_config", "model_state", "optimizer_state", "epoch", "epoch_offset", "metrics",
            "train_config", "world_size", "steps", "data_fingerprint", "data_content"}


def _quiet(_: str) -> None:
    return None


@pytest.fixture
def adam_rates(monkeypatch) -> List[float]:
    """Every rate Adam.step() runs with in this test, in order."""
    seen: List[float] = []
    original = torch.optim.Adam.step

    def step(self, *a, **kw):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *a, **kw)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    return seen


def _same_state(a: dict, b: dict) -> None:
    """Bit-identical weights, optimizer state, schedule and progress of two checkpoints."""
    assert a["model_state"].keys() == b["model_state"].keys()
    for k in a["model_state"]:
        assert torch.equal(a["model_state"][k], b["model_state"][k]), k
    sa, sb = a["optimizer_state"], b["optimizer_state"]
    assert sa["param_groups"] == sb["param_groups"]
    for i in sa["state"]:
        for k in sa["state"][i]:
            assert torch.equal(sa["state"][i][k], sb["state"][i][k]), (i, k)
    assert a.get("lr_schedule") == b.get("lr_schedule")
    assert (a["epoch"], a["steps"], a["epoch_offset"]) == (b["epoch"], b["steps"], b["epoch_offset"])


def test_cosine_rates_are_torchs_cosine_annealing(adam_rates):
    report = train(TrainConfig(epochs=2, lr_schedule="cosine", **CFG), progress=False, log=_quiet)
    total = 2 * PER_EPOCH
    assert report["steps"] == total and (report["lr_schedule"], report["lr_schedule_steps"]) == ("cosine", total)
    assert report["lr_schedule_epochs"] == 2 and report["config"]["lr_schedule"] == "cosine"
    assert adam_rates == torch_cosine(CFG["lr"], total)  # torch's own sequence, bit for bit
    closed = [CFG["lr"] * 0.5 * (1 + math.cos(math.pi * k / total)) for k in range(total)]
    assert adam_rates == pytest.approx(closed, rel=1e-12, abs=1e-18)
    assert [row["lr"] for row in report["history"]] == [adam_rates[PER_EPOCH - 1], adam_rates[-1]]


def test_constant_is_unchanged_and_stores_nothing_new(tmp_path, adam_rates):
    lines: List[str] = []
    report = train(TrainConfig(epochs=1, **CFG), checkpoint=str(tmp_path / "c.ckpt"), max_steps=5, progress=False,
                   log=lines.append)
    assert adam_rates == [CFG["lr"]] * 5
    ck = load_checkpoint(tmp_path / "c.ckpt")
    assert set(ck) == OLD_KEYS and "lr_schedule" not in ck["train_config"]
    assert "initial_lr" not in ck["optimizer_state"]["param_groups"][0]
    assert "lr_schedule" not in report["config"] and not any(k.startswith("lr_schedule") for k in report)
    assert all("lr" not in row for row in report["history"])
    assert not any(" lr " in line for line in lines), lines
    explicit = train(TrainConfig(epochs=1, lr_schedule="constant", **CFG), max_steps=5, progress=False, log=_quiet)
    assert explicit["history"][0]["loss"] == report["history"][0]["loss"]


def _full_and_split(tmp_path: Path, stop):
    full = tmp_path / "full.ckpt"
    train(TrainConfig(epochs=3, lr_schedule="cosine", **CFG), checkpoint=str(full), progress=False, log=_quiet)
    split = tmp_path / "split.ckpt"
    stop(split)
    return load_checkpoint(full), split


def test_cosine_resume_after_max_steps_equals_one_run(tmp_path):
    def stop(path):
        train(TrainConfig(epochs=3, lr_schedule="cosine", **CFG), checkpoint=str(path), max_steps=17, progress=False,
              log=_quiet)
        held = load_checkpoint(path)
        assert held["epoch_offset"] and held["lr_schedule"]["state"]["last_epoch"] == 17
    full, split = _full_and_split(tmp_path, stop)
    lines: List[str] = []
    report = train(TrainConfig(epochs=3, lr_schedule="cosine", **CFG), checkpoint=str(split), resume=True,
                   progress=False, log=lines.append)
    _same_state(load_checkpoint(split), full)
    assert [r["lr"] for r in report["history"]] == [r["lr"] for r in full["metrics"]["history"]]
    assert report["lr_schedule_steps"] == 3 * PER_EPOCH and sum("  lr " in s for s in lines) == 2
    lines.clear()  # resumed again: the finished curve is said so (raising --epochs would be refused)
    train(TrainConfig(epochs=3, lr_schedule="cosine", **CFG), checkpoint=str(split), resume=True, progress=False,
          log=lines.append)
    assert any("finished --lr-schedule cosine run (3 of 3 epochs)" in s for s in lines), lines


def test_cosine_resume_after_an_epochs_checkpoint_equals_one_run(tmp_path, monkeypatch):
    def stop(path):  # killed right after epoch 1's checkpoint was written
        original = loop.save_checkpoint

        def save_then_die(*a, **kw):
            original(*a, **kw)
            raise KeyboardInterrupt

        monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            train(TrainConfig(epochs=3, lr_schedule="cosine", **CFG), checkpoint=str(path), progress=False, log=_quiet)
        monkeypatch.setattr(loop, "save_checkpoint", original)
    full, split = _full_and_split(tmp_path, stop)
    assert load_checkpoint(split)["epoch"] == 1
    for epochs in (2, 3):  # --epochs grows up to the horizon: still the one curve
        train(TrainConfig(epochs=epochs, lr_schedule="cosine", **CFG), checkpoint=str(split), resume=True,
              progress=False, log=_quiet)
    _same_state(load_checkpoint(split), full)


def test_refusals_are_one_line_naming_the_flag(tmp_path):
    cos, const = tmp_path / "cos.ckpt", tmp_path / "const.ckpt"
    train(TrainConfig(epochs=2, lr_schedule="cosine", **CFG), checkpoint=str(cos), max_steps=3, progress=False,
          log=_quiet)
    train(TrainConfig(epochs=1, **CFG), checkpoint=str(const), max_steps=3, progress=False, log=_quiet)
    cases = [(cos, dict(epochs=2), "--lr-schedule: "), (const, dict(epochs=1, lr_schedule="cosine"), "--lr-schedule: "),
             (cos, dict(epochs=3, lr_schedule="cosine"), "--epochs: ")]
    for path, kw, head in cases:
        before = path.read_bytes()
        with pytest.raises(UsageError) as exc:
            train(TrainConfig(**{**CFG, **kw}), checkpoint=str(path), resume=True, progress=False, log=_quiet)
        msg = str(exc.value)
        assert msg.startswith(head) and "\n" not in msg, msg
        assert path.read_bytes() == before
    assert "trained with --lr-schedule cosine (now constant)" in str(
        pytest.raises(UsageError, train, TrainConfig(epochs=2, **CFG), checkpoint=str(cos), resume=True,
                      progress=False, log=_quiet).value)
    with pytest.raises(UsageError, match="^--lr-schedule: expected one of constant, cosine"):
        TrainConfig(lr_schedule="linear").validate()
    # a constant checkpoint (what older versions wrote: no schedule stored) resumes as constant; --epochs may grow
    report = train(TrainConfig(epochs=2, **CFG), checkpoint=str(const), resume=True, max_steps=14, progress=False,
                   log=_quiet)
    assert report["steps"] == 14 and "lr_schedule" not in report


def test_an_older_checkpoint_resumes_as_constant(tmp_path, adam_rates):
    """A checkpoint saved before the option (rewritten here with exactly the old key set) resumes
    as constant: same rate, no schedule stored afterwards."""
    path = tmp_path / "old.ckpt"
    train(TrainConfig(epochs=1, **CFG), checkpoint=str(path), max_steps=2, progress=False, log=_quiet)
    ck = torch.load(path, weights_only=True)
    assert set(ck) - {"tensor_digest"} == OLD_KEYS and "lr_schedule" not in ck["train_config"]
    adam_rates.clear()
    train(TrainConfig(epochs=1, **CFG), checkpoint=str(path), resume=True, max_steps=4, progress=False, log=_quiet)
    assert adam_rates == [CFG["lr"]] * 2 and "lr_schedule" not in load_checkpoint(path)


def test_memopt_convnet_steps_torchs_rates(adam_rates):
    cfg = dict(CFG, model="convnet", channels=[4, 8], batch_size=64)
    report = train(TrainConfig(epochs=2, lr_schedule="cosine", memopt=True, **cfg), max_steps=3, progress=False,
                   log=_quiet)
    assert adam_rates == torch_cosine(CFG["lr"], report["lr_schedule_steps"])[:3]


def test_cli_logs_and_reports_the_rate_with_a_plan(tmp_path, capsys):
    js, plan = tmp_path / "r.json", tmp_path / "plan.json"
    assert cli.main(["plan", "--model", "convnet", "--input", "1,8,8", "-T", "2", "--batch", "64", "--dataset", "digits",
                     "--device", "raspberry-pi-4-4gb", "--json", str(plan)]) == 0
    capsys.readouterr()
    argv = ["train", "--plan", str(plan), "--epochs", "2", "--max-steps", "3", "--lr-schedule", "cosine",
            "--no-progress", "--json", str(js), "--checkpoint", str(tmp_path / "c.ckpt")]
    assert cli.main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    report = json.loads(js.read_text())
    assert report["lr_schedule"] == "cosine" and report["config"]["model"] == "convnet"
    steps = report["lr_schedule_steps"]
    assert steps == 2 * math.ceil(1348 / 64) and report["history"][0]["lr"] == torch_cosine(1e-3, steps)[2]
    assert f"lr {report['history'][0]['lr']:.4g}" in out, out
    assert cli.main(argv[:-4] + ["--lr-schedule", "cosine", "--resume", "--epochs", "3", "--checkpoint",
                                 str(tmp_path / "c.ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--epochs: " in err and "2 epoch(s)" in err, err


# DDP: two gloo ranks, every rank steps the same schedule

DDP = dict(CFG, batchnorm=False, batch_size=64)


def _rank(rank: int, world: int, init_file: str, out: str) -> None:
    from edgesnn.training.distributed import configure_threads, import_before_group, rank_threads

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    configure_threads(rank_threads(None, world))
    import_before_group()
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        report = train(TrainConfig(epochs=2, lr_schedule="cosine", **{**DDP, "batch_size": 32}), max_steps=14,
                       progress=False, log=_quiet)
        Path(out, f"rank{rank}.json").write_text(json.dumps(report["history"]))
    finally:
        dist.destroy_process_group()


def test_two_ranks_step_the_same_schedule_as_one_rank(tmp_path):
    run_ranks(_rank, (2, str(tmp_path / "init"), str(tmp_path)))
    rows = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    one = train(TrainConfig(epochs=2, lr_schedule="cosine", **DDP), max_steps=14, progress=False, log=_quiet)
    assert [r["lr"] for r in rows[0]] == [r["lr"] for r in rows[1]] == [r["lr"] for r in one["history"]]
    assert one["lr_schedule_steps"] == 2 * math.ceil(1348 / 64)
