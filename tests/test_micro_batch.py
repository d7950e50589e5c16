"""``--micro-batch M`` / ``TrainConfig(micro_batch=M)``: each optimizer step's batch computed at
most M samples at a time, the parts' gradients added up before the one step.

* The parts: the fewest, sizes within one of each other, never more than M; with M >= 3 every
  part of a batch of two or more holds two (BatchNorm's minimum, why M >= 3 with BatchNorm).
* Without BatchNorm a step's gradients are the whole batch's to float rounding (the model under
  ``train`` sees parts of at most M samples, each step one Adam step); with BatchNorm each part
  has its own statistics (the gradients differ), as accumulation does in any PyTorch script.
* ``--memopt`` and two torchrun ranks (the ranks average the gradients after the last part) give the same steps.
* Stored in the checkpoint only when set (a default run writes what older versions wrote); a
  resume may change it without BatchNorm (same gradients), not with it.
* The CLI: M < 1 and M < 3 with BatchNorm are one line; with ``--plan`` M is bounded by the plan's
  batch and ``--batch-size`` is free, and a batch above the plan's without it names the remedy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List

import pytest
import torch
import torch.distributed as dist
from torch import nn

from edgesnn.checkpoint import load_checkpoint
from edgesnn.cli import main
from edgesnn.errors import UsageError
from edgesnn.models import build_model
from edgesnn.training.loop import TrainConfig, train
from edgesnn.training.micro_batch import (MIN_BATCHNORM_MICRO_BATCH, accumulate_gradients, check_micro_batch,
                                          micro_batches)

from _ranks import run_ranks
from _rss_measure import measured_and_predicted

# 1348 digits training samples
CFG = dict(dataset="digits", model="mlp", hidden=[32, 32], timesteps=2, batch_size=64, seed=5, backend="torch", lr=0.01)


def _quiet(_: str) -> None:
    return None


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_parts_are_the_fewest_near_equal_and_never_larger_than_m():
    for m in range(1, 24):
        for n in range(1, 150):
            sizes = [len(p) for p in micro_batches(torch.arange(n), m)]
            assert sum(sizes) == n and max(sizes) <= m and max(sizes) - min(sizes) <= 1
            assert len(sizes) == -(-n // m)
            if m >= MIN_BATCHNORM_MICRO_BATCH and n >= 2:
                assert min(sizes) >= 2, (m, n, sizes)
    assert [len(p) for p in micro_batches(torch.arange(3), 2)] == [2, 1]  # why BatchNorm needs M >= 3
    idx = torch.randperm(50)
    assert torch.equal(torch.cat(micro_batches(idx, 7)), idx)  # the batch's samples, in order
    assert micro_batches(idx, None)[0] is idx


def _grads(model: nn.Module, x, y, micro) -> List[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    idx = torch.arange(len(y))
    value = accumulate_gradients(model, nn.CrossEntropyLoss(), micro_batches(idx, micro), lambda p: (x[p], y[p]),
                                 lambda: model.zero_grad(set_to_none=True), lambda v: None)
    return [value] + [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("neuron", ["lif", "revlif"])
def test_gradients_are_the_whole_batchs_without_batchnorm(neuron):
    torch.manual_seed(0)
    model = build_model("convnet", (1, 8, 8), 10, 3, neuron=neuron, batchnorm=False, channels=[4, 8],
                        node={"backend": "torch"})
    x, y = torch.rand(22, 1, 8, 8) * 3, torch.randint(0, 10, (22,))
    whole = _grads(model, x, y, None)
    for m in (5, 11, 1):
        parts = _grads(model, x, y, m)
        assert parts[0] == pytest.approx(whole[0], rel=1e-5)
        for a, b in zip(whole[1:], parts[1:]):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * float(a.abs().max())), (m, float((a - b).abs().max()))
    # one part: the plain step's gradients bit for bit
    model.zero_grad(set_to_none=True)
    nn.CrossEntropyLoss()(model(x), y).backward()
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), _grads(model, x, y, 64)[1:]))


def test_with_batchnorm_each_part_has_its_own_statistics():
    torch.manual_seed(0)
    model = build_model("convnet", (1, 8, 8), 10, 2, channels=[4, 8], node={"backend": "torch"})
    x, y = torch.rand(16, 1, 8, 8) * 3, torch.randint(0, 10, (16,))
    whole, parts = _grads(model, x, y, None), _grads(model, x, y, 4)
    assert max(float((a - b).abs().max()) for a, b in zip(whole[1:], parts[1:])) > 1e-4


def test_a_non_finite_part_stops_before_its_backward():
    model = nn.Linear(3, 2)
    x, y = torch.ones(6, 3), torch.zeros(6, dtype=torch.long)
    x[4] = float("nan")
    seen = []

    def check(v):
        seen.append(v)
        if v != v:
            raise ValueError("loss: nan")

    with pytest.raises(ValueError, match="loss: nan"):
        accumulate_gradients(model, nn.CrossEntropyLoss(), micro_batches(torch.arange(6), 2), lambda p: (x[p], y[p]),
                             lambda: model.zero_grad(set_to_none=True), check)
    assert len(seen) == 3 and all(torch.isfinite(p.grad).all() for p in model.parameters())


def _first_step_grads(monkeypatch, cfg: TrainConfig, **kw):
    """The gradients Adam's first step sees, and every batch size the model's forward saw."""
    grads, sizes = [], []
    original = torch.optim.Adam.step

    def step(self, *a, **k):
        if not grads:
            grads.extend(p.grad.clone() for g in self.param_groups for p in g["params"])
        return original(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    first = nn.Linear.forward  # the first Linear sees [T * B, features] (SeqToANN folds T into the batch)

    def linear(self, x):
        if self.in_features == 64:
            sizes.append(x.shape[0] // cfg.timesteps)
        return first(self, x)

    monkeypatch.setattr(nn.Linear, "forward", linear)
    report = train(cfg, progress=False, log=_quiet, **kw)
    monkeypatch.setattr(torch.optim.Adam, "step", original)
    monkeypatch.setattr(nn.Linear, "forward", first)
    return grads, sizes, report


def _close(a: List[torch.Tensor], b: List[torch.Tensor]) -> None:
    assert len(a) == len(b) > 0
    for u, v in zip(a, b):
        assert torch.allclose(u, v, rtol=1e-4, atol=1e-6 * float(u.abs().max())), float((u - v).abs().max())


@pytest.mark.parametrize("memopt", [False, True])
def test_train_steps_the_whole_batch_in_parts(monkeypatch, memopt):
    base = dict(CFG, batchnorm=False, memopt=memopt, epochs=1)
    whole, _, r0 = _first_step_grads(monkeypatch, TrainConfig(**base), max_steps=3)
    parts, sizes, r1 = _first_step_grads(monkeypatch, TrainConfig(**base, micro_batch=24), max_steps=3)
    _close(whole, parts)
    if not memopt:  # (optimize_memory runs the Linear per chunk of time steps)
        assert sizes[:10] == [22, 21, 21] * 3 + [256], sizes[:12]  # 3 steps x 3 parts of 64 samples, the evaluation
    assert r1["steps"] == r0["steps"] == 3
    assert r1["history"][0]["loss"] == pytest.approx(r0["history"][0]["loss"], rel=1e-4)
    assert r1["config"]["micro_batch"] == 24 and "micro_batch" not in r0["config"]


def _rank(rank: int, world: int, init_file: str, out: str) -> None:
    from edgesnn.training.distributed import configure_threads, import_before_group, rank_threads

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    configure_threads(rank_threads(None, world))
    import_before_group()
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    grads = []
    original = torch.optim.Adam.step

    def step(self, *a, **k):  # the gradients each step applies: averaged over the ranks by then
        grads.append([p.grad.clone() for g in self.param_groups for p in g["params"]])
        return original(self, *a, **k)

    torch.optim.Adam.step = step
    try:
        report = train(TrainConfig(**dict(CFG, batchnorm=False, epochs=1, batch_size=32, micro_batch=8)), max_steps=2,
                       progress=False, log=_quiet)
        torch.save({"grads": grads, "steps": report["steps"]}, Path(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_in_parts_step_as_one_process_on_the_whole_batch(tmp_path, monkeypatch):
    run_ranks(_rank, (2, str(tmp_path / "init"), str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    whole, _, _ = _first_step_grads(monkeypatch, TrainConfig(**dict(CFG, batchnorm=False, epochs=1)), max_steps=1)
    assert ranks[0]["steps"] == ranks[1]["steps"] == 2
    for r in ranks:  # every rank steps with the 64-sample batch's gradients (2 ranks x 32, in parts of 8)
        _close(whole, r["grads"][0])
    _close(ranks[0]["grads"][1], ranks[1]["grads"][1])


def test_checked_in_one_line():
    assert check_micro_batch(None, True) is None and check_micro_batch(3, True) == 3 and check_micro_batch(1, False) == 1
    for bad in (0, -2, 2.5, True, "4"):
        with pytest.raises(UsageError, match=r"^micro_batch: expected an integer >= 1"):
            check_micro_batch(bad, False)
    with pytest.raises(UsageError, match=r"^micro_batch: BatchNorm needs at least 3 samples per micro-batch"):
        TrainConfig(**CFG, micro_batch=2).validate()
    TrainConfig(**CFG, batchnorm=False, micro_batch=2).validate()


def test_cli_resume_and_plan(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["train", "--dataset", "digits", "--model", "mlp", "--timesteps", "2", "--epochs", "1", "--max-steps", "2",
            "--batch-size", "32", "--backend", "torch", "--no-progress"]
    for bad, text in (("0", "--micro-batch: expected an integer >= 1, got 0"),
                      ("2", "--micro-batch: BatchNorm needs at least 3 samples per micro-batch")):
        capsys.readouterr()
        assert main([*base, "--micro-batch", bad]) == 2
        assert _err(capsys).startswith(f"edgesnn train: error: {text}")
    capsys.readouterr()
    assert main([*base, "--micro-batch", "8", "--checkpoint", "bn.ckpt"]) == 0
    assert "batch 32 in micro-batches of at most 8" in capsys.readouterr().out
    assert load_checkpoint("bn.ckpt")["train_config"]["micro_batch"] == 8
    # with BatchNorm another micro-batch computes other statistics: refused on resume
    assert main([*base, "--micro-batch", "16", "--checkpoint", "bn.ckpt", "--resume", "--max-steps", "3"]) == 2
    assert "micro_batch (stored 8, given 16)" in _err(capsys)
    # without BatchNorm the gradients are the batch's: a resume may compute it in other parts (or whole)
    nobn = [*base, "--no-batchnorm"]
    assert main([*nobn, "--micro-batch", "4", "--checkpoint", "n.ckpt"]) == 0
    assert main([*nobn, "--checkpoint", "n.ckpt", "--resume", "--max-steps", "3"]) == 0
    ck = load_checkpoint("n.ckpt")
    assert ck["steps"] == 3 and "micro_batch" not in ck["train_config"]
    # --plan: the plan's batch bounds M, --batch-size is then free
    assert main(["plan", "--model", "mlp", "--input", "64", "-T", "2", "--batch", "16", "--dataset", "digits",
                 "--device", "raspberry-pi-4-4gb", "--json", "p.json"]) == 0
    capsys.readouterr()
    run = ["train", "--plan", "p.json", "--epochs", "1", "--max-steps", "1", "--no-progress"]
    assert main([*run, "--batch-size", "64"]) == 2
    assert _err(capsys).endswith("--batch-size: 64 contradicts the plan p.json (16); to step on batches of 64 within "
                                 "the plan's memory add --micro-batch 16")
    assert main([*run, "--batch-size", "64", "--micro-batch", "32"]) == 2
    assert "--micro-batch: 32 is more than the plan p.json fits at once (batch 16)" in _err(capsys)
    plan = json.loads((tmp_path / "p.json").read_text())
    assert 1 <= plan["predicted"]["micro_batch"] <= 16
    assert main([*run, "--batch-size", "64", "--micro-batch", str(plan["predicted"]["micro_batch"]), "--checkpoint",
                 "pl.ckpt"]) == 0
    stored = load_checkpoint("pl.ckpt")["train_config"]
    assert (stored["batch_size"], stored["micro_batch"]) == (64, plan["predicted"]["micro_batch"])
    # a plan whose later parts fit fewer samples than its batch (gradients held through the step)
    plan["predicted"]["micro_batch"] = 10
    (tmp_path / "tight.json").write_text(json.dumps(plan))
    capsys.readouterr()
    tight = ["train", "--plan", "tight.json", "--epochs", "1", "--max-steps", "1", "--no-progress"]
    assert main([*tight, "--batch-size", "64", "--micro-batch", "12"]) == 2
    assert _err(capsys).endswith("--micro-batch: 12 samples per part exceed the plan tight.json's budget: a later part "
                                 "holds every parameter gradient as well; use --micro-batch 10 or less")
    assert main([*tight, "--micro-batch", "16"]) == 0  # one part per batch of 16: the plan's own step
    # M is a bound: batch 64 in parts of at most 13 is 5 parts of 12-13 (refused: > 10); of at most 11, 6 parts of
    # 10-11 (refused); 22 in parts of at most 15 is 11 + 11 (> 10: refused); 20 in parts of at most 15 is 10 + 10
    for batch, m, ok in ((64, 13, False), (64, 11, False), (22, 15, False), (20, 15, True)):
        assert (main([*tight, "--batch-size", str(batch), "--micro-batch", str(m)]) == 0) == ok, (batch, m)
        capsys.readouterr()
    assert main([*run, "--batch-size", "8", "--micro-batch", "40"]) == 0  # no split: one part of 8 (was refused: 40 > 16)
    capsys.readouterr()
    plan["predicted"]["micro_batch"] = "10"
    (tmp_path / "bad.json").write_text(json.dumps(plan))
    assert main([*tight[:2], "bad.json", *tight[3:], "--micro-batch", "4"]) == 2
    assert "predicted.micro_batch: expected an integer >= 0" in _err(capsys)


def test_plan_names_the_largest_part_a_budget_holds_with_gradients_accumulating():
    from edgesnn.planner.memory_model import ChainModel
    from edgesnn.planner.solver import max_micro_batch, predict

    chain = ChainModel(build_model("vgg11", (3, 32, 32), 10, 4, neuron="lif", node={"backend": "torch"}))
    opts, ovh = ["lif"] * len(chain.spiking), 300 * 2**20
    for budget_mib in (700, 900):
        budget = budget_mib * 2**20
        fits = max_micro_batch(chain, opts, 4, 64, budget, ovh)
        later = [b for b in range(1, 65) if predict(chain, opts, 4, b, ovh, accumulate=True)["peak_bytes"] <= budget]
        plain = [b for b in range(1, 65) if predict(chain, opts, 4, b, ovh)["peak_bytes"] <= budget]
        assert fits == max(later) and 0 < fits < max(plain), (budget_mib, fits, max(plain))
    assert max_micro_batch(chain, opts, 4, 64, 200 * 2**20, ovh) == 0


_STEP_RSS = """
import json, sys, torch
from edgesnn.planner.runtime import lean_allocator
if not lean_allocator():
    print(json.dumps(None)); sys.exit()
