"""Single-pass RevLIF backward vs the classic reversible backward, same run, same PyTorch ops.

* single-pass (edgesnn): walk t = T..1 and groups n..1 once; each group's LIF step is evaluated
  once and used both to invert and for the vector-Jacobian product (docs/design.md §2).
* classic (RevNet-style): per step, invert (one LIF evaluation per group, no autograd), then re-run
  the step's forward under autograd from the recovered ``(x, v)`` and back-propagate through it.

Both start from the same forward outputs and produce the same gradients (checked). Times are the
median of ``--repeat`` runs of the backward alone.

    python tools/bench_backward.py [--T 32] [--batch 32] [--neurons 4096] [--groups 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgesnn.functional import RevLIFParams  # noqa: E402
from edgesnn.functional.grid import unpack_bit  # noqa: E402
from edgesnn.functional.revlif import revlif_initial_state, revlif_step, revlif_step_inverse, to_groups  # noqa: E402
from edgesnn.functional.revlif_autograd import torch_backward, torch_forward  # noqa: E402


def classic_backward(y, v_T, bits, grad_y, grad_v_T, p: RevLIFParams):
    """Invert, re-run the forward under autograd, back-propagate: step by step from t = T."""
    grad_x = torch.empty_like(grad_y)
    v, grad_v = v_T, grad_v_T
    for t in range(y.shape[0] - 1, -1, -1):
        x, v = revlif_step_inverse(y[t], v, unpack_bit(bits, t), p)
        xr, vr = x.requires_grad_(), v.requires_grad_()
        with torch.enable_grad():
            y_t, v_new, _ = revlif_step(xr, vr, p)
            gx, gv = torch.autograd.grad((y_t, v_new), (xr, vr), (grad_y[t], grad_v))
        grad_x[t], grad_v = gx, gv
        v = v.detach()
    return grad_x, grad_v


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--neurons", type=int, default=4096)
    ap.add_argument("--groups", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    p = RevLIFParams(groups=args.groups)
    xg = to_groups(torch.randn(args.T, args.batch, args.neurons) + 0.5, p.groups)
    y, v_T, bits, _ = torch_forward(xg, revlif_initial_state(xg[0], p), p)
    gy, gv = torch.randn_like(y), torch.zeros_like(v_T)
    g_single = torch_backward(y, v_T, bits, gy, gv, p)[0]
    g_classic = classic_backward(y, v_T, bits, gy, gv, p)[0]
    err = float((g_single - g_classic).abs().max() / g_classic.abs().max())
    t_single = median_time(lambda: torch_backward(y, v_T, bits, gy, gv, p), args.repeat)
    t_classic = median_time(lambda: classic_backward(y, v_T, bits, gy, gv, p), args.repeat)
    saving = 1.0 - t_single / t_classic
    print(f"RevLIF backward, [T={args.T}, B={args.batch}, N={args.neurons}], {args.groups} groups, float32, "
          f"{torch.get_num_threads()} threads, median of {args.repeat}")
    print(f"{'method':44s}{'time (ms)':>12s}")
    print(f"{'classic reversible (invert, re-forward, VJP)':44s}{t_classic * 1e3:12.1f}")
    print(f"{'edgesnn single pass (VJP on the inverse)':44s}{t_single * 1e3:12.1f}")
    print(f"time saved: {saving * 100:.1f}% (target >= 23.8%: {'PASS' if saving >= 0.238 else 'FAIL'}); "
          f"gradient agreement {err:.1e} (relative)")
    if args.json:
        from edgesnn.checkpoint import atomic_write

        payload = {"shape": [args.T, args.batch, args.neurons], "groups": args.groups, "classic_s": t_classic,
                   "single_pass_s": t_single, "time_saved": saving, "grad_rel_diff": err}
        atomic_write(args.json, lambda fh: fh.write(json.dumps(payload, indent=2)), mode="w")
    return 0


if __name__ == "__main__":
    sys.exit(main())
