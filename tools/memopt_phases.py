"""``edgesnn.optimize_memory``: predicted vs measured peak of every phase of one training step.

The planner (:func:`edgesnn.planner.network_model.predict_peak`) replays a step phase by phase:
the forward of each block, then the backward of each block in reverse. This tool measures the same
phases: each block's forward and backward (``edgesnn.memopt.block``'s autograd function) is wrapped
so that the peak RSS is reset when it starts and read when it ends. Every configuration runs in a
fresh process with large allocations forced to ``mmap`` (``MALLOC_MMAP_THRESHOLD_=131072``: RSS
tracks live tensors), one warm-up step, the kernels' buffer pool emptied, then one measured step;
a phase's peak is its VmHWM minus the RSS before the step (parameters, their gradients and the
process baseline excluded, as in the planner's prediction without ``fixed_bytes``). Optimizer
state is not allocated (plain backward).

Models: the built-in classifiers (``edgesnn.models.build_model``: ``convnet``, ``vgg11``, average
pooling; ``mlp``), ``vgg11-max``, the max-pool VGG-11 of ``tools/bench_network_memory.py``
(SpikingJelly layers) on which the planner's coefficients were first fitted, and ``nodefirst``, a
node on the model input before max-pool conv blocks. ``--backend`` picks the nodes' backend (``torch``:
PyTorch's step loop), ``--input`` one batch repeated over T or new at every step.

    python tools/memopt_phases.py --model vgg11 -T 3 --batch 8
    python tools/memopt_phases.py --model convnet -T 3 --batch 32 --chunk 1 --json out.json [--force]
    python tools/memopt_phases.py --suite          # the 44 configurations of SUITE (~10 min)
    python tools/memopt_phases.py --suite torch --threads 1   # the 33 of TORCH_SUITE (~10 min)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict
from typing import Dict, List, Optional

#: (model, T, batch, chunk or None for the planner's choice, neuron, fitted): ``fitted`` marks the
#: configurations the planner's coefficients for held blocks, average pools and nodes under autograd
#: (RevLIF) were fitted on; the others check them.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: edgesnn from any folder
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tool_args import add_force, tool_parser, check_out, err_pct, positive_int, run_main, worker_error, write_json  # noqa: E402

SUITE = [(*cfg, "lif", True) for cfg in [
    ("convnet", 1, 32, None), ("convnet", 3, 32, None), ("convnet", 8, 32, None), ("convnet", 8, 32, 4),
    ("convnet", 16, 16, None), ("convnet", 3, 64, None),
    ("vgg11", 3, 8, None), ("vgg11", 8, 8, None), ("vgg11", 16, 8, 4), ("vgg11", 16, 8, None),
    ("vgg11", 4, 16, None), ("vgg11", 8, 8, 2),
    ("vgg11-max", 8, 8, None), ("vgg11-max", 16, 8, 4),
]] + [(*cfg, "revlif", True) for cfg in [
    ("convnet", 2, 32, None), ("convnet", 2, 32, 1), ("convnet", 4, 32, None), ("convnet", 4, 32, 1),
    ("convnet", 8, 32, 2), ("vgg11", 2, 32, None), ("vgg11", 2, 32, 1), ("vgg11", 4, 8, None), ("vgg11", 4, 32, 1),
    ("vgg11", 8, 32, 2), ("vgg11", 8, 8, None), ("vgg11-max", 8, 8, None),
]] + [(*cfg, "lif", False) for cfg in [
    ("convnet", 2, 48, None), ("convnet", 6, 32, None), ("convnet", 1, 64, None), ("convnet", 12, 16, 3),
    ("vgg11", 6, 12, None), ("vgg11", 2, 16, None), ("vgg11", 12, 8, None), ("vgg11", 5, 8, 1),
    ("vgg11-max", 4, 16, None), ("vgg11-max", 32, 4, None),
]] + [(*cfg, "revlif", False) for cfg in [
    ("convnet", 6, 16, None), ("convnet", 3, 16, 1), ("vgg11", 3, 16, None), ("vgg11", 6, 8, 2),
]] + [(*cfg, "lif", False) for cfg in [
    ("convnet-nobn", 8, 32, None), ("convnet-nobn", 16, 16, None), ("vgg11-nobn", 8, 8, None), ("vgg11-nobn", 5, 8, 1),
]]


#: ``--suite torch``: (model, T, batch, chunk or None, neuron, backend, input, fitted): nodes running
#: PyTorch's step loop (``backend="torch"``; the RevLIF on the Numba kernel beside it for the max-pool
#: blocks of ``nodefirst``); ``fitted`` marks those the planner's LOOP_* and AUTOGRAD_MAXPOOL_* terms
#: were fitted on.
TORCH_SUITE = [(m, T, b, k, n, "torch", i, True) for n in ("lif", "revlif") for m, T, b, k, i in [
    ("convnet", 4, 16, None, "steps"), ("convnet", 4, 16, None, "repeated"), ("convnet", 16, 16, None, "steps"),
    ("convnet", 16, 16, None, "repeated"), ("convnet", 8, 16, 1, "steps"), ("convnet", 8, 16, 4, "steps"),
    ("convnet", 4, 32, None, "steps"), ("convnet", 16, 8, None, "repeated"), ("vgg11", 4, 8, None, "steps"),
    ("nodefirst", 4, 32, None, "steps"), ("nodefirst", 16, 32, None, "steps"),
]] + [("nodefirst", T, 32, None, "revlif", "numba", "steps", True) for T in (4, 8, 16)] + [
    (m, T, b, k, n, "torch", i, False) for n in ("lif", "revlif") for m, T, b, k, i in [
        ("convnet", 2, 32, None, "steps"), ("vgg11", 4, 8, None, "repeated"), ("nodefirst", 8, 32, None, "repeated"),
        ("mlp", 4, 32, None, "repeated"),
    ]]

#: hidden widths of the ``mlp`` model (CIFAR-shaped input flattened to 3072 features)
MLP_HIDDEN = (1024, 1024)


def _nodefirst(neuron: str, backend: str):
    """A spiking node on the model input, then conv 4->16 / BatchNorm / node / 2x2 max-pool twice and a
    linear head (edgesnn layers, time-major): its first block runs as plain modules (nothing to train
    before it), the next two hold a max-pool after the node."""
    from torch import nn

    from edgesnn.nn import LIF, RevLIF, SeqToANN

    node = (lambda: LIF(backend=backend)) if neuron == "lif" else (lambda: RevLIF(backend=backend))
    return nn.Sequential(node(), SeqToANN(nn.Conv2d(4, 16, 3, padding=1), nn.BatchNorm2d(16)), node(),
                         SeqToANN(nn.MaxPool2d(2)), SeqToANN(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)),
                         node(), SeqToANN(nn.MaxPool2d(2)), SeqToANN(nn.Flatten(), nn.Linear(16 * 8 * 8, 10)))


def _model(name: str, T: int, batch: int, neuron: str = "lif", backend: str = "auto", inp: str = "repeated"):
    """``(model, example input [T, B, C, 32, 32], labels, time-major logits)``: the input (C = 3; 4 for
    ``nodefirst``, whose first node may be a RevLIF of 2 groups, values in [0, 2) so that it fires) is
    one batch repeated over T (``inp="repeated"``: ``x.unsqueeze(0).expand(T, ...)``, a stride-0 view)
    or new at every step (``"steps"``); the nodes run on ``backend`` (``build_model``'s ``node``)."""
    import torch

    torch.manual_seed(0)
    c, scale = (4, 2.0) if name == "nodefirst" else (3, 1.0)
    x0 = torch.rand(batch, c, 32, 32) * scale
    y = torch.randint(0, 10, (batch,))
    x = x0.unsqueeze(0).expand(T, *x0.shape) if inp == "repeated" else torch.rand(T, batch, c, 32, 32) * scale
    if name == "vgg11-max":
        if backend != "auto":
            raise ValueError(f"--backend: vgg11-max takes only 'auto' (its nodes are the default ones), got {backend!r}")
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from vgg11_sj import build_vgg

        model, _ = build_vgg(neuron)
        return model, x, y, True
    if name == "nodefirst":
        return _nodefirst(neuron, backend), x, y, True
    from edgesnn.models import build_model

    kw = dict(hidden=MLP_HIDDEN) if name == "mlp" else {}
    if name.endswith("-nobn"):  # the conv models without BatchNorm (their convolutions get a bias)
        name, kw = name[:-len("-nobn")], dict(batchnorm=False)
    model = build_model(name, (3, 32, 32), 10, T, neuron=neuron, node={"backend": backend}, **kw)
    return model, x, y, False


def _blocks(model) -> list:
    from edgesnn.memopt.sequential import MemoryOptimizedSequential

    return [b for m in model.modules() if isinstance(m, MemoryOptimizedSequential) for b in m._memopt_blocks]


def worker(name: str, T: int, batch: int, chunk: Optional[int], threads: int, neuron: str = "lif",
           backend: str = "auto", inp: str = "repeated") -> dict:
    """One configuration in this process; returns predicted and measured bytes per phase."""
    import torch
    import torch.nn.functional as F

    import edgesnn
    from edgesnn.kernels import buffers
    from edgesnn.memopt import block as block_mod
    from edgesnn.memory import peak_rss_bytes, reset_peak_rss, rss_bytes
    from edgesnn.planner.network import block_shapes
    from edgesnn.planner.network_model import predict_peak

    torch.set_num_threads(threads)
    model, x, y, time_major = _model(name, T, batch, neuron, backend, inp)
    model.train()
    plan = edgesnn.optimize_memory(model, x, chunk=chunk)
    blocks = _blocks(model)
    shapes = block_shapes(blocks, model)
    chunks = [b.chunk for b in blocks]
    predicted: Dict[str, int] = {}
    predict_peak(shapes, chunks, 0, keeps=[b.keep for b in blocks], holds=[b.hold for b in blocks],
                 breakdown=predicted)
    index = {id(b): i for i, b in enumerate(blocks)}

    measured: Dict[str, int] = {}
    state = {"base": None}
    fwd, bwd = block_mod._BlockFunction.forward, block_mod._BlockFunction.backward

    def timed(kind, fn, block_of):
        def run(ctx, *args):
            if state["base"] is None:
                return fn(ctx, *args)
            if kind == "backward" and state.pop("head", False):  # the head's backward ran up to here
                measured["backward head"] = peak_rss_bytes() - state["base"]
            reset_peak_rss()
            out = fn(ctx, *args)
            key = f"{kind} block{index[id(block_of(ctx, args))]}"
            measured[key] = max(measured.get(key, 0), peak_rss_bytes() - state["base"])
            return out
        return staticmethod(run)

    block_mod._BlockFunction.forward = timed("forward", fwd, lambda ctx, a: a[0])
    block_mod._BlockFunction.backward = timed("backward", bwd, lambda ctx, a: ctx.block)

    def step():
        model.zero_grad(set_to_none=False)
        logits = model(x)
        loss = F.cross_entropy(logits.mean(0) if time_major else logits, y)
        if state["base"] is not None:
            reset_peak_rss()
            state["head"] = True
        loss.backward()

    step()  # warm-up: gradients allocated, kernels compiled
    buffers.release()
    state["base"] = rss_bytes()
    reset_peak_rss()
    step()
    whole = max([peak_rss_bytes() - state["base"]] + list(measured.values()))  # each phase reset the peak
    return {"model": name, "neuron": neuron, "backend": backend, "input": inp, "T": T, "batch": batch, "chunks": chunks, "holds": [b.hold for b in blocks],
            "keeps": [b.keep for b in blocks], "unfused_pool": [s.unfused_pool for s in shapes],
            "predicted_peak": plan.peak_bytes - plan.fixed_bytes, "predicted_phase": plan.peak_phase,
            "measured_peak": whole, "predicted": predicted, "measured": measured,
            "a_bytes": [s.a_bytes for s in shapes], "shapes": [asdict(s) for s in shapes]}


def run_fresh(name: str, T: int, batch: int, chunk: Optional[int], threads: int, neuron: str = "lif",
              backend: str = "auto", inp: str = "repeated") -> dict:
    """Measure one configuration in a fresh worker process (large allocations via ``mmap``, ``threads`` threads);
    returns the worker's dict: predicted and measured peaks per phase and for the step (bytes), chunks, shapes."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", NUMBA_NUM_THREADS=str(threads))
    args = [sys.executable, os.path.abspath(__file__), "--worker", "--model", name, "-T", str(T), "--batch", str(batch),
            "--threads", str(threads), "--neuron", neuron, "--backend", backend, "--input", inp] + (
                ["--chunk", str(chunk)] if chunk else [])
    out = subprocess.run(args, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise worker_error(f"worker {' '.join(args[2:])}", out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def annotate(r: dict) -> dict:
    """Add the printed errors to a worker's result (in place; also returned): ``baseline`` (the
    measured peak), ``unit`` (bytes), ``err_pct`` (the step's) and ``phase_err_pct`` (per phase)."""
    r["baseline"], r["unit"] = "measured (VmHWM minus the RSS before the step)", "bytes"
    r["err_pct"] = err_pct(r["predicted_peak"], r["measured_peak"])
    r["phase_err_pct"] = {k: err_pct(p, r["measured"][k]) for k, p in r["predicted"].items() if k in r["measured"]}
    return r


def _pct(err: Optional[float], width: int) -> str:
    return f"{err:+{width}.1f}%" if err is not None else f"{'-':>{width + 1}}"


def print_result(r: dict) -> None:
    """Print one worker result: the step's predicted and measured peak (MiB) and the error, then a line per phase
    (predicted and measured MiB, error, pool kind); adds the errors to ``r`` (:func:`annotate`)."""
    mib = 2.0 ** 20
    err = annotate(r)["err_pct"]
    print(f"\n{r['model']} ({r['neuron']}, {r.get('backend', 'auto')}, input {r.get('input', 'repeated')}) T={r['T']} batch={r['batch']} chunks={r['chunks']}: step peak predicted "
          f"{r['predicted_peak'] / mib:.1f} MiB ({r['predicted_phase']}), measured {r['measured_peak'] / mib:.1f} MiB "
          f"({_pct(err, 0)})")
    print(f"  {'phase':<16} {'pred MiB':>9} {'meas MiB':>9} {'err':>7}  pool")
    for key, pred in r["predicted"].items():
        meas = r["measured"].get(key)
        pool = ""
        if "block" in key:  # (not the head's backward)
            shape = r["shapes"][int(key.rsplit("block", 1)[1])]
            pool = ("autograd" if shape["pool_autograd"] else "unfused") if shape["unfused_pool"] else ""
        if meas is None:
            print(f"  {key:<16} {pred / mib:9.2f} {'-':>9} {'':>7}  {pool}")
            continue
        print(f"  {key:<16} {pred / mib:9.2f} {meas / mib:9.2f} {_pct(r['phase_err_pct'][key], 6)}  {pool}")


def print_summary(results: List[dict], fitted: List[bool]) -> None:
    """One line per configuration: the step's predicted and measured peak; the ranges of the errors
    per neuron and backend."""
    mib = 2.0 ** 20
    print(f"\n| {'model':9} | neuron | backend | input    | {'T':>3} | {'batch':>5} | chunks | {'pred MiB':>8} | "
          f"{'meas MiB':>8} | {'err':>7} |")
    errs = []
    for r, fit in zip(results, fitted):
        err = annotate(r)["err_pct"]
        backend, inp = r.get("backend", "auto"), r.get("input", "repeated")
        if err is not None:
            errs.append(((r["neuron"], backend), fit, err))
        mark = "" if fit else " (not fitted)"
        print(f"| {r['model']:9} | {r['neuron']:6} | {backend:7} | {inp:8} | {r['T']:>3} | {r['batch']:>5} | {r['chunks']} | "
              f"{r['predicted_peak'] / mib:8.1f} | {r['measured_peak'] / mib:8.1f} | {_pct(err, 6)} |{mark}")
    for key in sorted({k for k, _, _ in errs}):
        for fit in (True, False):
            part = [e for k, f, e in errs if k == key and f == fit]
            if part:
                print(f"{key[0]} ({key[1]}), {'fitted' if fit else 'not fitted'}: step peak errors {min(part):+.1f}% .. "
                      f"{max(part):+.1f}% ({len(part)} configurations)")


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: parse ``argv`` (default ``sys.argv[1:]``), run, return the exit status."""
    ap = tool_parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("convnet", "vgg11", "vgg11-max", "mlp", "nodefirst", "convnet-nobn", "vgg11-nobn"),
                    default="vgg11",
                    help=f"model (default vgg11; mlp: hidden widths {list(MLP_HIDDEN)}; nodefirst: a node on the input, "
                         "then conv/BatchNorm/node/max-pool blocks; -nobn: without BatchNorm)")
    ap.add_argument("-T", type=positive_int, default=3, help="time steps (default 3)")
    ap.add_argument("--batch", type=positive_int, default=8, help="batch size (default 8)")
    ap.add_argument("--chunk", type=positive_int, default=None, help="force one chunk size (default: the planner's choice)")
    ap.add_argument("--neuron", choices=("lif", "revlif"), default="lif", help="neuron type (default lif)")
    ap.add_argument("--backend", choices=("auto", "numba", "torch"), default="auto",
                    help="the nodes' backend (default auto: numba where it runs; vgg11-max: auto only)")
    ap.add_argument("--input", choices=("repeated", "steps"), default="repeated",
                    help="the model input: one batch repeated over T (default) or new at every step")
    ap.add_argument("--threads", type=positive_int, default=2, help="torch and Numba threads of the worker (default 2)")
    ap.add_argument("--suite", nargs="?", const="default", choices=("default", "torch"), default=None,
                    help="run every configuration of SUITE (default) or of TORCH_SUITE (torch)")
    ap.add_argument("--json", default=None, help="write the results here (an existing file only with --force)")
    add_force(ap, "the --json file")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.model, args.T, args.batch, args.chunk, args.threads, args.neuron, args.backend,
                                args.input)))
        return 0
    args.json = check_out(ap, args.json, "--json", args.force)
    if args.suite == "torch":
        configs = TORCH_SUITE
    elif args.suite:
        configs = [c[:5] + ("auto", "repeated", c[5]) for c in SUITE]
    else:
        configs = [(args.model, args.T, args.batch, args.chunk, args.neuron, args.backend, args.input, False)]
    results = []
    for model, T, batch, chunk, neuron, backend, inp, _ in configs:
        r = run_fresh(model, T, batch, chunk, args.threads, neuron, backend, inp)
        print_result(r)
        results.append(r)
    if len(results) > 1:
        print_summary(results, [c[-1] for c in configs])
    if args.json:
        write_json(args.json, results, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
