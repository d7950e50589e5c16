"""Device runner vs PyTorch eager: peak RSS and step time over T (onnx-step, onnx-training, eager).

Default (``--mode sweep``): for the digits-shaped wide MLP (64-1024-1024-10) and conv net
(1x8x8, channels 16, 32), LIF and RevLIF, T = 8, 32, 64, batch 32, one thread, it exports
``onnx-step`` and (optionally) ``onnx-training`` artifacts, runs each with the device runner in a
fresh process (``python -m edgesnn.export.runner``; VmHWM peak RSS, RSS after the session was
created, median step time of steps 2..n) and the same SGD-momentum steps in a fresh PyTorch eager
process (``torch`` backend: the project's hand-written LIF / reversible RevLIF backward,
eval-mode BatchNorm), then prints one table and two memory checks: RevLIF's runner peak RSS
grows (T 8 -> 64) at least 4x more slowly than LIF's, and RevLIF onnx-step at T = 64 needs at most
half the memory of onnx-training.

    python tools/bench_device_runner.py [--models mlp convnet] [--timesteps 8 32 64] [--training-max-t 64]
        [--steps 6] [--batch 32] [--threads 1] [--head-only] [--out bench_device_runner.json [--force]]

``--head-only`` also runs every onnx-step graph exported with all layers but the classifier head
frozen (``edgesnn export --freeze``), in the same run: its peak RSS, step time and the step-time
ratio to the full fine-tune.

The growth check needs two or more ``--timesteps`` (else it prints "not checked"). No file is
written without ``--out``; the JSON holds the rows and the checks with their ratios
(``check_figures``: each check's figures, ratio, target and baseline).

``--mode legacy`` runs the older T = 4 onnx-training parity/timing table described below
(``--neurons``, ``--epochs``, ``--repeats`` belong to it; ``--models``, ``--timesteps``,
``--training-max-t``, ``--steps`` to the sweep).

Legacy mode: device runner vs PyTorch eager: gradient parity, peak RSS and step time (digits MLP).

For each neuron type it builds the digits MLP (64-128-128-10, BatchNorm, T=4), saves a checkpoint,
exports ONNX Runtime training artifacts, then

* parity: ORT gradients vs torch autograd (reference backend, eval-mode BatchNorm) on one batch;
* device: runs ``python -m edgesnn.export.runner`` in a fresh process (no torch) and reads its
  ``metrics.json`` (VmHWM peak RSS, steady-state step time);
* eager: runs the same number of SGD steps in a fresh PyTorch process, for the ``reference``
  backend (the exported graph) and the default ``auto`` backend (fused kernels), measuring VmHWM
  and steady-state step time the same way.

    python tools/bench_device_runner.py --mode legacy [--neurons lif revlif] [--epochs 2] [--batch 32] [--repeats 3] [--out bench_device_runner.json]

Needs the ``ort`` extra (onnxruntime-training-cpu 1.19.2, onnx 1.17.0).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from device_runner_checks import sweep_checks  # noqa: E402
from tool_args import add_force, tool_parser, check_out, nonneg_int, positive_int, run_main, worker_error, write_json  # noqa: E402

DIGITS = 1797  # samples in scikit-learn's digits

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


def grad_parity(model: torch.nn.Module, art_dir: Path, x: np.ndarray, y: np.ndarray) -> float:
    """max |grad_ORT - grad_torch| over all parameters for one batch (``x [B, 64]`` float32, ``y [B]`` int64),
    the ONNX Runtime training artifacts in ``art_dir`` against ``model``'s export copy."""
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
    """Legacy row for ``neuron``: the digits MLP (T = 4) trained briefly on the host, exported for ONNX Runtime
    training under ``work``; gradient parity (``max_grad_diff``) and, best of ``repeats`` fresh-process runs of
    ``epochs`` epochs, the device runner's and eager PyTorch's (``reference``, ``auto``) peak RSS (MiB) and
    median step time (ms)."""
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
    thread_args = ["--threads", str(threads)] if threads > 0 else []  # 0: the library's default
    for _ in range(repeats):  # interleaved; keep the fastest median (the machine may be shared)
        proc = subprocess.run([sys.executable, "-m", "edgesnn.export.runner", str(art), "--data", str(data), "--epochs",
                               str(epochs), "--out", str(work / f"ft-{neuron}"), "--force", *thread_args],
                              capture_output=True, text=True, env=_env())
        if proc.returncode != 0:
            raise worker_error(f"runner ({neuron})", proc.stderr)
        device = _best(device, json.loads((work / f"ft-{neuron}" / "metrics.json").read_text()))
        for backend in ("reference", "auto"):
            p = subprocess.run([sys.executable, "-c", _EAGER, str(ck), str(data), str(epochs), str(batch), str(lr), backend, str(threads)],
                               capture_output=True, text=True, env=_env())
            if p.returncode != 0:
                raise worker_error(f"eager ({backend})", p.stderr)
            eager[backend] = _best(eager.get(backend), json.loads(p.stdout.strip().splitlines()[-1]))
    return {"neuron": neuron, "threads": threads, "batch": batch, "timesteps": 4, "epochs": epochs, "max_grad_diff": parity, "device": device,
            "eager": eager}


