"""Data-parallel training: 2 ranks x batch 32 == 1 rank x batch 64 (gloo, CPU, spawned processes).

The model has no BatchNorm (``TrainConfig(batchnorm=False)``): with BatchNorm each rank normalises
its 32 samples with their own statistics, which is not the statistics of the 64 together
(SyncBatchNorm would fix that, but PyTorch runs it on CUDA only). Without it every sample's
forward and backward are independent of the batch, so the averaged gradients match exactly.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from edgesnn.checkpoint import load_checkpoint
from edgesnn.training.distributed import configure_threads, import_before_group, rank_threads
from edgesnn.training.loop import TrainConfig, train

from _ranks import run_ranks

STEPS = 20
CFG = dict(dataset="digits", model="mlp", neuron="lif", timesteps=4, epochs=1, lr=1e-3, seed=3, batchnorm=False)


def _rank(rank: int, world: int, init_file: str, ckpt: str, overrides=None, steps: int = STEPS,
          resume: bool = False) -> None:
    # CI once saw a rank end with SIGABRT ("terminate called without an active exception") after a
    # successful run: DDP imported torch._dynamo, which held the group past destroy_process_group()
    # and gloo's threads ran into the interpreter's shutdown. import_before_group() (what the CLI's
    # setup() does) keeps the group free of it; run_ranks prints the stacks of a rank that stalls.
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    configure_threads(rank_threads(None, world))
    import_before_group()
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:  # train() joins the existing group; local rank 0 warms the Numba cache first
        train(TrainConfig(batch_size=32, **{**CFG, **(overrides or {})}), checkpoint=ckpt, resume=resume,
              max_steps=steps, progress=False, log=lambda m: None)
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_rank_with_the_whole_batch(tmp_path):
    ck2 = tmp_path / "two.ckpt"
    run_ranks(_rank, (2, str(tmp_path / "init"), str(ck2)))
    ck1 = tmp_path / "one.ckpt"
    report = train(TrainConfig(batch_size=64, **CFG), checkpoint=str(ck1), max_steps=STEPS, progress=False, log=lambda m: None)
    assert report["steps"] == STEPS and report["world_size"] == 1
    one, two = load_checkpoint(ck1), load_checkpoint(ck2)
    assert two["world_size"] == 2 and two["steps"] == STEPS and one["steps"] == STEPS
    assert one["model_state"].keys() == two["model_state"].keys()
    worst = max(float((one["model_state"][k] - two["model_state"][k]).abs().max()) for k in one["model_state"])
    moved = max(float((one["model_state"][k] - init).abs().max())
                for k, init in _initial_state().items())
    assert moved > 1e-3  # the 20 steps did train
    assert worst <= 1e-5, f"2 ranks x 32 vs 1 rank x 64: max weight difference {worst:.3g}"


def test_two_ranks_memopt_with_batchnorm_match_ddp(tmp_path):
    """optimize_memory's chunked backward under two ranks (it crashed inside DDP with BatchNorm:
    "marked as ready twice"): gradients averaged by hand give DDP's plain training, per-rank BatchNorm."""
    ck = {}
    for memopt in (False, True):
        ck[memopt] = tmp_path / f"memopt{memopt}.ckpt"
        run_ranks(_rank, (2, str(tmp_path / f"init{memopt}"), str(ck[memopt]),
                          dict(batchnorm=True, memopt=memopt, model="convnet"), 4))
    plain, opt = load_checkpoint(ck[False]), load_checkpoint(ck[True])
    assert opt["steps"] == plain["steps"] == 4
    worst = max(float((plain["model_state"][k].double() - opt["model_state"][k].double()).abs().max())
                for k in plain["model_state"])
    assert worst <= 1e-5, f"memopt vs plain DDP, 2 ranks: max state difference {worst:.3g}"


def _initial_state():
    from edgesnn.models import build_model

    torch.manual_seed(CFG["seed"])
    m = build_model("mlp", (64,), 10, 4, "lif", batchnorm=False, node={"backend": "auto"})
    return m.state_dict()


def test_rank_threads_split_the_cores():
    assert rank_threads(None, 2, cores=16) == 8
    assert rank_threads(None, 3, cores=2) == 1
    assert rank_threads(4, 2, cores=16) == 4
    with pytest.raises(ValueError, match="--threads"):
        rank_threads(0, 1)


