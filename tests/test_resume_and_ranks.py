"""Resume with nothing left to train, and what ``edgesnn train`` says and does under torchrun.

* A checkpoint that ``max_steps`` stopped inside an epoch, resumed with nothing left to train,
  reports that checkpoint (its partial epoch included), not the epoch before it.
* The resume message counts the samples of every rank; ``--plan`` notes that it holds per process.
* Every rank reports its own error, ranks other than 0 name themselves; a rank whose collective
  failed because another rank ended says so in one line; the ranks leave the process group after
  rank 0 wrote its report, and no gloo thread outlives the group (they ended a rank with SIGABRT
  now and then, in the interpreter's shutdown).

Multi-process cases spawn 2 gloo ranks on CPU (as tests/test_ddp.py does) with the torch backend
(no Numba cache to fill); the CLI cases let ``edgesnn train`` create the group as under torchrun
and stub ``train`` (the training itself is not the point there).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from edgesnn import cli
from edgesnn.checkpoint import load_checkpoint
from edgesnn.errors import UsageError, peer_failure
from edgesnn.training.loop import TrainConfig, train
from edgesnn.training.resume import Progress, resume_messages, samples_done

from _ranks import run_ranks

CFG = dict(dataset="digits", model="mlp", hidden=[16, 16], timesteps=2, batch_size=128, seed=3)
GLOO_GONE = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
             "[127.0.0.1]:21898. This is typically caused by a remote worker crashing.")


# 1. resuming a partial epoch with nothing left to train

@pytest.mark.parametrize("epochs, max_steps", [(2, 14), (1, None)], ids=["max-steps-reached", "epochs-not-raised"])
def test_resume_with_nothing_to_train_reports_the_checkpoint(tmp_path, epochs, max_steps):
    ck = tmp_path / "part.ckpt"  # epoch 1 whole (11 steps of 128 samples), then 3 steps of epoch 2
    train(TrainConfig(epochs=2, **CFG), checkpoint=str(ck), max_steps=14, progress=False, log=lambda s: None)
    stored = load_checkpoint(ck)
    rows = stored["metrics"]["history"]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1].get("partial") and stored["epoch_offset"] == 384
    lines = []
    report = train(TrainConfig(epochs=epochs, **CFG), checkpoint=str(ck), resume=True, max_steps=max_steps,
                   progress=False, log=lines.append)
    assert report["history"] == rows, "the partial epoch's row was dropped"
    assert report["test_accuracy"] == rows[-1]["test_accuracy"] and report["steps"] == 14
    nothing = [line for line in lines if line.startswith("nothing to train")]
    assert nothing and all("384 samples" in line for line in nothing), lines
    assert load_checkpoint(ck)["metrics"]["history"] == rows  # not rewritten
    done = train(TrainConfig(epochs=2, **CFG), checkpoint=str(ck), resume=True, progress=False, log=lambda s: None)
    assert [r["epoch"] for r in done["history"]] == [1, 2] and not done["history"][-1].get("partial")
    assert done["history"][-1]["samples"] == done["train_samples"]  # the kept row was finished whole


def test_max_steps_at_the_last_step_of_an_epoch_keeps_it_whole(tmp_path):
    """digits' 1348 training samples in batches of 449: 3 steps and a lone sample BatchNorm skips.
    ``max_steps=3`` takes every step of the epoch; the run said 'stopped by --max-steps after 1347
    samples', stored the epoch as partial (epoch 0, offset 1347), and a resume "finished" it without
    a step. Now it ends as the run without max_steps does."""
    cfg = dict(CFG, batch_size=449)
    runs = {}
    for name, max_steps in (("cut", 3), ("whole", None)):
        ck = tmp_path / f"{name}.ckpt"
        lines = []
        report = train(TrainConfig(epochs=1, **cfg), checkpoint=str(ck), max_steps=max_steps, progress=False,
                       log=lines.append)
        assert report["steps"] == 3 and report["train_samples"] == 1348
        assert not any("stopped by --max-steps" in line for line in lines), lines
        runs[name] = (report["history"], load_checkpoint(ck))
    (rows_cut, ck_cut), (rows_whole, ck_whole) = runs["cut"], runs["whole"]
    assert not rows_cut[-1].get("partial") and rows_cut[-1]["samples"] == rows_whole[-1]["samples"] == 1347
    assert (ck_cut["epoch"], ck_cut["epoch_offset"]) == (ck_whole["epoch"], ck_whole["epoch_offset"]) == (1, 0)


# 5. the resume message counts the samples every rank trained

def test_resume_message_counts_the_samples_of_all_ranks():
    p = Progress(start=1, steps=90, offset=112)
    assert resume_messages("m.ckpt", p, 2, None, 2, 1348) == ["resumed from m.ckpt after epoch 1 and 224 samples of epoch 2"]
    assert resume_messages("m.ckpt", p, 2, None, 1, 1348)[0].endswith("and 112 samples of epoch 2")
    assert samples_done(700, 2, 1348) == 1348  # never more than the epoch


def _resume_rank(rank: int, world: int, init_file: str, ckpt: str, out: str) -> None:
    """Train 3 steps into epoch 1 on 2 ranks, then resume with --max-steps 3 (nothing left)."""
    from edgesnn.training.distributed import configure_threads, import_before_group

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    configure_threads(1)
    import_before_group()  # as the CLI's setup() does: the group ends with its threads
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = TrainConfig(**{**CFG, "batch_size": 16, "epochs": 1, "backend": "torch", "batchnorm": False})
        train(cfg, checkpoint=ckpt, max_steps=3, progress=False, log=lambda s: None)
        lines = []
        report = train(cfg, checkpoint=ckpt, resume=True, max_steps=3, progress=False, log=lines.append)
        Path(f"{out}{rank}").write_text(json.dumps({"lines": lines, "report": report}))
    finally:
        dist.destroy_process_group()


def test_two_ranks_resume_with_nothing_to_train(tmp_path):
    ck, out = tmp_path / "m.ckpt", tmp_path / "out"
    run_ranks(_resume_rank, (2, str(tmp_path / "init"), str(ck), str(out)))
    zero, one = (json.loads(Path(f"{out}{r}").read_text()) for r in range(2))
    stored = load_checkpoint(ck)
    assert stored["epoch_offset"] == 48 and stored["world_size"] == 2  # 3 steps of 16 on each rank
    assert zero["lines"][0] == f"resumed from {ck} after epoch 0 and 96 samples of epoch 1", zero["lines"]
    rows = stored["metrics"]["history"]
    for got in (zero, one):  # every rank returns the checkpoint's report
        assert got["report"]["history"] == rows and got["report"]["test_accuracy"] == rows[-1]["test_accuracy"]


# 3, 4. errors under torchrun: the rank is named, a peer's failure is one line

@pytest.fixture
def rank1(monkeypatch):
    """This process as rank 1 of 2 (what torchrun exports), with ``edgesnn train`` replaced by a stub."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    import edgesnn.training.cli as tcli

    def use(exc: BaseException) -> None:
        def stub(args):
            raise exc
        monkeypatch.setattr(tcli, "run", stub)
    return use


