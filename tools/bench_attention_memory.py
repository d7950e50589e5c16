"""Peak training memory of a Spikformer-style model (spiking self-attention): edgesnn plain,
``optimize_memory``, and ``optimize_memory`` with the attention wrapped in
``edgesnn.checkpoint_over_time``, against SpikingJelly plain and its ``memopt`` (level 1, the
attention and MLP modules as targets) in the same run.

Model: a patch stem (conv 2->C, BN, LIF, max-pool, conv, BN, LIF), ``--depth`` blocks of attention
(q/k/v: 1x1 conv + BN + LIF each, spike-matrix products ``(q k^T) v`` per head without softmax,
projection LIF + conv + BN + LIF) and MLP (conv C->2C->C with BN and LIF), residual adds, a linear
head on the mean over tokens; input ``[T, B, 2, 32, 32]`` (uniform [0, 1)), cross-entropy on the
mean over T, float32, one PyTorch thread. Each row runs in a fresh process with large allocations
forced to ``mmap`` (``MALLOC_MMAP_THRESHOLD_=131072``: RSS tracks live tensors): one warm-up step,
then the peak of one step is its VmHWM minus the RSS before it (parameters, their gradients and the
process baseline excluded); the time is the faster of two steps. No optimizer step.

    python tools/bench_attention_memory.py                  # T = 4 and 16, batch 8 (~3 min)
    python tools/bench_attention_memory.py -T 16 --json out.json [--force]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from typing import Any, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: edgesnn from any folder
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tool_args import add_force, tool_parser, check_out, positive_int, run_main, worker_error, write_json  # noqa: E402

#: rows: (name, neuron library, how the model is rewritten)
ROWS = [("edgesnn", "edgesnn", "plain"), ("edgesnn optimize_memory", "edgesnn", "memopt"),
        ("edgesnn optimize_memory + checkpoint_over_time", "edgesnn", "memopt+over_time"),
        ("SpikingJelly", "sj", "plain"), ("SpikingJelly memopt level 1", "sj", "memopt")]
BASELINE = "SpikingJelly"


def build(lib: str, over_time: bool, C: int, heads: int, depth: int) -> Tuple[Any, type, type]:
    """The model with edgesnn's (``lib="edgesnn"``) or SpikingJelly's (``"sj"``) nodes and multi-step wrappers.

    ``C`` channels, ``heads`` attention heads, ``depth`` blocks; ``over_time`` wraps the attention products in
    ``edgesnn.checkpoint_over_time``. The model takes ``[T, B, 2, 32, 32]`` and returns logits ``[T, B, 10]``.
    Returns ``(model, Attention class, MLP class)`` (the classes are SpikingJelly memopt's targets)."""
    import torch
    from torch import nn

    import edgesnn

    if lib == "sj":
        from spikingjelly.activation_based import layer, neuron

        def node(**kw):
            return neuron.LIFNode(step_mode="m", **kw)
        wrap = layer.SeqToANNContainer
    else:
        from edgesnn.nn import LIF, SeqToANN

        def node(**kw):
            return LIF(step_mode="m", **kw)
        wrap = SeqToANN

    def conv_bn(cin: int, cout: int) -> nn.Module:
        return wrap(nn.Conv1d(cin, cout, 1), nn.BatchNorm1d(cout))

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v = (nn.Sequential(conv_bn(C, C), node()) for _ in range(3))
            self.proj = nn.Sequential(node(v_threshold=0.5), conv_bn(C, C), node())

        def products(self, q, k, v):  # [t, B, C, N] spikes of each -> [t, B, C, N]
            t, b, _, n = q.shape
            q, k, v = (z.transpose(-1, -2).reshape(t, b, n, heads, C // heads).transpose(2, 3) for z in (q, k, v))
            y = ((q @ k.transpose(-2, -1)) * 0.125) @ v
            return y.transpose(2, 3).reshape(t, b, n, C).transpose(-1, -2)

        def forward(self, x):
            q, k, v = self.q(x), self.k(x), self.v(x)
            y = edgesnn.checkpoint_over_time(self.products, q, k, v) if over_time else self.products(q, k, v)
            return self.proj(y)

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f = nn.Sequential(conv_bn(C, 2 * C), node(), conv_bn(2 * C, C), node())

        def forward(self, x):
            return self.f(x)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn, self.mlp = Attention(), MLP()

        def forward(self, x):
            x = x + self.attn(x)
            return x + self.mlp(x)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(wrap(nn.Conv2d(2, C, 3, padding=1, bias=False), nn.BatchNorm2d(C)), node(),
                                      wrap(nn.MaxPool2d(2)),
                                      wrap(nn.Conv2d(C, C, 3, padding=1, bias=False), nn.BatchNorm2d(C)), node())
            self.blocks = nn.ModuleList(Block() for _ in range(depth))
            self.head = nn.Linear(C, 10)

        def forward(self, x):
            x = self.stem(x).flatten(3)  # [T, B, C, N]
            for b in self.blocks:
                x = b(x)
            return self.head(x.mean(3))

    torch.manual_seed(1)
    return Net(), Attention, MLP


def worker(row: int, T: int, batch: int, C: int, heads: int, depth: int) -> dict:
    """One row's measured peak (bytes) and step time (s)."""
    import torch

    torch.set_num_threads(1)
    import edgesnn
    from edgesnn.kernels import buffers
    from edgesnn.memory import peak_rss_bytes, reset_peak_rss, rss_bytes

    name, lib, how = ROWS[row]
    model, attention, mlp = build(lib, how == "memopt+over_time", C, heads, depth)
    torch.manual_seed(0)
    x, y = torch.rand(T, batch, 2, 32, 32), torch.randint(0, 10, (batch,))
    reset = (lambda: None)
    if lib == "sj":
        from spikingjelly.activation_based import functional

        reset = (lambda: functional.reset_net(model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if how.startswith("memopt") and lib == "edgesnn":
            edgesnn.optimize_memory(model, x)
        elif how == "memopt":
            from spikingjelly.activation_based.memopt import optimize_memory

            def example(m):
                out = m(x)
                functional.reset_net(m)
                return out
            model = optimize_memory(model, (attention, mlp), example, level=1, compress=True)
            reset()

        def step() -> float:
            t0 = time.perf_counter()
            torch.nn.functional.cross_entropy(model(x).mean(0), y).backward()
            reset()
            return time.perf_counter() - t0

        step()
        buffers.release()
        reset_peak_rss()
        base = rss_bytes()
        dt = step()
        peak = peak_rss_bytes() - base
        dt = min(dt, step())
    return dict(row=name, T=T, batch=batch, peak_bytes=int(peak), step_s=dt,
                grad_abs_sum=sum(float(p.grad.double().abs().sum()) for p in model.parameters() if p.grad is not None))


def run_fresh(row: int, T: int, args: argparse.Namespace) -> dict:
    """Measure row ``row`` (an index into ``ROWS``) at ``T`` time steps in a fresh worker process (large allocations
    via ``mmap``); returns the worker's dict: ``peak_bytes`` (bytes), ``step_s`` (s), ``grad_abs_sum``."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(row), "-T", str(T), "--batch", str(args.batch),
           "--channels", str(args.channels), "--heads", str(args.heads), "--depth", str(args.depth)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise worker_error(f"worker {ROWS[row][0]!r} T={T}", out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: parse ``argv`` (default ``sys.argv[1:]``), run, return the exit status."""
    ap = tool_parser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("-T", "--timesteps", type=positive_int, nargs="+", default=[4, 16], help="time steps (default 4 16)")
    ap.add_argument("--batch", type=positive_int, default=8, help="batch (default 8)")
    ap.add_argument("--channels", type=positive_int, default=64, help="channels C, a multiple of --heads (default 64)")
    ap.add_argument("--heads", type=positive_int, default=4, help="attention heads (default 4)")
    ap.add_argument("--depth", type=positive_int, default=2, help="attention + MLP blocks (default 2)")
    ap.add_argument("--json", help="write the table as JSON to this path")
    add_force(ap, "the --json file")
    args = ap.parse_args(argv)
    if args.channels % args.heads:
        ap.error(f"--channels: expected a multiple of --heads={args.heads}, got {args.channels}")
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.timesteps[0], args.batch, args.channels, args.heads, args.depth)))
        return 0
    args.json = check_out(ap, args.json, "--json", args.force)
    import importlib.util

    rows = range(len(ROWS))
    if importlib.util.find_spec("spikingjelly") is None:
        print("SpikingJelly is not installed: its rows (the baseline) are left out")
        rows = range(3)
    results = []
    print(f"| {'row':48} | {'T':>3} | {'peak MiB':>9} | {'step s':>7} | {'x below ' + BASELINE:>22} |")
    print(f"|{'-' * 50}|-----|-----------|---------|{'-' * 24}|")
    for T in dict.fromkeys(args.timesteps):
        block = [run_fresh(r, T, args) for r in rows]
        base = next((r["peak_bytes"] for r in block if r["row"] == BASELINE), None)
        for r in block:
            r["x_below_baseline"] = base / r["peak_bytes"] if base and r["peak_bytes"] > 0 else None
            ratio = f"{r['x_below_baseline']:.2f}x" if r["x_below_baseline"] else "-"
            print(f"| {r['row']:48} | {T:>3} | {r['peak_bytes'] / 2**20:9.1f} | {r['step_s']:7.2f} | {ratio:>22} |",
                  flush=True)
        results += block
    if args.json:
        write_json(args.json, dict(baseline=BASELINE, units="bytes, seconds", batch=args.batch, channels=args.channels,
                                   heads=args.heads, depth=args.depth, rows=results))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
