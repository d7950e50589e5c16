"""Supervised training of a spiking classifier: epochs, evaluation, checkpoints and resume."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from ..checkpoint import (NIR_LOAD_HINT, CheckpointError, atomic_write, load_checkpoint, load_model_state,
                          refuse_nir_config, save_checkpoint)
from ..atomic import is_path_value
from ..errors import UsageError
from ..kernels import buffers
from ..models import SpikingClassifier, build_model
from ..user_state import evaluating
from ..output_guard import guarded
from .data import Dataset, Split, load_dataset
from .call_checks import check_train_call
from .device import check_backend_device, resolve_device
from .distributed import (DistInfo, all_sum, average_gradients, barrier, broadcast_parameters, env_world,
                          epoch_order, padding_weights, warm_kernels)
from .fingerprint import check_resume_data, data_content_hash, data_fingerprint
from .micro_batch import accumulate_gradients, effective_micro_batch, micro_batches
from .lr_schedule import check_resume_schedule, horizon_of, skips_batch, start_schedule, steps_per_epoch
from .flag_checks import check_model_fits_dataset
from .outputs import check_outputs, stored_config
from .resume import (Progress, check_optimizer_groups, check_optimizer_state, check_schedule_state, check_train_config,
                     check_world_size, resume_messages, show_value, stored_progress, will_train)
from .split_checks import check_input_dtype, check_labels, check_split
from .train_config import TrainConfig

__all__ = ["EVAL_BATCH_SIZE", "TrainConfig", "train", "evaluate", "model_from_checkpoint", "check_outputs", "config_diff"]

#: samples per batch of the evaluation pass (``edgesnn train --eval-batch``; the planner counts it)
EVAL_BATCH_SIZE = 256


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = EVAL_BATCH_SIZE, dist: Optional[DistInfo] = None) -> float:
    """Top-1 accuracy (0..1) of ``model`` on ``split``, every sample counted once (last batch included).

    Runs in eval mode (BatchNorm's running statistics, unchanged) and restores the model's mode, without
    edgesnn's buffer pool (whose idle buffers it frees first: :func:`edgesnn.kernels.buffers.unpooled`). Refused
    in one line: an empty split, ``batch_size`` not an integer >= 1, labels not ``int [N]`` or outside
    ``0..classes-1``, ``x`` and ``y`` of other lengths, static inputs not floating point, and event
    frames ``[N, T, ...]`` whose T is not ``model.timesteps``.

    With a multi-rank ``dist`` every rank scores the samples ``rank, rank + world, ...`` and the
    counts are summed over the ranks: all ranks return the accuracy on the whole split.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module (e.g. an edgesnn SpikingClassifier), got {type(model).__name__}")
    check_split(split, getattr(model, "timesteps", None))
    check_input_dtype(split, model)
    # the training step's idle pooled buffers freed, and none kept idle by this pass (its outputs die layer
    # by layer): the planner's evaluation peak, and the next step starts as after an emptied pool
    buffers.release()
    with evaluating(model), buffers.unpooled():
        dev = _model_device(model)
        rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
        mine = torch.arange(rank, len(split), world)
        correct = 0
        for i in range(0, len(mine), batch_size):
            idx = mine[i:i + batch_size]
            logits = model(split.inputs(idx).to(dev))
            if i == 0:
                check_labels(split, logits.shape[-1])
            correct += int((logits.argmax(1) == split.y[idx].to(dev)).sum())
    if world > 1:
        correct, _ = all_sum(dist, float(correct), 0.0)
    return correct / len(split)


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _build(cfg: TrainConfig, data: Dataset) -> SpikingClassifier:
    return build_model(cfg.model, data.in_shape, data.num_classes, cfg.timesteps, cfg.neuron,
                       hidden=cfg.hidden, channels=cfg.channels, node={"backend": cfg.backend}, batchnorm=cfg.batchnorm,
                       revlif=None if cfg.revlif_alpha is None else {"alpha": cfg.revlif_alpha}, pool=cfg.pool)


def model_from_checkpoint(path: str) -> SpikingClassifier:
    """Rebuild a model from a checkpoint's config and load its weights."""
    check_path_arg(path, "path")
    ck = load_checkpoint(path)
    refuse_nir_config(ck["model_config"], f"checkpoint: {path}: model_config", CheckpointError, NIR_LOAD_HINT)
    try:
        model = build_model(**ck["model_config"])
    except (TypeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"checkpoint: {path} does not match its model config ({exc})") from None
    load_model_state(model, ck["model_state"], f"checkpoint: {path}")
    return model


def check_path_arg(value: Any, name: str) -> None:
    """One :class:`~edgesnn.errors.UsageError` line naming ``name`` unless ``value`` is a file path (a
    non-empty ``str`` or ``os.PathLike``; a :class:`~edgesnn.output_guard.GuardedFile` also passes)."""
    from ..output_guard import GuardedFile

    if isinstance(value, GuardedFile):
        return
    if not is_path_value(value):
        raise UsageError(f"{name}: expected a file path (a non-empty str or os.PathLike), got {value!r:.80}")


def _real(path) -> str:
    """``path`` with ``~`` expanded and links resolved: two spellings of one folder compare equal."""
    return os.path.realpath(os.path.expanduser(str(path)))


def config_diff(stored: Dict, given: Dict, ignore: Sequence[str] = ("epochs",)) -> List[str]:
    """``"name (stored X, given Y)"`` for every field that differs, ``ignore`` aside."""
    keys = [k for k in dict.fromkeys([*stored, *given]) if k not in ignore]
    defaults = asdict(TrainConfig())  # a field newer than the checkpoint counts as its default
    stored = {k: stored.get(k, defaults.get(k)) for k in keys}
    return [f"{k} (stored {show_value(stored.get(k), 80)}, given {show_value(given.get(k), 80)})" for k in keys
            if not _equal(stored.get(k), given.get(k))]


def _equal(a: Any, b: Any) -> bool:
    """``a == b`` that never raises (a tensor's ``==`` is elementwise): anything else differs."""
    try:
        return bool(a == b)
    except Exception:
        return False


def _noop(msg: str) -> None:
    return None


def _sync_buffers(model: nn.Module, dist: DistInfo) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics: each rank updated its own
    in the last step), so evaluation and the checkpoint agree on all ranks."""
    if not dist.distributed:
        return
    import torch.distributed as tdist

    for b in model.buffers():
        tdist.broadcast(b, 0)


def check_plan_fits(planned_model: Dict, data: Any) -> None:
    """Refuse a plan made for another input shape or class count than ``data`` has (one line).

    ``data``: a :class:`~edgesnn.training.data.Dataset`, or anything with its ``in_shape`` and
    ``num_classes`` (``edgesnn train --plan`` checks a built-in dataset's before reading it)."""
    want = tuple(int(s) for s in planned_model.get("in_shape", ()))
    have = tuple(int(s) for s in data.in_shape)
    if want and want != have:
        raise UsageError(f"--plan: the plan was made for input {'x'.join(map(str, want))} "
                         f"({planned_model.get('name')}), but this dataset gives {'x'.join(map(str, have))}; "
                         "make a plan for this data (edgesnn plan --input ...)")
    classes = planned_model.get("num_classes")
    if classes is not None and int(classes) != int(data.num_classes):
        raise UsageError(f"--plan: the plan was made for {classes} classes, but this dataset has {data.num_classes}")


def train(
    cfg: TrainConfig,
    checkpoint: Union[str, os.PathLike, None] = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    force: bool = False,
    before_training: Optional[Callable[[], None]] = None,
    device: Optional[str] = None,
    max_steps: Optional[int] = None,
    sync_batchnorm: bool = False,
    planned_model: Optional[Dict] = None,
    eval_batch_size: int = EVAL_BATCH_SIZE,
) -> Dict:
    """Train, evaluate every epoch and return a report dict (config, per-epoch metrics, final accuracy).

    ``planned_model`` (a plan's ``model`` config): the data must have the plan's input shape and
    class count, or training is refused (a plan's memory figures hold for that model only).

    With ``checkpoint`` the state is written atomically after every epoch; an existing one is
    refused unless ``resume`` (continue from it: same config required, same data order as an
    uninterrupted run; the data must be unchanged: counts, labels and input values, see
    :mod:`edgesnn.training.fingerprint`) or ``force`` (overwrite it). Both checks run before any
    training. Each save replaces only the file found at the start (or, if there was none, creates it
    only while still absent), then only the file this run last wrote: one another process wrote in
    between stops the run with :class:`~edgesnn.errors.OutputChanged`, the new checkpoint kept beside
    it (:mod:`edgesnn.output_guard`; a :class:`~edgesnn.output_guard.GuardedFile` ``checkpoint`` keeps
    the state it recorded). A model the dataset cannot feed (:func:`~edgesnn.training.flag_checks.check_model_fits_dataset`)
    is refused before the data is read.
    ``before_training`` is called once everything is validated, right before the first step
    (the CLI prints its first-run compile notice there); under ``torchrun`` it is called instead
    on each node's local rank 0 once the run's settings are checked, right before that rank fills
    the Numba kernel cache for the others (the checks of a resumed checkpoint come before it). ``device`` (``"auto"``, ``"cpu"``,
    ``"cuda"``; ``None`` = ``"cpu"``) runs the model, the batches and the loss there; it is not part
    of the config (a checkpoint resumes on any device).

    Data-parallel: inside an initialised ``torch.distributed`` process group (``torchrun``; see
    :mod:`edgesnn.training.distributed`) every rank starts from rank 0's weights and the ranks average
    their gradients once per step (what ``DistributedDataParallel`` computes, in one flat all-reduce),
    ``cfg.batch_size`` is the batch *per rank* and each rank takes its share of every epoch's
    permutation (:func:`~.distributed.epoch_order`). Rank 0 alone logs, shows progress and writes the
    checkpoint; every rank returns the same report. ``device="cuda"`` uses GPU ``LOCAL_RANK``.
    BatchNorm statistics are per rank (as in any DDP run) unless ``sync_batchnorm`` (CUDA only);
    ``cfg.batchnorm=False`` builds models without BatchNorm.

    ``max_steps`` stops after that many optimizer steps in all (the last epoch is then partial;
    it is still evaluated and checkpointed): for smoke tests and equivalence checks.
    ``cfg.lr_schedule``: ``constant`` or per-step ``cosine`` decay (:mod:`edgesnn.training.lr_schedule`).

    ``cfg.micro_batch``: compute each batch at most that many samples at a time, adding up the
    gradients before the one optimizer step (:mod:`edgesnn.training.micro_batch`): the memory of
    that smaller batch, the gradients of the whole one (without BatchNorm, up to float rounding; a
    resume may then change it). Under ``torchrun`` it splits each rank's batch.

    ``eval_batch_size``: samples per batch of the evaluation after every epoch (``no_grad``; its
    forward is counted by the planner, so a plan's ``eval_batch`` keeps the run within budget).
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg: expected an edgesnn.training.TrainConfig (TrainConfig(**fields) for a dict), got "
                        f"{type(cfg).__name__}")
    cfg.validate()
    if checkpoint is not None:
        check_path_arg(checkpoint, "checkpoint")
    resume, progress, force, sync_batchnorm = check_train_call(
        resume=resume, progress=progress, force=force, sync_batchnorm=sync_batchnorm, device=device, log=log,
        before_training=before_training, planned_model=planned_model, eval_batch_size=eval_batch_size,
        max_steps=max_steps)
    dist = env_world()
    if dist.distributed:
        import torch.distributed as tdist

        if not (tdist.is_available() and tdist.is_initialized()):
            raise UsageError(f"distributed: WORLD_SIZE={dist.world} but no process group is initialised; launch with "
                             "`torchrun ... -m edgesnn train` or call torch.distributed.init_process_group() first")
    dev = resolve_device("cpu" if device is None else device)
    if dev.type == "cuda" and dist.distributed:
        if dev.index is not None:
            raise UsageError(f"--device {dev}: under torchrun every rank takes GPU LOCAL_RANK; pass --device cuda "
                             "(choose the GPUs with CUDA_VISIBLE_DEVICES)")
        dev = torch.device("cuda", dist.local_rank)
    dist = DistInfo(dist.rank, dist.world, dist.local_rank, dist.local_world, str(dev))
    check_backend_device(cfg.backend, dev)
    if sync_batchnorm and dist.distributed and dev.type != "cuda":
        raise UsageError("--sync-batchnorm: PyTorch's SyncBatchNorm runs on CUDA only; on CPU train without BatchNorm "
                         "(--no-batchnorm) for rank-independent statistics, or keep per-rank statistics")
    check_outputs(checkpoint, resume, force)
    checkpoint = guarded(checkpoint, "--checkpoint")  # every save replaces only what this run found or wrote there
    check_model_fits_dataset(cfg)  # a model the data cannot feed is refused before the data is read
    main = dist.main
    log = log if main else _noop
    ck = None
    if resume:
        ck = load_checkpoint(checkpoint)
        missing = [k for k in ("train_config", "optimizer_state", "epoch") if k not in ck]
        if missing:
            raise UsageError(f"--resume: {checkpoint} has no {', '.join(missing)} (weights only, not written by edgesnn "
                             "train): it cannot be resumed; train into a new --checkpoint")
        stored = check_train_config(ck, checkpoint)  # plain data: a tensor there is refused, not compared
        stored.setdefault("batchnorm", True)  # checkpoints from before the option
        check_resume_schedule(ck, cfg.lr_schedule, cfg.epochs, checkpoint)  # another schedule, or past its end
        # another spelling of the same folder (./data/x/ for data/x, ~/x) is the same data; another
        # folder is refused (the fingerprints, checked once loaded, cover counts, labels and inputs)
        same_place = stored.get("data_path") is not None and cfg.data_path is not None and \
            _real(stored["data_path"]) == _real(cfg.data_path)
        # micro-batches without BatchNorm give the batch's gradients: another board may take other parts
        ignore = ("epochs",) + (("data_path",) if same_place else ()) + (("micro_batch",) if not cfg.batchnorm else ())
        # a micro-batch at or above the batch splits nothing: compared as none (older checkpoints stored it)
        given = {**asdict(cfg), "micro_batch": effective_micro_batch(cfg.micro_batch, cfg.batch_size)}
        if all(type(stored.get(k)) is int for k in ("batch_size", "micro_batch")):  # other types: compared as stored
            stored["micro_batch"] = effective_micro_batch(stored.get("micro_batch"), stored["batch_size"])
        diff = config_diff(stored, given, ignore=ignore)
        if diff:
            raise UsageError(f"--resume: {checkpoint} was written with other settings: {'; '.join(diff)}; "
                             "pass the stored values or use a new --checkpoint")
        stored_done = stored_progress(ck, checkpoint)  # counts and history rows, checked before the data is read
        if cfg.lr_schedule != "constant":
            check_schedule_state(ck, ck.get("steps"), cfg.lr, checkpoint)
        if check_world_size(ck, checkpoint) != dist.world:
            raise UsageError(f"--resume: {checkpoint} was written by {ck.get('world_size', 1)} rank(s), this run has "
                             f"{dist.world}; resume with the same number of processes (the data order depends on it)")
    if dist.distributed:  # local rank 0 fills the Numba cache (its notice first) before the other ranks compile
        warm_kernels(dist, cfg.backend, before_training, memopt=cfg.memopt and dev.type == "cpu")
        before_training = None
    torch.manual_seed(cfg.seed)
    # rank 0 first: it bins event data into the frame cache the others then read
    if not main:
        barrier(dist)
    data = load_dataset(cfg.dataset, cfg.data_path, flat=(cfg.model == "mlp"), seed=cfg.seed,
                        timesteps=cfg.timesteps, log=log)
    if main:
        barrier(dist)
    if planned_model is not None:
        check_plan_fits(planned_model, data)
    fingerprint = data_fingerprint(data)
    content = data_content_hash(data) if checkpoint else None  # ~0.1 s for CIFAR-10; only stored in checkpoints
    if ck is not None:
        check_resume_data(ck, fingerprint, content, checkpoint, cfg.data_path or cfg.dataset, data.train.events, log)
    model = _build(cfg, data).to(dev)  # same seed on every rank: same initial weights (DDP also broadcasts them)
    if sync_batchnorm and dist.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.memopt:
        from ..memopt import optimize_memory

        # the most samples computed at once: a part, or the batch when it is smaller than --micro-batch
        example = data.train.inputs(torch.arange(min(cfg.micro_batch or cfg.batch_size, cfg.batch_size,
                                                     len(data.train)))).to(dev)
        mplan = optimize_memory(model, example)
        if main:
            log(f"optimize_memory: chunks {[b.chunk for b in mplan.blocks]}, strategies "
                f"{[b.strategy for b in mplan.blocks]}, predicted activation peak {mplan.peak_bytes / 2**20:.1f} MiB")
    # data-parallel without DistributedDataParallel (why: the module docstring of .distributed): rank 0's
    # weights to every rank here, the gradients averaged in one flat all-reduce after each step's backward
    if dist.distributed:
        broadcast_parameters(model, dist)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    done = Progress() if ck is None else stored_done  # a resumed run continues the checkpoint's (see .resume)
    if ck is not None:
        # a mismatch is the checkpoint's fault (edited, or from another edgesnn): one line, not a traceback
        load_model_state(model, ck["model_state"], f"--resume: {checkpoint}")
        fresh = {k: v for k, v in opt.param_groups[0].items() if k != "params"}  # the settings edgesnn train uses
        # shapes, dtypes, step counts, finite moments, Adam's keys: checked first (load_state_dict casts silently)
        state = check_optimizer_state(ck["optimizer_state"], list(model.parameters()), ck.get("steps"), checkpoint)
        try:
            opt.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            detail = f"it has no {exc}" if isinstance(exc, KeyError) else " ".join(str(exc).split())[:200]
            raise CheckpointError(f"--resume: {checkpoint} does not match its model ({detail})") from None
        check_optimizer_groups(opt.param_groups[0], fresh, cfg.lr, cfg.lr_schedule != "constant", checkpoint)
        if will_train(done, cfg.epochs, max_steps):
            done.take_partial()  # the stopped epoch's row: this run finishes it and writes it whole
        for line in resume_messages(checkpoint, done, cfg.epochs, max_steps, dist.world, len(data.train), horizon_of(ck)):
            log(line)
    per_epoch = steps_per_epoch(len(data.train), dist.world, cfg.batch_size, cfg.batchnorm)
    sched = start_schedule(cfg.lr_schedule, opt, cfg.epochs, per_epoch, ck, checkpoint)  # constant: touches nothing
    start, steps, offset, history, carried = done.start, done.steps, done.offset, done.history, done.carried
    loss_fn = nn.CrossEntropyLoss().to(dev)
    sample_loss_fn = nn.CrossEntropyLoss(reduction="none").to(dev)  # a batch with padding (see padding_weights)

    def load(part: torch.Tensor):
        return data.train.inputs(part).to(dev, non_blocking=True), data.train.y[part].to(dev, non_blocking=True)

    def diverged(steps: int, epoch: int) -> Callable[[float], None]:
        def check(value: float) -> None:  # before the step: the weights in memory stay the last finite ones
            if not math.isfinite(value):
                raise ValueError(f"loss: {value} at step {steps + 1} (epoch {epoch + 1}); training diverged, "
                                 f"the weights are left as before this step; lower the learning rate (lr {cfg.lr})")
        return check

    bar_factory = _progress_bar if (progress and main) else None
    if before_training is not None and main:
        before_training()
    stop = max_steps is not None and steps >= max_steps
    for epoch in range(start, cfg.epochs if not stop else start):
        model.train()
        order = epoch_order(len(data.train), cfg.seed, epoch, dist)
        t0 = time.perf_counter()
        total, seen = 0.0, 0
        if epoch == start and carried and main:  # counted once: all_sum adds the ranks' shares
            seen = int(carried.get("samples", 0))
            total = float(carried["loss"]) * seen
            t0 -= float(carried.get("seconds", 0.0))
        batches = range(offset if epoch == start else 0, len(order), cfg.batch_size)
        bar = bar_factory(len(batches), f"epoch {epoch + 1}/{cfg.epochs}") if bar_factory else None
        end = len(order)  # where this epoch stops (earlier when max_steps ends the run inside it)
        for i in batches:
            idx = order[i:i + cfg.batch_size]
            if skips_batch(len(idx), cfg.batchnorm):  # BatchNorm needs more than one sample (every rank alike: equal shares)
                continue
            # data-parallel: the parts' gradients add up here, the ranks average them after the last part
            padded = padding_weights(i, len(idx), len(data.train), dist)
            if padded is None:
                loss_value = accumulate_gradients(model, loss_fn, micro_batches(idx, cfg.micro_batch), load,
                                                  lambda: opt.zero_grad(set_to_none=True), diverged(steps, epoch))
                real = len(idx)
            else:  # the epoch's last batch holds DistributedSampler's repeats: they weigh 0
                weights, all_real = padded
                weighted = accumulate_gradients(model, sample_loss_fn, micro_batches(idx, cfg.micro_batch), load,
                                                lambda: opt.zero_grad(set_to_none=True), diverged(steps, epoch),
                                                weights=micro_batches(weights, cfg.micro_batch))
                real = int((weights > 0).sum())
                loss_value = weighted * all_real / dist.world / max(1, real)  # this rank's mean over its real samples
            average_gradients(model, dist)  # (nothing to do in one process)
            opt.step()
            sched.step()
            steps += 1
            total += loss_value * real
            seen += real
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{total / seen:.4f}")
            if max_steps is not None and steps >= max_steps:
                stop = True
                end = i + cfg.batch_size
                if all(skips_batch(len(order[j:j + cfg.batch_size]), cfg.batchnorm)
                       for j in range(end, len(order), cfg.batch_size)):
                    end = len(order)  # what is left takes no step (a lone sample BatchNorm skips): the epoch is whole
                break
        if bar:
            bar.close()
        total, seen = all_sum(dist, total, float(seen))
        _sync_buffers(model, dist)
        acc = evaluate(model, data.test, eval_batch_size, dist=dist)
        row = {"epoch": epoch + 1, "loss": total / max(1, seen), "test_accuracy": acc, "seconds": time.perf_counter() - t0,
               "samples": int(seen), **sched.row()}
        partial = end < len(order)
        if partial:
            row["partial"] = True  # stopped by max_steps: a resumed run finishes this epoch first
        history.append(row)
        cut = f"  stopped by --max-steps after {int(seen)} samples of it" if partial else ""  # as the report's row says
        log(f"epoch {epoch + 1}/{cfg.epochs}  loss {row['loss']:.4f}  test accuracy {acc * 100:.2f}%  ({row['seconds']:.1f} s)"
            f"{cut}{sched.log_suffix()}")
        if checkpoint and main:
            save_checkpoint(checkpoint, model.config, model.state_dict(), optimizer_state=opt.state_dict(),
                            epoch=epoch if partial else epoch + 1, epoch_offset=end if partial else 0,
                            metrics={"history": history}, train_config=stored_config(cfg), world_size=dist.world, steps=steps,
                            data_fingerprint=fingerprint, data_content=content, **sched.checkpoint())
        if stop:
            break
    final = history[-1]["test_accuracy"] if history else evaluate(model, data.test, eval_batch_size, dist=dist)
    barrier(dist)  # every rank returns after rank 0 has written the last checkpoint
    return {"config": stored_config(cfg), "history": history, "test_accuracy": final,
            "train_samples": len(data.train), "test_samples": len(data.test), "steps": steps,
            "world_size": dist.world, "global_batch_size": cfg.batch_size * dist.world, "device": str(dev),
            "eval_batch_size": eval_batch_size, **sched.report()}


def _progress_bar(total: int, desc: str):
    """A progress bar on stderr, shown only where stderr is a terminal (tqdm's ``disable=None``): a run
    logged to a file (``nohup``, a service, CI) gets the per-epoch lines without every redraw."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=None)


def write_report(path: Union[str, os.PathLike], report: Dict) -> None:
    """Write the report JSON atomically (a :class:`~edgesnn.output_guard.GuardedFile` ``path``
    replaces only what it expects there)."""
    atomic_write(path, lambda fh: fh.write(json.dumps(report, indent=2)), mode="w")
