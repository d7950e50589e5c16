"""Test accuracy of LIF vs RevLIF on scikit-learn's digits, over several seeds, in one run.

The 449-sample test set moves about one point between seeds, so the comparison is between means.
Target: both >= 95%, RevLIF within 1 point of LIF.

    python tools/bench_accuracy.py [--seeds 3] [--epochs 30] [--timesteps 4] [--model mlp]
        [--neurons lif,revlif,revlif:4] [--revlif-alpha 0.125] [--json PATH]

``--revlif-alpha`` sets the RevLIF nodes' output mixing ``y = alpha x + s`` (default: the node's 1/8).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgesnn.training import TrainConfig, train  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--timesteps", type=int, default=4)
    ap.add_argument("--model", default="mlp", choices=["mlp", "convnet"])
    ap.add_argument("--neurons", default="lif,revlif,revlif:4", help="comma-separated neuron specs")
    ap.add_argument("--revlif-alpha", type=float, default=None, help="RevLIF alpha (default: the node's, 1/8)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    results = {}
    for neuron in args.neurons.split(","):
        accs = []
        for seed in range(args.seeds):
            cfg = TrainConfig(model=args.model, neuron=neuron, timesteps=args.timesteps, epochs=args.epochs, seed=seed,
                              revlif_alpha=args.revlif_alpha)
            accs.append(train(cfg, progress=False, log=lambda s: None)["test_accuracy"] * 100)
        results[neuron] = accs
        print(f"{neuron:12s} " + " ".join(f"{a:6.2f}" for a in accs) + f"   mean {statistics.mean(accs):6.2f}", flush=True)
    base = statistics.mean(results["lif"]) if "lif" in results else None
    alpha = "" if args.revlif_alpha is None else f", RevLIF alpha {args.revlif_alpha:g}"
    print(f"\ndigits, {args.model}, T={args.timesteps}, {args.epochs} epochs, {args.seeds} seeds{alpha} (test accuracy %)")
    for neuron, accs in results.items():
        m = statistics.mean(accs)
        gap = "" if base is None or neuron == "lif" else f"  gap to LIF {base - m:+.2f} ({'PASS' if base - m <= 1.0 else 'FAIL'} <= 1)"
        print(f"{neuron:12s} mean {m:6.2f}  min {min(accs):6.2f}  max {max(accs):6.2f}  {'PASS' if m >= 95 else 'FAIL'} >= 95{gap}")
    if args.json:
        from edgesnn.checkpoint import atomic_write

        atomic_write(args.json, lambda fh: fh.write(json.dumps({"config": vars(args), "accuracy": results}, indent=2)), mode="w")
    return 0


if __name__ == "__main__":
    sys.exit(main())