def _main(capsys):
    rc = cli.main(["train", "--no-progress"])
    err = capsys.readouterr().err
    return rc, err


def test_errors_of_other_ranks_name_the_rank(rank1, capsys, monkeypatch):
    rank1(UsageError("--checkpoint: m.ckpt exists"))
    assert _main(capsys) == (2, "edgesnn train: error: rank 1: --checkpoint: m.ckpt exists\n")
    rank1(KeyboardInterrupt())
    assert _main(capsys) == (130, "edgesnn train: rank 1: interrupted\n")
    monkeypatch.setenv("RANK", "0")  # rank 0 reads as a single process does
    rank1(UsageError("--checkpoint: m.ckpt exists"))
    assert _main(capsys) == (2, "edgesnn train: error: --checkpoint: m.ckpt exists\n")


def test_a_peers_failure_is_one_line_and_nothing_else_is(rank1, capsys, monkeypatch):
    rank1(RuntimeError(GLOO_GONE))
    assert _main(capsys) == (1, "edgesnn train: error: rank 1: another rank failed (see its error above); stopping\n")
    rank1(RuntimeError("boom: Connection closed by peer"))  # not from the process group: a bug, traceback
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(["train"])
    monkeypatch.delenv("WORLD_SIZE")  # one process: not a rank's failure
    rank1(RuntimeError(GLOO_GONE))
    with pytest.raises(RuntimeError, match="Connection closed"):
        cli.main(["train"])
    assert not peer_failure(ValueError(GLOO_GONE)) and not peer_failure(RuntimeError("gloo: invalid tensor"))


def _gloo_threads():
    """Names of this process's gloo threads (Linux)."""
    return [n for n in (Path(t, "comm").read_text().strip() for t in Path("/proc/self/task").iterdir()) if "gloo" in n]