def test_torchrun_cli_rank0_writes_and_logs_threads(tmp_path):
    """``torchrun --nproc-per-node 2 -m edgesnn train``: per-rank threads logged, rank 0 alone writes."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed beside this python")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    ck, rep = tmp_path / "m.ckpt", tmp_path / "r.json"
    r = subprocess.run([str(torchrun), "--nproc-per-node", "2", "-m", "edgesnn", "train", "--dataset", "digits",
                        "--epochs", "1", "--max-steps", "3", "--batch-size", "16", "--device", "cpu", "--no-progress",
                        "--checkpoint", str(ck), "--json", str(rep)],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    n = rank_threads(None, 2)  # cores / 2 ranks (torchrun's OMP_NUM_THREADS=1 does not limit Numba)
    for rank in (0, 1):
        assert f"rank {rank}/2: {n} Numba and {n} PyTorch threads" in r.stderr, r.stderr
    assert r.stdout.count("final test accuracy") == 1 and "2 ranks x batch 16" in r.stdout
    assert r.stdout.count("epoch 1/1") == 1  # rank 0 alone reports
    ckd = load_checkpoint(ck)
    assert ckd["world_size"] == 2 and ckd["steps"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt", "r.json"]  # no temp files left


def _average_rank(rank: int, world: int, init_file: str, out: str) -> None:
    out = f"{out}{rank}.pt"
    from edgesnn.training.distributed import DistInfo, average_gradients

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = torch.nn.ModuleDict({"both": torch.nn.Linear(2, 1), "rank0": torch.nn.Linear(2, 1),
                                     "none": torch.nn.Linear(2, 1)})
        x = torch.full((1, 2), float(rank + 1))
        loss = model["both"](x).sum() + (model["rank0"](x).sum() if rank == 0 else 0)
        loss.backward()
        average_gradients(model, DistInfo(rank=rank, world=world, local_rank=rank, local_world=world))
        torch.save({k: (p.grad if p.grad is None else p.grad.clone()) for k, p in model.named_parameters()}, out)
        opt = torch.optim.Adam(model.parameters())
        opt.step()  # a parameter no rank used stays out of Adam's state, as in one process
        assert all(p not in opt.state for p in model["none"].parameters())
    finally:
        dist.destroy_process_group()


def test_average_gradients_keeps_unused_parameters_gradient_free(tmp_path):
    run_ranks(_average_rank, (2, str(tmp_path / "init"), str(tmp_path / "g")))
    g0, g1 = (torch.load(tmp_path / f"g{r}.pt", weights_only=True) for r in range(2))
    for k in g0:
        assert (g0[k] is None) == (g1[k] is None) and (g0[k] is None or torch.equal(g0[k], g1[k])), k
    assert g0["none.weight"] is None and g0["none.bias"] is None
    assert torch.allclose(g0["both.weight"], torch.tensor([[1.5, 1.5]]))  # mean of x = 1 and x = 2
    assert torch.allclose(g0["rank0.weight"], torch.tensor([[0.5, 0.5]]))  # rank 1's missing gradient counts 0


def test_three_ranks_resumed_equal_one_uninterrupted_run_bit_for_bit(tmp_path):
    """With 3 ranks, a run stopped after 2 steps and resumed to 4 used to differ from 4 steps in one
    go by rounding: DistributedDataParallel regroups its gradient buckets after its first step, and
    gloo then sums some gradients of the 3 ranks in another order than in the resumed run's first
    step. The ranks now average their gradients in one flat all-reduce, the same in every step."""
    whole, split = tmp_path / "whole.ckpt", tmp_path / "split.ckpt"
    run_ranks(_rank, (3, str(tmp_path / "i1"), str(whole), None, 4), world=3)
    run_ranks(_rank, (3, str(tmp_path / "i2"), str(split), None, 2), world=3)
    run_ranks(_rank, (3, str(tmp_path / "i3"), str(split), None, 4, True), world=3)
    a, b = load_checkpoint(whole), load_checkpoint(split)
    assert a["steps"] == b["steps"] == 4 and a["world_size"] == b["world_size"] == 3
    for k, v in a["model_state"].items():
        assert torch.equal(v, b["model_state"][k]), k


@pytest.mark.parametrize("backend, memopt, compiles", [("torch", True, True), ("torch", False, False),
                                                         ("auto", False, True)])
def test_local_rank_zero_warms_the_kernels_a_run_compiles(monkeypatch, backend, memopt, compiles):
    """``--backend torch --memopt``: optimize_memory's kernels compile whatever the backend, but the
    warm-up skipped them: no compile notice, and every rank compiled into one cache at once."""
    import edgesnn.kernels.cli as kcli
    from edgesnn.kernels.dispatch import numba_available
    from edgesnn.training import distributed

    if not numba_available():
        pytest.skip("needs Numba")
    calls = []
    monkeypatch.setattr(kcli, "warmup", lambda **kw: calls.append("warmup"))
    monkeypatch.setattr(distributed, "barrier", lambda info: calls.append("barrier"))
    monkeypatch.setattr(distributed, "_WARMED", False)
    info = distributed.DistInfo(rank=0, world=2, local_rank=0, local_world=2, device="cpu")
    distributed.warm_kernels(info, backend, lambda: calls.append("notice"), memopt=memopt)
    assert calls == (["notice", "warmup", "barrier"] if compiles else ["barrier"])