_EAGER_SWEEP = r"""
import json, sys, time
import numpy as np, torch
from edgesnn.export.prepare import model_from_checkpoint, export_copy
from edgesnn.models import spiking_layers
ck, data, steps, batch, lr, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
if threads > 0:
    torch.set_num_threads(threads)
model, _ = model_from_checkpoint(ck)
model = export_copy(model)
for _, node in spiking_layers(model):
    node.backend = "torch"
d = np.load(data); x = torch.from_numpy(d["x"]); y = torch.from_numpy(d["y"].astype(np.int64))
opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
times = []
for i in range(steps):
    xb, yb = x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]
    t0 = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(xb), yb)
    opt.zero_grad(); loss.backward(); opt.step()
    times.append(time.perf_counter() - t0)
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")][0] / 1024.0
print(json.dumps({"step_ms_median": 1000 * float(np.median(times[1:])), "peak_rss_mb": hwm}))
"""


def _sweep_model(name: str, neuron: str, T: int):
    from edgesnn.models import build_model

    if name == "mlp":
        return build_model("mlp", (64,), 10, T, neuron=neuron, hidden=(1024, 1024))
    return build_model("convnet", (1, 8, 8), 10, T, neuron=neuron, channels=(16, 32))


def _run_runner(art: Path, data: Path, out: Path, extra=(), threads: int = 1) -> dict:
    thread_args = ["--threads", str(threads)] if threads > 0 else []  # 0: ONNX Runtime's default
    proc = subprocess.run([sys.executable, "-m", "edgesnn.export.runner", str(art), "--data", str(data), "--epochs", "1",
                           "--out", str(out), *thread_args, "--holdout", "0", "--force", *extra],
                          capture_output=True, text=True, env=_env())
    if proc.returncode != 0:
        raise worker_error(f"runner on {art.name}", proc.stderr)
    return json.loads((out / "metrics.json").read_text())


def _all_but_head(model) -> list:
    """Every layer with parameters except the last (the classifier head): ``freeze=`` for a head-only fine-tune."""
    layers = list(dict.fromkeys(n.rsplit(".", 1)[0] for n, _ in model.named_parameters()))
    return layers[:-1]


def sweep(models: Sequence[str], timesteps: Sequence[int], training_max_t: int, steps: int, batch: int, lr: float,
          work: Path, log: Callable[[str], Any] = print, threads: int = 1, head_only: bool = False,
          chunk: Optional[int] = None) -> list:
    """One row per model, neuron and T: the onnx-step runner's peak RSS and step time (and the
    onnx-training runner's up to ``training_max_t``, and eager PyTorch's), each in a fresh process.
    ``chunk``: the onnx-step graphs' time steps per loop iteration (``export_onnx_step(chunk=)``;
    ``None``: the export's default)."""
    import time as _time

    from edgesnn.checkpoint import save_checkpoint
    from edgesnn.export.onnx_step import export_onnx_step
    from edgesnn.export.onnx_training import export_onnx_training

    x, y = _digits()
    rows = []
    for name in models:
        xs = x if name == "mlp" else x.reshape(-1, 1, 8, 8)
        data = work / f"{name}.npz"
        np.savez(data, x=np.ascontiguousarray(xs[:steps * batch] * 2.0), y=y[:steps * batch])
        for neuron in ("lif", "revlif"):
            for T in timesteps:
                torch.manual_seed(0)
                model = _sweep_model(name, neuron, T).eval()
                ck = save_checkpoint(work / f"{name}-{neuron}-{T}.ckpt", model.config, model.state_dict())
                row = {"model": name, "neuron": neuron, "T": T, "batch": batch}
                t0 = _time.perf_counter()
                art = work / f"step-{name}-{neuron}-{T}"
                export_onnx_step(model, art, batch, "sgd", lr, momentum=0.9, chunk=chunk)
                row["chunk"] = chunk
                row["step_export_s"] = _time.perf_counter() - t0
                row["step_file_mb"] = (art / "step.onnx").stat().st_size / 2**20
                row["onnx_step"] = _run_runner(art, data, work / "ft-step", threads=threads)
                if head_only:  # the same graph with every layer but the head frozen (export --freeze)
                    art_h = work / f"head-{name}-{neuron}-{T}"
                    export_onnx_step(model, art_h, batch, "sgd", lr, momentum=0.9, freeze=_all_but_head(model),
                                     chunk=chunk)
                    row["onnx_step_head_only"] = _run_runner(art_h, data, work / "ft-head", threads=threads)
                    row["head_only_step_x_of_full"] = (row["onnx_step_head_only"]["step_ms_median"]  # as printed
                                                       / row["onnx_step"]["step_ms_median"])
                if T <= training_max_t:
                    t0 = _time.perf_counter()
                    art_t = work / f"train-{name}-{neuron}-{T}"
                    export_onnx_training(model, art_t, batch_size=batch, learning_rate=lr)
                    row["training_export_s"] = _time.perf_counter() - t0
                    row["onnx_training"] = _run_runner(art_t, data, work / "ft-train", threads=threads)
                    import shutil

                    shutil.rmtree(art_t, ignore_errors=True)
                p = subprocess.run([sys.executable, "-c", _EAGER_SWEEP, str(ck), str(data), str(steps), str(batch), str(lr),
                                    str(threads)], capture_output=True, text=True, env=_env())
                if p.returncode != 0:
                    raise worker_error("eager", p.stderr)
                row["eager"] = json.loads(p.stdout.strip().splitlines()[-1])
                rows.append(row)
                log(_sweep_line(row))
    return rows


