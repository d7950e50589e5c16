"""Device runner vs PyTorch eager: gradient parity, peak RSS and step time (digits MLP by default).

For each neuron type it builds the digits MLP (64-128-128-10, BatchNorm, T=4), saves a checkpoint,
exports ONNX Runtime training artifacts, then

* parity: ORT gradients vs torch autograd (reference backend, eval-mode BatchNorm) on one batch;
* device: runs ``python -m edgesnn.export.runner`` in a fresh process (no torch) and reads its
  ``metrics.json`` (VmHWM peak RSS, steady-state step time);
* eager: runs the same number of SGD steps in a fresh PyTorch process, for the ``reference``
  backend (the exported graph) and the default ``auto`` backend (fused kernels), measuring VmHWM
  and steady-state step time the same way.

    python tools/bench_device_runner.py [--neurons lif revlif] [--epochs 2] [--batch 32] [--repeats 3] [--out bench_device_runner.json]

Needs the ``ort`` extra (onnxruntime-training-cpu 1.19.2, onnx 1.17.0).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

_EAGER = r"""
import json, sys, time
import numpy as np, torch
from edgesnn.export.prepare import model_from_checkpoint, export_copy
from edgesnn.models import spiking_layers
ck, data, epochs, batch, lr, backend, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6], int(sys.argv[7])
if threads > 0:
    torch.set_num_threads(threads)
model, _ = model_from_checkpoint(ck)
model = export_copy(model)  # eval-mode BatchNorm (frozen statistics), like the device graph
for _, node in spiking_layers(model):
    node.backend = backend
d = np.load(data); x = torch.from_numpy(d["x"]); y = torch.from_numpy(d["y"].astype(np.int64))
opt = torch.optim.SGD(model.parameters(), lr=lr)
times, cpu = [], []
for epoch in range(epochs):
    order = torch.from_numpy(np.random.default_rng(epoch).permutation(x.shape[0]))
    for i in range(0, x.shape[0] - batch + 1, batch):
        idx = order[i:i + batch]
        t0, c0 = time.perf_counter(), time.process_time()
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(); loss.backward(); opt.step()
        times.append(time.perf_counter() - t0); cpu.append(time.process_time() - c0)
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")][0] / 1024.0
print(json.dumps({"step_ms_mean": 1000 * float(np.mean(times[1:])), "step_ms_median": 1000 * float(np.median(times[1:])),
                  "step_cpu_ms_median": 1000 * float(np.median(cpu[1:])),
                  "peak_rss_mb": hwm, "steps": len(times)}))
