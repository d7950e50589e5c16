"""Device runner with gradient accumulation: a batch of B in parts vs the same batch at once.

For each model (the device-runner sweep's digits-shaped wide MLP 64-1024-1024-10 and conv net
1x8x8, channels 16, 32; ``vgg11``: VGG-11 on CIFAR-shaped 3x32x32 inputs, seeded uniform [0, 1)
values, as only memory and agreement are measured) and neuron (LIF, RevLIF) at ``-T``, it exports
``onnx-step`` twice, at batch ``--batch`` B and at ``B / --parts`` N, and runs ``edgesnn-device``
in fresh processes (one thread, SGD momentum, ``--steps`` steps on the first ``steps x B`` samples):

* ``whole``: the B export, one step per batch (``step.onnx``);
* ``parts``: the B / N export with ``--accumulate N`` (``grad.onnx`` N times, then ``apply.onnx``):
  the same samples per step, in the same order, so both runs end at the same parameters up to
  float rounding (``max |dparam|`` in the table);
* ``small``: the B / N export without accumulation, a step per part: the memory floor of a part.

It prints peak RSS (VmHWM of the runner process), the median step time of steps 2..n and the
ratios whole / parts; ``--out FILE`` writes the rows as JSON.

    python tools/bench_device_accumulate.py [-T 32] [--batch 256] [--parts 8] [--steps 4] [--models mlp convnet vgg11]
        [--chunk K] [--out bench_device_accumulate.json [--force]]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_device_runner import DIGITS, _digits, _run_runner, _sweep_model  # noqa: E402
from tool_args import add_force, tool_parser, check_out, positive_int, run_main, write_json  # noqa: E402


def bench(name: str, neuron: str, T: int, batch: int, parts: int, steps: int, lr: float, work: Path,
          chunk: Optional[int] = None) -> dict:
    """One table row: model ``name`` with ``neuron`` at ``T`` time steps, exported at batch ``batch`` and at
    ``batch // parts`` under ``work``, run as ``whole``, ``parts_run`` (accumulated) and ``small``; returns the
    runs' figures (``peak_rss_mb`` MiB, ``step_ms_median`` ms), ``max_param_diff`` and the ratios."""
    from edgesnn.export.onnx_step import export_onnx_step

    torch.manual_seed(0)
    data = work / f"{name}.npz"
    if name == "vgg11":
        from edgesnn.models import build_model

        g = np.random.default_rng(0)
        np.savez(data, x=g.random((steps * batch, 3, 32, 32), np.float32), y=g.integers(0, 10, steps * batch))
        model = build_model("vgg11", (3, 32, 32), 10, T, neuron=neuron).eval()
    else:
        x, y = _digits()
        xs = x if name == "mlp" else x.reshape(-1, 1, 8, 8)
        np.savez(data, x=np.ascontiguousarray(xs[:steps * batch] * 2.0), y=y[:steps * batch])
        model = _sweep_model(name, neuron, T).eval()
    part = batch // parts
    whole_art, part_art = work / f"whole-{name}-{neuron}", work / f"part-{name}-{neuron}"
    export_onnx_step(model, whole_art, batch, "sgd", lr, momentum=0.9, chunk=chunk)
    m = export_onnx_step(model, part_art, part, "sgd", lr, momentum=0.9, chunk=chunk)
    row = {"model": name, "neuron": neuron, "T": T, "batch": batch, "parts": parts, "part_batch": part, "chunk": m.chunk}
    row["whole"] = _run_runner(whole_art, data, work / "o-whole")
    row["parts_run"] = _run_runner(part_art, data, work / "o-parts", extra=("--accumulate", str(parts)))
    row["small"] = _run_runner(part_art, data, work / "o-small")
    with np.load(work / "o-whole" / "params.npz") as a, np.load(work / "o-parts" / "params.npz") as b:
        row["max_param_diff"] = max(float(np.abs(a[k] - b[k]).max()) for k in a.files)
        with np.load(whole_art / "init.npz") as init:
            row["max_param_change"] = max(float(np.abs(a[k] - init[k]).max()) for k in a.files)
    w, p = row["whole"], row["parts_run"]
    row["peak_rss_ratio"] = w["peak_rss_mb"] / p["peak_rss_mb"]
    row["step_time_ratio"] = p["step_ms_median"] / w["step_ms_median"]
    return row


