"""Per-step cost of a spiking layer on the CPU when the layer is tiny: what a call costs besides
the kernels' work (argument checks, parameter handling, autograd, the Numba dispatch and parallel
launch). Small layers (on-device fine-tuning of a few hundred neurons, short T) pay it on every
step of every layer.

The public form, as in ``tools/bench_kernels.py`` section (p): ``x = x0.clone().requires_grad_()``,
``y = node(x)``, ``y.sum().backward()``, with ``LIF()`` / ``RevLIF()`` defaults (backend auto:
the Numba kernels) and SpikingJelly's ``LIFNode(step_mode="m")`` (torch backend, reset before each
step) as the baseline, on ``[T, B, N]`` shapes from ``[4, 2, 16]`` (no work to speak of) up.
Interleaved rounds, microseconds per step (median over all steps of a variant), ratio
SpikingJelly / variant.

Usage: ``python tools/bench_call_overhead.py [--steps 300] [--rounds 5] [--threads 2] [--json out.json]``
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from edgesnn.kernels import set_num_threads  # noqa: E402
from edgesnn.nn import LIF, RevLIF  # noqa: E402
from tool_args import add_force, tool_parser, check_out, positive_int, run_main, write_json  # noqa: E402

SHAPES = ((4, 2, 16), (8, 16, 128), (16, 32, 512))
SJ = "SpikingJelly LIFNode torch"  # the baseline row (present when SpikingJelly imports)


def _variants() -> dict:
    out = {"edgesnn LIF()": LIF(), "edgesnn RevLIF()": RevLIF()}
    try:
        from spikingjelly.activation_based import functional as sjf
        from spikingjelly.activation_based import neuron
    except Exception:  # SpikingJelly is a comparison target only: the rows run without it
        return out
    node = neuron.LIFNode(step_mode="m")

    def sj(x):
        sjf.reset_net(node)
        return node(x)

    out[SJ] = sj
    return out


def measure(shape: Tuple[int, int, int], steps: int, rounds: int) -> dict:
    """Microseconds per step of every variant on ``shape`` ``[T, B, N]`` (interleaved rounds, median).

    Returns ``{variant: {"us": float, "x_vs_sj": float}}`` (the ratio only when SpikingJelly imports)."""
    torch.manual_seed(0)
    x0 = torch.randn(*shape) * 1.5 + 0.5
    variants = _variants()

    def step(f):
        x = x0.clone().requires_grad_()
        f(x).sum().backward()

    times = {name: [] for name in variants}
    for f in variants.values():  # warm-up: compiles or loads the kernels
        for _ in range(20):
            step(f)
    names = list(variants)
    per_round = -(-steps // rounds)  # steps are rounded up to whole rounds
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            f = variants[name]
            for _ in range(per_round):
                t0 = time.perf_counter()
                step(f)
                times[name].append(1e6 * (time.perf_counter() - t0))
    out = {name: {"us": statistics.median(v)} for name, v in times.items()}
    base = out.get(SJ)
    if base is not None:
        for name, row in out.items():
            row["x_vs_sj"] = base["us"] / row["us"]
    return out


def main(argv: Optional[List[str]] = None) -> int:
    """Run the rows on every shape in :data:`SHAPES`, print the table, write ``--json``."""
    ap = tool_parser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--steps", type=positive_int, default=300, help="timed steps per variant and shape")
    ap.add_argument("--rounds", type=positive_int, default=5, help="interleaved rounds")
    ap.add_argument("--threads", type=positive_int, default=None, help="kernel threads (default: Numba's)")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    add_force(ap, "the --json file")
    args = ap.parse_args(argv)
    args.json = check_out(ap, args.json, "--json", args.force)  # before the measurement
    if args.threads is not None:
        set_num_threads(args.threads)
    results = {}
    if SJ not in _variants():
        print("note: SpikingJelly not importable: its baseline row and the ratios are skipped "
              "(pip install --no-deps spikingjelly==2.0.0 loguru)")
    for shape in SHAPES:
        rows = measure(shape, args.steps, args.rounds)
        results["x".join(map(str, shape))] = rows
        steps = args.rounds * -(-args.steps // args.rounds)
        print(f"[T,B,N]={list(shape)}: public-form training step, microseconds (median of {steps} per variant)")
        for name, row in rows.items():
            ratio = f"  x{row['x_vs_sj']:.2f} vs SpikingJelly" if "x_vs_sj" in row and not name.startswith("Spiking") else ""
            print(f"  {name:30s} {row['us']:9.1f} us{ratio}")
    if args.json is not None:
        have_sj = all(SJ in rows for rows in results.values())  # no baseline named for rows that never ran
        doc = {"baseline": SJ if have_sj else None, "unit": "microseconds per step (us)", "torch": torch.__version__, "results": results}
        write_json(args.json, doc, newline=True)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