def _cli_rank(rank: int, world: int, port: int, tmp: str, mode: str) -> None:
    """``edgesnn train`` on one of 2 gloo ranks, as torchrun starts it (the CLI creates the group);
    training is stubbed. Writes the exit code, stderr, timings and the gloo threads left after
    ``main()``. ``peer``: rank 0 fails at once while rank 1 waits in a collective. ``ok``: a DDP
    step (it imports torch._dynamo), then rank 0 takes 0.5 s to write the report."""
    import torch
    import torch.distributed as tdist

    import edgesnn.training.cli as tcli

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    times = {}

    def stub_train(cfg, **kw):
        if mode == "order":  # what train() raises for a checkpoint of another world size, on every rank
            raise UsageError("--resume: m.ckpt was written by 1 rank(s), this run has 2")
        if mode == "peer":
            if rank == 0:
                raise UsageError("cannot write m.ckpt: disk full")
            dist.barrier()  # rank 0 left the group: gloo reports the connection closed
        else:
            from torch.nn.parallel import DistributedDataParallel

            DistributedDataParallel(torch.nn.Linear(2, 1))(torch.ones(2, 2)).sum().backward()
        return {"test_accuracy": 0.5, "test_samples": 449}

    def slow_write(path, report):
        time.sleep(0.5)
        times["written"] = time.time()

    real_destroy = tdist.destroy_process_group

    def destroy(*a, **kw):
        times["left"] = time.time()
        real_destroy(*a, **kw)

    tcli.train, tcli.write_report, tdist.destroy_process_group = stub_train, slow_write, destroy
    import edgesnn.kernels.cli as kcli

    kcli.warmup = lambda **kw: times.__setitem__("warmed", time.time())  # the kernels' compile, recorded
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli.main(["train", "--backend", "auto" if mode == "order" else "torch", "--device", "cpu", "--threads",
                       "1", "--no-progress", "--json", os.path.join(tmp, "r.json")])
    Path(tmp, f"{mode}{rank}").write_text(json.dumps({"rc": rc, "err": err.getvalue(), "gloo": _gloo_threads(),
                                                      **times}))


def _spawn_cli(tmp_path, mode: str):
    with socket.socket() as s:  # a free port for rank 0's store
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_cli_rank, args=(r, 2, port, str(tmp_path), mode)) for r in range(2)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
            assert p.exitcode == 0, f"{mode}: a rank ended with {p.exitcode}"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    return [json.loads((tmp_path / f"{mode}{r}").read_text()) for r in range(2)]


def test_two_ranks_refuse_before_compiling_the_kernels(tmp_path):
    """The CLI filled the Numba cache on local rank 0 (77 s on a cold cache) before train() checked
    the run: a resume under another world size, or --sync-batchnorm on CPU, was refused only after.
    train() now warms the kernels after its checks."""
    zero, one = _spawn_cli(tmp_path, "order")
    for r in (zero, one):
        assert r["rc"] == 2 and "--resume: m.ckpt was written by 1 rank(s), this run has 2" in r["err"], r
    assert "warmed" not in zero, "the kernels were compiled before the run's checks"


def test_two_ranks_peer_failure_through_the_cli(tmp_path):
    zero, one = _spawn_cli(tmp_path, "peer")
    assert zero["rc"] == 2 and zero["err"].endswith("\nedgesnn train: error: cannot write m.ckpt: disk full\n"), zero
    assert one["rc"] == 1 and one["err"].endswith(
        "edgesnn train: error: rank 1: another rank failed (see its error above); stopping\n"), one["err"]
    assert "Traceback" not in one["err"]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="lists threads through /proc (Linux)")
def test_two_ranks_leave_the_group_after_the_report_and_stop_gloo_threads(tmp_path):
    zero, one = _spawn_cli(tmp_path, "ok")
    assert zero["rc"] == one["rc"] == 0, (zero, one)
    assert one["left"] >= zero["written"], "rank 1 left the process group while rank 0 was writing the report"
    # threads still running into the interpreter's shutdown ended a rank with SIGABRT now and then
    assert zero["gloo"] == one["gloo"] == [], (zero["gloo"], one["gloo"])


# 6. --plan under torchrun holds per process

def test_plan_under_torchrun_notes_it_holds_per_process(tmp_path, capsys):
    from edgesnn.training.cli import _from_plan

    js = tmp_path / "plan.json"
    assert cli.main(["plan", "--model", "mlp", "--input", "64", "-T", "2", "--batch", "16", "--dataset", "digits",
                     "--device", "raspberry-pi-4-4gb", "--json", str(js)]) == 0
    capsys.readouterr()
    peak = json.loads(js.read_text())["predicted"]["peak_bytes"]
    for local_world in (1, 2):
        args = cli.build_parser("train").parse_args(["train", "--plan", str(js)])
        _from_plan(args, main=True, local_world=local_world)
        err = capsys.readouterr().err
        if local_world == 1:
            assert "note" not in err, err
        else:
            assert err.count("\n") == 1 and "batch 16 and memory budget" in err and "apply to each process" in err, err
            assert f"2 x {peak / 2**20:.0f} MiB" in err, err