def _line(r: dict) -> str:
    w, p, s = r["whole"], r["parts_run"], r["small"]
    return (f"{r['model']:7s} {r['neuron']:6s} K={r['chunk']} | whole B={r['batch']}: {w['peak_rss_mb']:7.1f} MiB {w['step_ms_median']:8.1f} ms"
            f" | {r['parts']} x {r['part_batch']}: {p['peak_rss_mb']:7.1f} MiB {p['step_ms_median']:8.1f} ms"
            f" | one part: {s['peak_rss_mb']:7.1f} MiB | whole/parts RSS {r['peak_rss_ratio']:4.2f}x, "
            f"parts step time {r['step_time_ratio']:4.2f}x | max |dparam| {r['max_param_diff']:.1e} "
            f"(moved {r['max_param_change']:.1e})")


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: parse ``argv`` (default ``sys.argv[1:]``), run, return the exit status."""
    ap = tool_parser(description=__doc__.splitlines()[0])
    ap.add_argument("-T", type=positive_int, default=32, help="time steps (default 32)")
    ap.add_argument("--batch", type=positive_int, default=256, help="samples per optimizer step (default 256)")
    ap.add_argument("--parts", type=positive_int, default=8, help="parts per step, >= 2, dividing --batch (default 8)")
    ap.add_argument("--steps", type=positive_int, default=4, help="steps per run, >= 2 (default 4)")
    ap.add_argument("--models", nargs="+", default=["mlp", "convnet"], choices=("mlp", "convnet", "vgg11"))
    ap.add_argument("--neurons", nargs="+", default=["lif", "revlif"], choices=("lif", "revlif"))
    ap.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default 0.05)")
    ap.add_argument("--chunk", type=int, default=None, choices=(1, 2, 4),
                    help="time steps per loop iteration of the exported graphs (edgesnn export --time-chunk; default: "
                         "the exporter's, edgesnn.export.step_program.default_chunk)")
    ap.add_argument("--out", default=None, help="write the rows to this JSON file (default: no file)")
    add_force(ap, "the --out file")
    args = ap.parse_args(argv)
    if args.parts < 2 or args.batch % args.parts:
        ap.error(f"--parts: expected an integer >= 2 that divides --batch {args.batch}, got {args.parts}")
    if args.steps < 2:
        ap.error(f"--steps: expected an integer >= 2 (the step time is the median of steps 2..n), got {args.steps}")
    if args.steps * args.batch > DIGITS and set(args.models) - {"vgg11"}:
        ap.error(f"--steps {args.steps} x --batch {args.batch}: expected at most {DIGITS} samples (the digits data set)")
    if not 0 < args.lr < float("inf"):
        ap.error(f"--lr: expected a finite number > 0, got {args.lr}")
    if args.chunk is not None and args.T % args.chunk:
        ap.error(f"--chunk: expected a divisor of -T {args.T}, got {args.chunk}")
    args.out = check_out(ap, args.out, "--out", args.force)
    print(f"T = {args.T}, {args.steps} steps of {args.batch} samples, SGD momentum 0.9, one thread; peak RSS = VmHWM of a "
          "fresh edgesnn-device process; step = median wall time of steps 2..n", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for neuron in args.neurons:
                rows.append(bench(name, neuron, args.T, args.batch, args.parts, args.steps, args.lr, Path(tmp), args.chunk))
                print(_line(rows[-1]), flush=True)
    if args.out:
        write_json(args.out, {"baseline": "whole (the batch B at once, one step per batch)", "units": "MiB (*_mb), ms (*_ms_*)",
                              "ratios": {"peak_rss_ratio": "whole / parts peak RSS (x less memory in parts)",
                                         "step_time_ratio": "parts / whole median step time (x the whole batch's time)"},
                              "rows": rows}, indent=2, newline=True)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