from torch import nn
from edgesnn.memory import peak_rss_bytes, reset_peak_rss
from edgesnn.models import build_model
from edgesnn.planner.memory_model import ChainModel
from edgesnn.planner.peak import simulate_step
from edgesnn.training.micro_batch import accumulate_gradients, micro_batches
torch.manual_seed(0)
T, B, M = 4, 32, 8
m = build_model("convnet", (3, 32, 32), 10, T, neuron="lif", channels=[32, 64], node={"backend": "torch"})
opt = torch.optim.Adam(m.parameters(), 1e-3)
x, y = torch.rand(B, 3, 32, 32), torch.randint(0, 10, (B,))
parts = micro_batches(torch.arange(B), M)
def step():
    accumulate_gradients(m, nn.functional.cross_entropy, parts, lambda p: (x[p], y[p]),
                         lambda: opt.zero_grad(set_to_none=True), lambda v: None)
    opt.step()
step(); step()  # warm up: kernels compiled, Adam's state allocated, allocator settled
opt.zero_grad(set_to_none=True)
reset_peak_rss()
base = peak_rss_bytes()
step()
chain = ChainModel(m)
later = simulate_step(chain, ["lif"] * len(chain.spiking), T, M, accumulate=True).dynamic_peak
first = simulate_step(chain, ["lif"] * len(chain.spiking), T, M).dynamic_peak
whole = simulate_step(chain, ["lif"] * len(chain.spiking), T, B).dynamic_peak
print(json.dumps([[peak_rss_bytes() - base, first, whole], later]))
"""


def test_a_step_in_parts_peaks_as_the_planner_replays_one_later_part():
    """Peak RSS of a step of 32 samples in parts of 8, above the process before it (gradients freed),
    against the planner's replay of a later part (``accumulate=True``: every gradient resident, each
    new one added into it): within 15%, above the first part's replay, and far below the whole batch's."""
    (measured, first, whole), predicted = measured_and_predicted(_STEP_RSS)
    assert abs(predicted - measured) <= 0.15 * measured, (predicted, measured)
    assert first < predicted and whole > 2.5 * measured, (first, predicted, whole, measured)


def test_a_micro_batch_at_or_above_the_batch_is_no_setting(tmp_path, capsys, monkeypatch):
    """With BatchNorm an M >= the batch splits nothing: the checkpoint stores no micro_batch, so a
    resume need not repeat it (and a checkpoint that stored one, as before, resumes without it)."""
    from edgesnn.checkpoint import save_checkpoint

    monkeypatch.chdir(tmp_path)
    base = ["train", "--dataset", "digits", "--model", "mlp", "--timesteps", "2", "--epochs", "1", "--max-steps", "2",
            "--batch-size", "32", "--backend", "torch", "--no-progress", "--checkpoint", "bn.ckpt"]
    assert main([*base, "--micro-batch", "32"]) == 0
    assert "micro-batches" not in capsys.readouterr().out
    assert "micro_batch" not in load_checkpoint("bn.ckpt")["train_config"]
    assert main([*base, "--resume", "--max-steps", "3"]) == 0
    assert main([*base, "--resume", "--max-steps", "4", "--micro-batch", "100"]) == 0
    assert main([*base, "--resume", "--max-steps", "5", "--micro-batch", "8"]) == 2
    assert "micro_batch (stored None, given 8)" in _err(capsys)
    ck = load_checkpoint("bn.ckpt")
    assert ck["steps"] == 4 and "micro_batch" not in ck["train_config"]
    # a checkpoint written before: it stored M = 64 for batch 32
    old = {k: v for k, v in ck.items() if k not in ("format", "version", "model_config", "model_state")}
    old["train_config"] = {**ck["train_config"], "micro_batch": 64}
    save_checkpoint("bn.ckpt", ck["model_config"], ck["model_state"], **old)
    assert main([*base, "--resume", "--max-steps", "5"]) == 0
    assert load_checkpoint("bn.ckpt")["steps"] == 5
