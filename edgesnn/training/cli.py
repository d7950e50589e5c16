"""``edgesnn train``: train a spiking classifier on built-in or local data.

Data-parallel on several processes: ``torchrun --nproc-per-node N -m edgesnn train ...`` (gloo on
CPU, NCCL on CUDA; see :mod:`edgesnn.training.distributed`). ``--batch-size`` is then per rank.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Optional

from ..atomic import check_input_file, check_not_inside, user_path
from ..errors import UsageError, refuse_empty
from ..kernels.dispatch import BACKENDS
from ..lr_schedules import ADAM_RATE_MAX, ADAM_RATE_RANGE, is_float32_rate
from ..models import MODEL_NAMES, POOLS, check_pool
from ..output_guard import guarded
from .data import DATASETS
from .device import DEVICES, check_backend_device, resolve_device
from .flag_checks import check_model_fits_dataset
from .lr_schedule import SCHEDULES
from .micro_batch import check_micro_batch, largest_part, smallest_micro_batch
from .loop import EVAL_BATCH_SIZE, TrainConfig, check_outputs, train, write_report
from .train_config import MAX_SEED

if TYPE_CHECKING:  # pragma: no cover
    from ..planner.plan import Plan


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand to the ``edgesnn`` command line's subparsers ``sub``."""
    p = sub.add_parser("train", help="train a spiking classifier (digits is built in; no downloads)",
                       description="Train a spiking classifier. Example: edgesnn train --dataset digits --model mlp --neuron revlif --timesteps 4 --epochs 30")
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="default digits (or the plan's); folder: .png/.jpg/.jpeg/.bmp images, each resized to "
                        "32x32 and converted to RGB")
    p.add_argument("--data-dir", "--data-path", type=user_path, dest="data_path", default=None, metavar="DIR",
                   help="local data folder: cifar10 (python batches), folder (one sub-folder per class; images "
                        "directly inside, resized to 32x32 RGB), or the folder tonic reads nmnist/dvsgesture/shd "
                        "from (DIR/NMNIST, DIR/DVSGesture, DIR/SHD); nothing is downloaded")
    p.add_argument("--model", choices=MODEL_NAMES, default=None, help="default mlp (or the plan's)")
    p.add_argument("--neuron", default=None, help="lif, revlif or revlif:G (G groups); or a comma-separated list, one per spiking layer (default lif)")
    p.add_argument("--timesteps", "-T", type=int, default=None, help="default 4 (or the plan's)")
    p.add_argument("--epochs", type=int, default=30, help="passes over the training data (default 30)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="default 64 (or the plan's; with --plan a smaller one is accepted, a larger one needs --micro-batch)")
    p.add_argument("--micro-batch", type=int, default=None, metavar="M",
                   help="compute each batch M samples at a time and add up their gradients before the one optimizer "
                        "step: the memory of batch M, the step of the whole batch (without BatchNorm the same "
                        "gradients up to float rounding; with it each part has its own statistics; at least "
                        "3 with BatchNorm); with --plan, M may be at most the plan's batch and --batch-size is free")
    p.add_argument("--eval-batch", type=int, default=None,
                   help=f"samples per batch of the evaluation after every epoch (default {EVAL_BATCH_SIZE}, or the plan's)")
    p.add_argument("--plan", type=user_path, default=None,
                   help="a plan from `edgesnn plan --json`: its model, T, per-layer neurons, batch, evaluation batch "
                        "and dataset")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate, a finite number > 0 within float32 range (default 0.001)")
    p.add_argument("--lr-schedule", choices=SCHEDULES, default="constant",
                   help="constant (default): every step at --lr; cosine: step k of K = --epochs x steps per epoch "
                        "at lr * 0.5 * (1 + cos(pi k / K)) (torch's CosineAnnealingLR stepped per batch). The run "
                        "that starts it fixes K; --resume continues it (same --lr-schedule; --epochs at most that run's)")
    p.add_argument("--seed", type=int, default=0, help="random seed, 0 to 2**32 - 1 (default 0)")
    p.add_argument("--backend", choices=BACKENDS, default=None, help="neuron backend (default auto)")
    p.add_argument("--device", default="auto",
                   help=f"where the model, the data and the loss live: {', '.join(DEVICES)} or cuda:N "
                        "(auto: CUDA when available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for Numba and PyTorch (default: all cores)")
    p.add_argument("--checkpoint", type=user_path, default=None, help="write a checkpoint here after every epoch (atomic); "
                   "an existing one needs --resume or --force")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint (same settings; --epochs may grow, "
                   "up to the end of a --lr-schedule cosine run)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --checkpoint / --json")
    p.add_argument("--json", type=user_path, default=None, help="write the report (config, per-epoch metrics) here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--pool", choices=POOLS, default=None,
                   help="the conv models' 2x2 pools: avg (default, or the plan's) or max (SpikingJelly's spiking VGG "
                        "habit); the mlp model has none")
    p.add_argument("--no-batchnorm", action="store_true",
                   help="models without BatchNorm (every sample computed independently of its batch)")
    p.add_argument("--memopt", action="store_true",
                   help="train with edgesnn.optimize_memory (packed block inputs, chunked recomputation, exact "
                        "BatchNorm): same gradients, training memory nearly constant in T")
    p.add_argument("--sync-batchnorm", action="store_true",
                   help="data-parallel on CUDA: BatchNorm statistics over all ranks (SyncBatchNorm); without "
                        "torchrun it has no effect (warned)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps (a quick smoke run)")
    p.set_defaults(func=run)


def _from_plan(args: argparse.Namespace, main: bool = True, local_world: int = 1) -> None:
    """Fill model (name, widths, backend, BatchNorm), T, neurons, batch, evaluation batch and dataset
    from ``--plan``; explicit flags must agree with it. The plan's memory figures hold for exactly
    that model, and training runs Adam, so a plan for another optimizer is refused. The plan file's
    fields are checked on loading (:meth:`edgesnn.planner.Plan.from_dict`: one line naming the field).

    A built-in dataset's sample shape and class count are checked against the plan here, before the
    data is read. A plan made for custom data (``--dataset-bytes``) leaves ``--dataset`` free. A plan that
    counted no dataset is refused when the run's built-in dataset would take its predicted peak past
    its budget, and warned about (on stderr; ``main``: this process prints) otherwise.

    Under ``torchrun`` the plan holds for each process: ``main`` notes that ``local_world``
    processes on this board need that many times its peak (:func:`plan_per_process_note`).

    With ``--micro-batch M`` the plan's batch bounds ``M`` (the samples computed at once, what the
    plan's memory figures count) and ``--batch-size`` is free: a larger batch then steps in parts.
    A ``--batch-size`` below the plan's batch is taken as it is (the planner's predicted peak grows
    with the batch, so the plan's choices fit it; BatchNorm still needs 2 samples), with a one-line
    note (``main``) that the plan's figures are for its own batch; a larger one needs ``--micro-batch``.
    """
    from ..planner import load_plan
    from ..planner.datasets import DATASET_SPECS
    from ..planner.plan import check_unplanned_dataset

    plan = load_plan(args.plan, label="--plan")
    if plan.optimizer != "adam":
        raise ValueError(f"--plan: {args.plan} was made for the {plan.optimizer} optimizer, but edgesnn train runs "
                         "Adam; make the plan with --optimizer adam")
    # node settings edgesnn train has no flag for: training the default node would not be the planned model
    unsupported = [f"model.node.{k}" for k in sorted(plan.model.get("node", {})) if k != "backend"]
    unsupported += [f"model.revlif.{k}" for k in sorted(plan.model.get("revlif") or {})]
    if unsupported:
        raise ValueError(f"--plan: {unsupported[0]}: {args.plan} plans nodes with settings edgesnn train does not set "
                         "(it takes only model.node.backend); make the plan for the default nodes, or train that model "
                         "from Python (build_model(..., node=..., revlif=...))")
    batchnorm = plan.model.get("batchnorm", True)  # a JSON bool (checked on loading)
    if args.no_batchnorm and batchnorm:
        raise ValueError(f"--no-batchnorm: contradicts the plan {args.plan} (made for a model with BatchNorm)")
    args.no_batchnorm = not batchnorm
    planned = {"model": plan.model["name"], "timesteps": plan.timesteps, "batch_size": plan.batch,
               "eval_batch": plan.eval_batch, "backend": plan.model.get("node", {}).get("backend", "auto"),
               "pool": plan.model.get("pool", "avg")}
    if plan.dataset.get("name"):
        planned["dataset"] = plan.dataset["name"]
    # the most samples per part of a larger batch (plans from before --micro-batch: the batch); the
    # remedies below name it only when a part of that size can run (BatchNorm: at least 3)
    fits = min(plan.predicted.get("micro_batch", plan.batch), plan.batch)
    least = smallest_micro_batch(batchnorm)
    remedy = (f"use --micro-batch {fits} or less" if fits >= least else
              f"no larger batch fits its budget in parts (a later part holds every parameter gradient as well; "
              f"{fits} samples per part{f', BatchNorm needs {least}' if batchnorm and fits else ''}): drop --micro-batch "
              f"and train with --batch-size {plan.batch} or less, or make a plan with a larger --budget")
    if batchnorm and args.batch_size == 1:  # run() would suggest --no-batchnorm, which contradicts the plan
        raise ValueError(f"--batch-size: the plan {args.plan}'s model has BatchNorm, which needs at least 2 samples "
                         f"per batch; got 1 (use 2 to {plan.batch})")
    # a smaller batch than the plan's: one step of fewer samples, within the plan's memory (the
    # predicted peak grows with the batch); the plan's figures stay those of its own batch
    smaller = args.batch_size is not None and args.batch_size < plan.batch  # below 1: run() refuses it
    if smaller:
        del planned["batch_size"]
    if args.micro_batch is not None:  # the plan's batch bounds the samples computed at once, not the step's batch
        step = args.batch_size or plan.batch
        part = largest_part(step, args.micro_batch)
        if part > plan.batch:
            raise ValueError(f"--micro-batch: {args.micro_batch} is more than the plan {args.plan} fits at once "
                             f"(batch {plan.batch}); {remedy}")
        if args.batch_size is not None:
            planned.pop("batch_size", None)
        if part > fits and step > args.micro_batch:
            raise ValueError(f"--micro-batch: {args.micro_batch} samples per part exceed the plan {args.plan}'s budget: "
                             f"a later part holds every parameter gradient as well; {remedy}")
    for key, value in planned.items():
        given = getattr(args, key)
        if given is not None and given != value:
            more = ""
            if key == "batch_size" and given > value:
                more = (f"; to step on batches of {given} within the plan's memory add --micro-batch {fits}"
                        if fits >= least else f"; {remedy}")
            raise ValueError(f"--{key.replace('_', '-')}: {given} contradicts the plan {args.plan} ({value}){more}")
        setattr(args, key, value)
    if args.neuron is not None:
        raise ValueError("--neuron: the plan chooses the neuron of every layer; drop --neuron or --plan")
    dataset = args.dataset or "digits"
    if dataset in DATASET_SPECS:  # a built-in dataset's shape and classes are known before it is read
        from types import SimpleNamespace

        from ..planner.datasets import model_input_shape
        from .loop import check_plan_fits

        check_plan_fits(plan.model, SimpleNamespace(in_shape=model_input_shape(dataset, args.model),
                                                    num_classes=DATASET_SPECS[dataset].num_classes))
    warning = check_unplanned_dataset(plan, dataset, args.plan)
    if warning and main:
        print(f"edgesnn train: {warning}", file=sys.stderr)
    note = plan_per_process_note(plan, args.plan, local_world)
    if note and main:
        print(f"edgesnn train: {note}", file=sys.stderr)
    if smaller and args.batch_size >= 1 and (args.micro_batch is None or args.micro_batch >= args.batch_size) and main:
        peak = int(plan.predicted.get("peak_bytes", 0))
        print(f"edgesnn train: note: --batch-size {args.batch_size} is below the plan {args.plan}'s batch {plan.batch}: "
              f"its neurons fit, and its predicted peak ({peak / 2**20:.0f} MiB, for batch {plan.batch}) bounds this "
              f"run's from above; `edgesnn plan --batch {args.batch_size}` predicts this batch", file=sys.stderr)
    args.neuron = ",".join(plan.neuron)
    args.planned_model = plan.model
    args.widths = {k: list(plan.model[k]) for k in ("hidden", "channels") if k in plan.model}


def plan_per_process_note(plan: "Plan", origin: str, local_world: int) -> Optional[str]:
    """The note for ``--plan`` under ``torchrun`` with ``local_world`` > 1 processes on this board
    (``None`` for one): the plan's batch and budget are each process's, so together they need
    ``local_world`` times its predicted peak."""
    if local_world <= 1:
        return None
    peak = int(plan.predicted.get("peak_bytes", 0))
    return (f"note: --plan: {origin}'s batch {plan.batch} and memory budget ({plan.budget_bytes / 2**20:.0f} MiB) "
            f"apply to each process: these {local_world} processes on one board need {local_world} x its predicted "
            f"peak ({local_world} x {peak / 2**20:.0f} MiB = {local_world * peak / 2**20:.0f} MiB)")


def _threads_for_ranks(args: argparse.Namespace):
    """Under torchrun: give each rank cores / local ranks threads (or --threads) before Numba loads; log it."""
    from .distributed import configure_threads, cpu_cores, env_world, rank_threads

    info = env_world()
    if not info.distributed:
        return info
    n = rank_threads(args.threads, info.local_world)
    counts = configure_threads(n)
    how = "--threads" if args.threads is not None else f"{cpu_cores()} cores / {info.local_world} ranks on this node"
    print(f"edgesnn train: rank {info.rank}/{info.world}: {counts['numba']} Numba and {counts['torch']} PyTorch threads ({how})",
          file=sys.stderr)
    return info


#: The value flags whose empty value (``--checkpoint ""``, an unset shell variable) must not stand for
#: "not given": the run would train without writing the checkpoint or report it was asked for, or
#: ignore the plan / data folder / neurons it was given (``edgesnn plan`` refuses its empty values too).
_NONEMPTY = {"checkpoint": ("--checkpoint", "a checkpoint file path"), "json": ("--json", "a report file path"),
             "plan": ("--plan", "a plan file from `edgesnn plan --json`"), "data_path": ("--data-dir", "a data folder"),
             "neuron": ("--neuron", "lif, revlif, revlif:G or a comma-separated list of them")}


def check_nonempty(args: argparse.Namespace) -> None:
    """An empty value of a :data:`_NONEMPTY` flag is a one-line error, not the flag's default."""
    for key, (flag, expected) in _NONEMPTY.items():
        refuse_empty(getattr(args, key, None), flag, expected,
                     " (an empty value is not the default; drop the flag to leave it out)")


def check_input_paths(args: argparse.Namespace) -> None:
    """``--plan`` must be a regular file (a pipe is not "no such file") and ``--data-dir`` must not
    be a file: one line naming the flag (the dataset loaders' own errors say only ``data:``)."""
    if args.plan is not None:
        check_input_file(args.plan, "--plan", "a plan JSON file from `edgesnn plan --json`")
    if args.data_path is not None and os.path.exists(args.data_path) and not os.path.isdir(args.data_path):
        raise NotADirectoryError(f"--data-dir: {args.data_path} is a file, not a folder; expected a data folder")


def run(args: argparse.Namespace) -> int:
    """``edgesnn train``: check the flags (and ``--plan``), train, write the outputs; returns the exit status 0."""
    check_nonempty(args)
    check_input_paths(args)
    info = _threads_for_ranks(args)
    if args.plan:
        _from_plan(args, main=info.main, local_world=info.local_world if info.distributed else 1)
    args.model = args.model or "mlp"
    args.dataset = args.dataset or "digits"
    args.eval_batch = EVAL_BATCH_SIZE if args.eval_batch is None else args.eval_batch
    args.timesteps = 4 if args.timesteps is None else args.timesteps
    args.batch_size = 64 if args.batch_size is None else args.batch_size
    args.neuron = args.neuron or "lif"
    args.backend = args.backend or "auto"
    args.pool = args.pool or "avg"
    check_pool(args.model, args.pool, "--pool")
    for flag, value in (("--epochs", args.epochs), ("--timesteps", args.timesteps), ("--batch-size", args.batch_size),
                        ("--eval-batch", args.eval_batch), ("--threads", 1 if args.threads is None else args.threads)):
        if value < 1:
            raise UsageError(f"{flag}: expected an integer >= 1, got {value}")
    if args.sync_batchnorm and args.no_batchnorm:
        raise UsageError("--sync-batchnorm: the model has no BatchNorm (--no-batchnorm); drop one of them")
    if args.micro_batch is not None:
        check_micro_batch(args.micro_batch, not args.no_batchnorm, "--micro-batch")
    if args.batch_size < 2 and not args.no_batchnorm:
        raise UsageError("--batch-size: BatchNorm needs at least 2 samples per batch, got 1; add --no-batchnorm "
                         "to train with batch 1")
    if not is_float32_rate(args.lr, ADAM_RATE_MAX):
        raise UsageError(f"--lr: expected {ADAM_RATE_RANGE}, got {args.lr}")
    if args.max_steps is not None and args.max_steps < 1:
        raise UsageError(f"--max-steps: expected an integer >= 1, got {args.max_steps}")
    if args.resume and args.force:  # --force was ignored: the run resumed (edgesnn-device refuses the pair too)
        raise UsageError("--resume and --force exclude each other (continue the checkpoint, or start again and "
                         "overwrite it)")
    if not 0 <= args.seed <= MAX_SEED:
        raise UsageError(f"--seed: expected an integer in [0, {MAX_SEED}], got {args.seed}")
    from ..models import parse_neuron_spec

    for spec in args.neuron.split(","):
        try:
            parse_neuron_spec(spec)
        except ValueError as exc:  # its message names the model argument, "neuron: ..."
            raise UsageError(f"--neuron: {str(exc).partition(': ')[2]}") from None
    args.neuron = ",".join(s.strip().lower() for s in args.neuron.split(","))  # as stored: LIF and lif resume alike
    neuron = args.neuron.split(",") if "," in args.neuron else args.neuron
    cfg = TrainConfig(dataset=args.dataset, model=args.model, neuron=neuron, timesteps=args.timesteps,
                      epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      data_path=args.data_path, backend=args.backend, batchnorm=not args.no_batchnorm,
                      memopt=args.memopt, lr_schedule=args.lr_schedule, pool=args.pool, micro_batch=args.micro_batch,
                      **getattr(args, "widths", {}))
    check_model_fits_dataset(cfg)  # before compiling kernels and reading (or binning) the data
    device = resolve_device(args.device)
    check_backend_device(args.backend, device)
    check_outputs(args.checkpoint, args.resume, args.force, report=args.json)
    # each written only over what it holds now: another process may write the same path while this one trains
    checkpoint, report_path = guarded(args.checkpoint, "--checkpoint"), guarded(args.json, "--json")
    for flag, out in (("--checkpoint", args.checkpoint), ("--json", args.json)):
        if out:  # --force / --resume permit replacing an output, never the --plan being read
            check_not_inside(out, flag, plan=args.plan)
    if args.sync_batchnorm and not info.distributed:
        print("edgesnn train: warning: --sync-batchnorm has no effect outside torchrun (one process: BatchNorm "
              "already sees the whole batch)", file=sys.stderr)
    from ..kernels.cli import compile_notice, memopt_kernel_modules

    # the kernels of the run's own neurons, and those optimize_memory calls (CPU tensors only)
    memopt = (memopt_kernel_modules(cfg.model, cfg.neuron, cfg.hidden if cfg.model == "mlp" else cfg.channels,
                                    cfg.batchnorm, cfg.pool, args.backend)
              if cfg.memopt and device.type == "cpu" else ())

    def notice() -> None:
        text = compile_notice(args.backend, cfg.neuron, memopt)
        if text:
            print(text, file=sys.stderr)

    from ..planner.runtime import lean_allocator

    lean_allocator()  # the planner's peak-memory predictions assume it
    if args.threads is not None and not info.distributed:
        from ..kernels.config import set_num_threads

        set_num_threads(args.threads)
    if info.distributed:
        from .distributed import setup

        info = setup(device.type)  # (train() warms the kernels after its checks: a refusal comes before any compile)
    try:
        report = train(cfg, checkpoint=checkpoint, resume=args.resume, progress=not args.no_progress, force=args.force,
                       before_training=notice, device=str(device), max_steps=args.max_steps,
                       sync_batchnorm=args.sync_batchnorm, planned_model=getattr(args, "planned_model", None),
                       eval_batch_size=args.eval_batch)
        if info.main:
            ranks = f", {info.world} ranks x batch {args.batch_size}" if info.distributed else ""
            if args.micro_batch is not None and args.micro_batch < args.batch_size:
                ranks += f", batch {args.batch_size} in micro-batches of at most {args.micro_batch}"
            print(f"final test accuracy: {report['test_accuracy'] * 100:.2f}% "
                  f"({args.model}, {args.neuron}, T={args.timesteps}, {report['test_samples']} test samples, {device}{ranks})")
            if args.json:
                write_report(report_path, report)
        if info.distributed:  # success only: a rank that failed never reaches it (no hang)
            from .distributed import barrier

            barrier(info)  # every rank leaves the group together, once rank 0 has written its report
    finally:
        if info.distributed:
            import torch.distributed as tdist

            if tdist.is_initialized():
                tdist.destroy_process_group()
    return 0
