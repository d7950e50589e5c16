"""``edgesnn train``: train a spiking classifier on built-in or local data."""

from __future__ import annotations

import argparse

from ..kernels.dispatch import BACKENDS
from ..models import MODEL_NAMES
from .data import DATASETS
from .loop import TrainConfig, train, write_report


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a spiking classifier (digits is built in; no downloads)",
                       description="Train a spiking classifier. Example: edgesnn train --dataset digits --model mlp --neuron revlif --timesteps 4 --epochs 30")
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--data-path", default=None, help="local folder for cifar10 (python batches) or folder (one sub-folder per class)")
    p.add_argument("--model", choices=MODEL_NAMES, default=None, help="default mlp (or the plan's)")
    p.add_argument("--neuron", default=None, help="lif, revlif or revlif:G (G groups); or a comma-separated list, one per spiking layer (default lif)")
    p.add_argument("--timesteps", "-T", type=int, default=None, help="default 4 (or the plan's)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=None, help="default 64 (or the plan's)")
    p.add_argument("--plan", default=None, help="a plan from `edgesnn plan --json`: its model, T, per-layer neurons and batch")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for Numba and PyTorch (default: all cores)")
    p.add_argument("--checkpoint", default=None, help="write a checkpoint here after every epoch (atomic)")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    p.add_argument("--json", default=None, help="write the report (config, per-epoch metrics) here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _from_plan(args: argparse.Namespace) -> None:
    """Fill model, T, neurons and batch from ``--plan``; explicit flags must agree with it."""
    from ..planner import load_plan

    plan = load_plan(args.plan)
    planned = {"model": plan.model.get("name"), "timesteps": plan.timesteps, "batch_size": plan.batch}
    for key, value in planned.items():
        given = getattr(args, key)
        if given is not None and given != value:
            raise ValueError(f"--{key.replace('_', '-')}: {given} contradicts the plan {args.plan} ({value})")
        setattr(args, key, value)
    if args.neuron is not None:
        raise ValueError("--neuron: the plan chooses the neuron of every layer; drop --neuron or --plan")
    args.neuron = ",".join(plan.neuron)


def run(args: argparse.Namespace) -> int:
    if args.plan:
        _from_plan(args)
    args.model = args.model or "mlp"
    args.timesteps = 4 if args.timesteps is None else args.timesteps
    args.batch_size = 64 if args.batch_size is None else args.batch_size
    args.neuron = args.neuron or "lif"
    from ..planner.runtime import lean_allocator

    lean_allocator()  # the planner's peak-memory predictions assume it
    if args.threads is not None:
        from ..kernels.config import set_num_threads

        set_num_threads(args.threads)
    neuron = args.neuron.split(",") if "," in args.neuron else args.neuron
    cfg = TrainConfig(dataset=args.dataset, model=args.model, neuron=neuron, timesteps=args.timesteps,
                      epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      data_path=args.data_path, backend=args.backend)
    report = train(cfg, checkpoint=args.checkpoint, resume=args.resume, progress=not args.no_progress)
    print(f"final test accuracy: {report['test_accuracy'] * 100:.2f}% "
          f"({args.model}, {args.neuron}, T={args.timesteps}, {report['test_samples']} test samples)")
    if args.json:
        write_report(args.json, report)
    return 0
