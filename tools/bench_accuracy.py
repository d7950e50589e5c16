"""Test accuracy of LIF vs RevLIF on scikit-learn's digits, over several seeds, in one run.

The 449-sample test set moves about one point between seeds, so the comparison is between means.
Target: both >= 95%, RevLIF within 1 point of LIF.

    python tools/bench_accuracy.py [--seeds 3] [--epochs 30] [--timesteps 4] [--model mlp]
        [--neurons lif,revlif,revlif:4] [--revlif-alpha 0.125] [--json PATH [--force]]

``--revlif-alpha`` sets the RevLIF nodes' output mixing ``y = alpha x + s`` (default: the node's 1/8).
The JSON holds each spec's accuracies, their mean, and (with ``lif`` among the specs, the
baseline) the gap to LIF's mean, as printed. The figures depend on PyTorch's thread count (it sets
the order of the float reductions in the matmuls and BatchNorms), so the summary line names it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from edgesnn.training import TrainConfig, train  # noqa: E402
from tool_args import add_force, tool_parser, check_out, positive_int, run_main, write_json  # noqa: E402


def _check_specs(ap, args) -> None:
    """Every neuron spec (and --revlif-alpha) checked on the model before any training: one line."""
    from edgesnn.errors import USER_ERRORS
    from edgesnn.training.flag_checks import check_model_fits_dataset

    if args.revlif_alpha is not None:
        from edgesnn.nn import RevLIF

        try:
            RevLIF(alpha=args.revlif_alpha)
        except USER_ERRORS as exc:
            ap.error(f"--revlif-alpha: {str(exc).removeprefix('revlif_alpha: ')}")
    for neuron in args.neurons.split(","):
        try:
            from edgesnn.models import parse_neuron_spec

            parse_neuron_spec(neuron)
            cfg = TrainConfig(model=args.model, neuron=neuron, timesteps=args.timesteps, epochs=args.epochs,
                              revlif_alpha=args.revlif_alpha)
            cfg.validate()
            check_model_fits_dataset(cfg)
        except USER_ERRORS as exc:
            msg = str(exc)
            for old, new in (("--neuron: ", "--neurons: "), ("neuron: ", "--neurons: "),
                             ("revlif_alpha: ", "--revlif-alpha: ")):
                if msg.startswith(old):
                    msg = new + msg[len(old):]
                    break
            else:
                msg = f"--neurons {neuron}: {msg}"
            ap.error(msg)


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: parse ``argv`` (default ``sys.argv[1:]``), run, return the exit status."""
    ap = tool_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=positive_int, default=3, help="training runs per neuron spec, seeds 0..N-1 (default 3)")
    ap.add_argument("--epochs", type=positive_int, default=30, help="training epochs per run (default 30)")
    ap.add_argument("--timesteps", type=positive_int, default=4, help="time steps T (default 4)")
    ap.add_argument("--model", default="mlp", choices=["mlp", "convnet"], help="model (default mlp)")
    ap.add_argument("--neurons", default="lif,revlif,revlif:4",
                    help="comma-separated neuron specs: lif, revlif, revlif:G (default lif,revlif,revlif:4)")
    ap.add_argument("--revlif-alpha", type=float, default=None, help="RevLIF alpha (default: the node's, 1/8)")
    ap.add_argument("--json", default=None, help="write the accuracies, means and gaps to LIF to this JSON file")
    add_force(ap, "the --json file")
    args = ap.parse_args(argv)
    _check_specs(ap, args)
    out = check_out(ap, args.json, "--json", args.force)
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
    threads = torch.get_num_threads()
    print(f"\ndigits, {args.model}, T={args.timesteps}, {args.epochs} epochs, {args.seeds} seeds{alpha}, "
          f"{threads} PyTorch threads (test accuracy %)")
    for neuron, accs in results.items():
        m = statistics.mean(accs)
        gap = "" if base is None or neuron == "lif" else f"  gap to LIF {base - m:+.2f} ({'PASS' if base - m <= 1.0 else 'FAIL'} <= 1)"
        print(f"{neuron:12s} mean {m:6.2f}  min {min(accs):6.2f}  max {max(accs):6.2f}  {'PASS' if m >= 95 else 'FAIL'} >= 95{gap}")
    if args.json:
        means = {neuron: statistics.mean(accs) for neuron, accs in results.items()}
        payload = {"config": vars(args), "torch_threads": threads, "accuracy": results, "mean": means, "baseline": "lif" if base is not None else None,
                   "gap_to_baseline": ({neuron: base - m for neuron, m in means.items() if neuron != "lif"}
                                       if base is not None else {}),
                   "targets": {"mean_at_least": 95.0, "gap_at_most": 1.0}}
        write_json(out, payload, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