def _fmt(m: dict, key: str, unit: str, width: int = 8) -> str:
    if not m:
        return f"{'-':>{width + len(unit) + 1}s}"
    return f"{m[key]:{width}.1f} {unit}" if "rss" in key else f"{m[key]:{width}.2f} {unit}"


def _sweep_line(r: dict) -> str:
    s, t, e = r.get("onnx_step", {}), r.get("onnx_training", {}), r.get("eager", {})
    return (f"{r['model']:7s} {r['neuron']:6s} {r['T']:3d} | step {_fmt(s, 'peak_rss_mb', 'MiB')} "
            f"(session {s['rss_after_session_mb']:6.1f}) {_fmt(s, 'step_ms_median', 'ms')} | training "
            f"{_fmt(t, 'peak_rss_mb', 'MiB')} {_fmt(t, 'step_ms_median', 'ms')} | eager {_fmt(e, 'peak_rss_mb', 'MiB')} "
            f"{_fmt(e, 'step_ms_median', 'ms')} | export {r['step_export_s']:5.1f} s, {r['step_file_mb']:5.1f} MiB"
            + (f" | head only {_fmt(h, 'peak_rss_mb', 'MiB')} {_fmt(h, 'step_ms_median', 'ms')} "
               f"({h['step_ms_median'] / s['step_ms_median']:.2f}x the step time)" if (h := r.get("onnx_step_head_only")) else ""))


