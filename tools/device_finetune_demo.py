"""Fine-tuning on the device, end to end: the README's digits figures for the onnx-step runner.

For each neuron type (LIF, RevLIF): the digits MLP (64-128-128-10, BatchNorm, T = 4) is trained
briefly on the host (Adam, lr 1e-3, batch 32, ``--host-epochs`` epochs) on ``--host-samples``
digits (a seeded draw); it is exported as one ONNX training step (``edgesnn export --format
onnx-step --batch-size 32 --lr 0.05``, SGD momentum 0.9); the other digits go into ``device.npz``
and the device runner (``python -m edgesnn.export.runner``, a fresh process; the runner holds out a
seeded 20% and reports accuracy on it before and after) fine-tunes for ``--epochs`` epochs. Printed
per neuron: samples, held-out count, accuracy before -> after, the runner's peak RSS (VmHWM).

    python tools/device_finetune_demo.py [--neurons lif revlif] [--epochs 3] [--python PATH] [--batch-size 32]
        [--accumulate 1] [--out demo.json [--force]]

``--batch-size B --accumulate N``: export at batch B and fine-tune with ``edgesnn-device
--accumulate N`` (each step on N batches of B). ``--batch-size 8 --accumulate 4`` steps on the
same 32 samples as the default, in the same order, with the memory of 8.

``--python``: the interpreter that runs the runner (default this one). The README's peak RSS is
measured with a fresh venv holding only numpy + onnxruntime and this project installed with
``--no-deps``; the development venv's onnxruntime-training build serves the same session but its
process holds more memory. Excludes: the host training and export (their time and memory).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tool_args import add_force, tool_parser, check_out, nonneg_int, positive_int, run_main, worker_error, write_json  # noqa: E402

DIGITS = 1797  # samples in scikit-learn's digits


def host_model(neuron: str, x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> nn.Module:
    """The digits MLP trained briefly on ``x [N, 64]``, ``y [N]`` (Adam, lr 1e-3, batch 32)."""
    from edgesnn.models import build_model

    torch.manual_seed(seed)
    model = build_model("mlp", (64,), 10, 4, neuron=neuron)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(yt), generator=gen)
        for i in range(0, len(order) - 1, 32):
            idx = order[i:i + 32]
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _run(cmd: list, what: str) -> None:
    """Run a step in a fresh process; a failure raises a one-line error (its last stderr line)."""
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise worker_error(what, proc.stderr)


def run_one(neuron: str, work: Path, args: argparse.Namespace) -> dict:
    """One row for ``neuron``: train on the host, export onnx-step under ``work``, fine-tune with the device runner
    in a fresh process; returns sample counts, accuracy before / after, ``peak_rss_mb`` (MiB) and the settings."""
    from sklearn.datasets import load_digits

    from edgesnn.checkpoint import save_checkpoint

    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    order = np.random.default_rng(args.seed).permutation(len(y))
    host, device = order[:args.host_samples], order[args.host_samples:]
    model = host_model(neuron, x[host], y[host], args.host_epochs, args.seed)
    ck = work / f"{neuron}.ckpt"
    save_checkpoint(ck, model.config, model.state_dict())
    art = work / f"{neuron}-artifacts"
    _run([sys.executable, "-m", "edgesnn", "export", "--checkpoint", str(ck), "--format", "onnx-step",
          "--out", str(art), "--batch-size", str(args.batch_size), "--lr", "0.05"], f"export ({neuron})")
    data = work / f"{neuron}-device.npz"
    np.savez(data, x=x[device], y=y[device])
    out = work / f"{neuron}-finetuned"
    _run([args.python, "-m", "edgesnn.export.runner", str(art), "--data", str(data), "--epochs",
          str(args.epochs), "--out", str(out), "--threads", "1", "--accumulate", str(args.accumulate)], f"runner ({neuron})")
    m = json.loads((out / "metrics.json").read_text())
    return {"neuron": neuron, "host_samples": int(len(host)), "device_samples": int(len(device)),
            "train_samples": m.get("samples_per_epoch"), "eval_samples": m["eval_samples"],
            "accuracy_before": m["accuracy_before"], "accuracy_after": m["accuracy_after"],
            "peak_rss_mb": m["peak_rss_mb"], "epochs": args.epochs, "batch_size": args.batch_size,
            "accumulate": args.accumulate, "steps": m["steps"]}


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: parse ``argv`` (default ``sys.argv[1:]``), run, return the exit status."""
    ap = tool_parser(description=__doc__.splitlines()[0])
    ap.add_argument("--neurons", nargs="+", default=["revlif", "lif"], choices=("lif", "revlif"),
                    help="neuron types, one row each (default revlif lif)")
    ap.add_argument("--epochs", type=positive_int, default=3, help="device fine-tuning epochs (default 3)")
    ap.add_argument("--host-samples", type=positive_int, default=640,
                    help=f"digits for the host training; the rest go to the device (default 640, at most {DIGITS - 40})")
    ap.add_argument("--host-epochs", type=positive_int, default=1, help="host training epochs (default 1)")
    ap.add_argument("--seed", type=nonneg_int, default=0, help="seed of the host/device split and host training (default 0)")
    ap.add_argument("--python", default=sys.executable, help="interpreter that runs the device runner")
    ap.add_argument("--batch-size", type=positive_int, default=32, help="the exported graphs' batch (default 32)")
    ap.add_argument("--accumulate", type=positive_int, default=1,
                    help="batches per device step (edgesnn-device --accumulate; default 1)")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    add_force(ap, "the --out file")
    args = ap.parse_args(argv)
    need = -(-args.batch_size * 5 // 4)  # the device needs one batch after the runner's 20% hold-out
    if args.host_samples > DIGITS - need:
        ap.error(f"--host-samples: expected at most {DIGITS - need} (the digits data set has {DIGITS} samples; the "
                 f"device needs {need}: one batch of {args.batch_size} after its 20% hold-out), got {args.host_samples}")
    py = shutil.which(args.python) if os.sep not in args.python else args.python
    if not py or not os.path.isfile(py) or not os.access(py, os.X_OK):
        ap.error(f"--python: expected an executable Python interpreter, got {args.python!r}")
    probe = subprocess.run([py, "-c", "import edgesnn.export.runner, onnxruntime; print('edgesnn runner ok')"],
                           capture_output=True, text=True)
    if probe.stdout.strip() != "edgesnn runner ok":  # /bin/true passed the check above, then failed on a missing metrics.json
        last = (probe.stderr.strip().splitlines() or [f"exit status {probe.returncode}, no output"])[-1][:120]
        ap.error(f"--python: {args.python} cannot run the device runner ({last}); install onnxruntime and edgesnn "
                 "there (pip install onnxruntime && pip install --no-deps .)")
    args.out = check_out(ap, args.out, "--out", args.force)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for neuron in args.neurons:
            rows.append(run_one(neuron, Path(tmp), args))
    print(f"export batch {args.batch_size}, {args.accumulate} batch(es) per device step")
    print(f"{'neuron':<7} {'host':>5} {'device':>6} {'held out':>8} {'accuracy before -> after':>26} {'peak RSS':>9}")
    for r in rows:
        print(f"{r['neuron']:<7} {r['host_samples']:>5} {r['device_samples']:>6} {r['eval_samples']:>8} "
              f"{r['accuracy_before']:>15.3f} -> {r['accuracy_after']:.3f} {r['peak_rss_mb']:>6.1f} MiB")
    if args.out:
        write_json(args.out, rows, indent=2, newline=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