"""


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def grad_parity(model, art_dir: Path, x: np.ndarray, y: np.ndarray) -> float:
    """max |grad_ORT - grad_torch| over all parameters for one batch."""
    from edgesnn.export.prepare import export_copy
    from edgesnn.export.runner import import_ort_training_api

    ort, CheckpointState, Module, _ = import_ort_training_api()
    ort.set_default_logger_severity(3)
    state = CheckpointState.load_checkpoint(str(art_dir / "checkpoint"))
    module = Module(str(art_dir / "training_model.onnx"), state, str(art_dir / "eval_model.onnx"))
    module.train()
    module(x, y)
    ref = export_copy(model)
    torch.nn.functional.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    first = next(iter(ref.named_parameters()))[0]
    assert np.abs(state.parameters[first].grad).max() > 0, "first-layer gradient is zero"
    return max(float(np.abs(state.parameters[n].grad - p.grad.numpy()).max()) for n, p in ref.named_parameters())


def _best(old, new: dict) -> dict:
    if old is None:
        return new
    keep = new if new["step_ms_median"] < old["step_ms_median"] else old
    return {**keep, "peak_rss_mb": max(old["peak_rss_mb"], new["peak_rss_mb"])}


def bench(neuron: str, epochs: int, batch: int, lr: float, work: Path, repeats: int = 3, threads: int = 1) -> dict:
    from edgesnn.checkpoint import save_checkpoint
    from edgesnn.export.onnx_training import export_onnx_training
    from edgesnn.models import build_model

    torch.manual_seed(0)
    x, y = _digits()
    model = build_model("mlp", (64,), 10, 4, neuron=neuron, hidden=(128, 128))
    # host training (3 epochs, Adam, train-mode BatchNorm) so that the layers fire like a trained model's
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(3):
        for i in range(0, 1216, 64):
            loss = torch.nn.functional.cross_entropy(model(xt[i:i + 64]), yt[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    ck = save_checkpoint(work / f"{neuron}.ckpt", model.config, model.state_dict())
    art = work / f"art-{neuron}"
    export_onnx_training(model, art, batch_size=batch, learning_rate=lr)
    data = work / "digits.npz"
    np.savez(data, x=x, y=y)
    parity = grad_parity(model, art, x[:batch], y[:batch])

    device, eager = None, {}
    for _ in range(repeats):  # interleaved; keep the fastest median (the machine may be shared)
        proc = subprocess.run([sys.executable, "-m", "edgesnn.export.runner", str(art), "--data", str(data), "--epochs",
                               str(epochs), "--out", str(work / f"ft-{neuron}"), "--threads", str(threads)], capture_output=True, text=True, env=_env())
        if proc.returncode != 0:
            raise RuntimeError(f"runner failed: {proc.stderr[-2000:]}")
        device = _best(device, json.loads((work / f"ft-{neuron}" / "metrics.json").read_text()))
        for backend in ("reference", "auto"):
            p = subprocess.run([sys.executable, "-c", _EAGER, str(ck), str(data), str(epochs), str(batch), str(lr), backend, str(threads)],
                               capture_output=True, text=True, env=_env())
            if p.returncode != 0:
                raise RuntimeError(f"eager ({backend}) failed: {p.stderr[-2000:]}")
            eager[backend] = _best(eager.get(backend), json.loads(p.stdout.strip().splitlines()[-1]))
    return {"neuron": neuron, "threads": threads, "batch": batch, "timesteps": 4, "epochs": epochs, "max_grad_diff": parity, "device": device,
            "eager": eager}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--neurons", nargs="+", default=["lif", "revlif"])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs; the fastest median step time is kept")
    ap.add_argument("--threads", type=int, default=1, help="threads for both ORT and torch (0: library defaults)")
    ap.add_argument("--out", default="bench_device_runner.json")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for neuron in args.neurons:
            rows.append(bench(neuron, args.epochs, args.batch, args.lr, Path(tmp), args.repeats, args.threads))
    hdr = (f"{'neuron':8s} {'max|dgrad|':>10s} {'runner RSS':>11s} {'runner step [cpu]':>20s} {'eager-ref RSS':>14s} "
           f"{'eager-ref step [cpu]':>22s} {'eager-auto RSS':>15s} {'eager-auto step [cpu]':>23s}  acc before->after")
    print(f"digits MLP 64-128-128-10, T=4, batch {args.batch}, SGD lr {args.lr}, {args.epochs} epochs over 1797 samples; "
          f"median step wall time (best of {args.repeats}) [CPU time], {args.threads or 'default'} thread(s); "
          "peak RSS = VmHWM of a fresh process")
    print(hdr)
    for r in rows:
        d, er, ea = r["device"], r["eager"]["reference"], r["eager"]["auto"]
        def step(m):
            return f"{m['step_ms_median']:7.2f} ms [{m['step_cpu_ms_median']:6.2f}]"

        print(f"{r['neuron']:8s} {r['max_grad_diff']:10.2e} {d['peak_rss_mb']:8.1f} MB {step(d):>20s} {er['peak_rss_mb']:11.1f} MB "
              f"{step(er):>22s} {ea['peak_rss_mb']:12.1f} MB {step(ea):>23s}  {d['accuracy_before']:.3f} -> {d['accuracy_after']:.3f}")
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