_LEGACY_ONLY = {"neurons": ["lif", "revlif"], "epochs": 2, "repeats": 3}
_SWEEP_ONLY = {"models": ["mlp", "convnet"], "timesteps": [8, 32, 64], "training_max_t": 64, "steps": 6, "head_only": False,
               "chunk": 0}


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: parse ``argv`` (default ``sys.argv[1:]``), run, return the exit status."""
    ap = tool_parser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("sweep", "legacy"), default="sweep",
                    help="sweep: peak RSS and step time over T (default); legacy: the T = 4 parity/timing table")
    ap.add_argument("--models", nargs="+", default=None, choices=("mlp", "convnet"),
                    help="sweep: models (default mlp convnet)")
    ap.add_argument("--timesteps", nargs="+", type=positive_int, default=None,
                    help="sweep: time steps T, two or more for the growth check (default 8 32 64)")
    ap.add_argument("--training-max-t", type=nonneg_int, default=None,
                    help="sweep: skip onnx-training above this T (export time; default 64)")
    ap.add_argument("--steps", type=positive_int, default=None,
                    help="sweep: training steps per run, >= 2 (the step time is the median of steps 2..n; default 6)")
    ap.add_argument("--head-only", action="store_true", default=None,
                    help="sweep: also run each onnx-step graph exported with every layer but the head frozen "
                         "(edgesnn export --freeze): peak RSS and step time of a head-only fine-tune")
    ap.add_argument("--chunk", type=positive_int, default=None, metavar="K",
                    help="sweep: time steps per loop iteration of the onnx-step graphs (edgesnn export --time-chunk), "
                         "dividing every --timesteps (default: the export's own choice)")
    ap.add_argument("--neurons", nargs="+", default=None, choices=("lif", "revlif"),
                    help="legacy: neuron types (default lif revlif)")
    ap.add_argument("--epochs", type=positive_int, default=None, help="legacy: epochs over the digits (default 2)")
    ap.add_argument("--batch", type=positive_int, default=32, help="batch size (default 32)")
    ap.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default 0.05)")
    ap.add_argument("--repeats", type=positive_int, default=None,
                    help="legacy: interleaved runs; the fastest median step time is kept (default 3)")
    ap.add_argument("--threads", type=nonneg_int, default=1,
                    help="threads for both ORT and torch (0: library defaults; default 1)")
    ap.add_argument("--out", default=None, help="write the rows and checks to this JSON file (default: no file)")
    add_force(ap, "the --out file")
    args = ap.parse_args(argv)
    own, other = (_SWEEP_ONLY, _LEGACY_ONLY) if args.mode == "sweep" else (_LEGACY_ONLY, _SWEEP_ONLY)
    for key in other:
        if getattr(args, key) is not None:
            ap.error(f"--{key.replace('_', '-')}: only used with --mode {'legacy' if args.mode == 'sweep' else 'sweep'}")
    for key, default in own.items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    if not (args.lr > 0 and args.lr < float("inf")):
        ap.error(f"--lr: expected a finite number > 0, got {args.lr}")
    if args.mode == "sweep":
        bad = [T for T in args.timesteps if args.chunk and T % args.chunk]
        if bad:
            ap.error(f"--chunk: expected a divisor of every --timesteps, got {args.chunk} (T {', '.join(map(str, bad))})")
        if args.steps < 2:
            ap.error(f"--steps: expected an integer >= 2 (the step time is the median of steps 2..n), got {args.steps}")
        if args.steps * args.batch > DIGITS:
            ap.error(f"--steps {args.steps} x --batch {args.batch}: expected at most {DIGITS} samples (the digits data set)")
    elif args.epochs * (DIGITS // args.batch) < 2:
        ap.error(f"--batch: expected at most {DIGITS // 2} (legacy mode times steps 2..n: needs two or more steps), "
                 f"got {args.batch}")
    args.out = check_out(ap, args.out, "--out", args.force)
    if args.mode == "sweep":
        threads = "one thread" if args.threads == 1 else (f"{args.threads} threads" if args.threads else "default threads")
        print(f"batch {args.batch}, SGD momentum 0.9, {args.steps} steps, {threads}; peak RSS = VmHWM of a fresh runner "
              "process; step = median wall time of steps 2..n; eager = PyTorch, torch backend", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            rows = sweep(args.models, args.timesteps, args.training_max_t, args.steps, args.batch, args.lr, Path(tmp),
                         log=lambda line: print(line, flush=True), threads=args.threads, head_only=args.head_only,
                         chunk=args.chunk or None)
        figures = []
        checks = sweep_checks(rows, figures)
        for ok, line in checks:
            print(("PASS " if ok else "FAIL " if ok is not None else "") + line)
        if args.out:
            write_json(args.out, {"baseline": "per check (check_figures); head_only_step_x_of_full: the full fine-tune",
                                  "units": "MiB (*_mb), ms (*_ms_*), s (*_s)", "rows": rows, "checks": [[ok, line] for ok, line in checks], "check_figures": figures},
                       indent=2, newline=True)
            print(f"wrote {args.out}")
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for neuron in args.neurons:
            rows.append(bench(neuron, args.epochs, args.batch, args.lr, Path(tmp), args.repeats, args.threads))
    hdr = (f"{'neuron':8s} {'max|dgrad|':>10s} {'runner RSS':>11s} {'runner step [cpu]':>20s} {'eager-ref RSS':>14s} "
           f"{'eager-ref step [cpu]':>22s} {'eager-auto RSS':>15s} {'eager-auto step [cpu]':>23s}  training-data acc before->after")
    print(f"digits MLP 64-128-128-10, T=4, batch {args.batch}, SGD lr {args.lr}, {args.epochs} epochs over 1797 samples; "
          f"median step wall time (best of {args.repeats}) [CPU time], {args.threads or 'default'} thread(s); "
          "peak RSS = VmHWM of a fresh process")
    print(hdr)
    for r in rows:
        d, er, ea = r["device"], r["eager"]["reference"], r["eager"]["auto"]
        def step(m):
            return f"{m['step_ms_median']:7.2f} ms [{m['step_cpu_ms_median']:6.2f}]"

        print(f"{r['neuron']:8s} {r['max_grad_diff']:10.2e} {d['peak_rss_mb']:8.1f} MiB {step(d):>20s} {er['peak_rss_mb']:11.1f} MiB "
              f"{step(er):>22s} {ea['peak_rss_mb']:12.1f} MiB {step(ea):>23s}  {d['accuracy_before']:.3f} -> {d['accuracy_after']:.3f}")
    if args.out:
        write_json(args.out, rows, indent=2, newline=True)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
