"""Bytes saved for backward: edgesnn LIF / RevLIF vs SpikingJelly's LIFNode, and a VGG-11 net.

Per node: unique storages saved through ``torch.autograd.graph.saved_tensors_hooks`` during the
forward of one node on ``[T, B, N]``, not counting the node's own input and output (the
neighbouring layers keep those anyway), divided by ``T * B * N``. Whole network: every storage
the forward of a VGG-11 (CIFAR-shaped) saves. Also checks that the RevLIF inverse is bit-exact at
T = 256 in the same run.

    python tools/bench_memory.py [--json PATH] [--batch 16] [--neurons 1024]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgesnn.functional import LIFParams, RevLIFParams  # noqa: E402
from edgesnn.functional.grid import quantize_input, unpack_bit  # noqa: E402
from edgesnn.functional.revlif import revlif_initial_state, revlif_step_inverse, to_groups  # noqa: E402
from edgesnn.functional.revlif_autograd import torch_forward  # noqa: E402
from edgesnn.kernels import dispatch  # noqa: E402
from edgesnn.memory import SavedTensorCounter  # noqa: E402
from edgesnn.models import build_model  # noqa: E402

TIMESTEPS = (4, 8, 16, 32, 64)


def node_bytes(run, x: torch.Tensor) -> int:
    x = x.detach().requires_grad_()
    with SavedTensorCounter() as c:
        out = run(x)
    return c.bytes(exclude=[x, out])


def nodes():
    rows = {
        "edgesnn LIF (reference autograd)": lambda x: dispatch.lif_multistep(x, LIFParams(), None, "reference")[0],
        "edgesnn LIF (auto backend)": lambda x: dispatch.lif_multistep(x, LIFParams(), None, "auto")[0],
        "edgesnn RevLIF exact, 2 groups": lambda x: dispatch.revlif_multistep(x, RevLIFParams(groups=2), None, "auto")[0],
        "edgesnn RevLIF exact, 4 groups": lambda x: dispatch.revlif_multistep(x, RevLIFParams(groups=4), None, "auto")[0],
    }
    try:
        from spikingjelly.activation_based import neuron

        sj = neuron.LIFNode(tau=2.0, step_mode="m")  # 2.0: torch backend on CPU

        def run_sj(x):
            sj.reset()
            return sj(x)

        rows["SpikingJelly 2.0 LIFNode (torch, m)"] = run_sj
    except ImportError:
        print("note: spikingjelly not importable; its row is skipped (pip install --no-deps spikingjelly==2.0.0 loguru)")
    return rows


def exactness(T: int = 256, B: int = 16, N: int = 1024) -> dict:
    p = RevLIFParams(groups=2)
    x = to_groups(torch.randn(T, B, N) + 0.5, 2)
    v0 = revlif_initial_state(x[0], p)
    y, v, bits, _ = torch_forward(x, v0, p)
    xq = quantize_input(x)
    worst = 0.0
    for t in range(T - 1, -1, -1):
        x_rec, v = revlif_step_inverse(y[t], v, unpack_bit(bits, t), p)
        worst = max(worst, float((x_rec - xq[t]).abs().max()))
    return {"T": T, "max_input_error": worst, "max_v0_error": float((v - v0).abs().max()),
            "bit_exact": worst == 0.0 and torch.equal(v, v0)}


def network(T: int, batch: int) -> dict:
    out = {}
    for neuron in ("lif", "revlif"):
        model = build_model("vgg11", (3, 32, 32), 10, T, neuron)
        x = torch.rand(batch, 3, 32, 32)
        with SavedTensorCounter() as c:
            model(x).sum()
        out[neuron] = c.bytes()
    out["ratio"] = out["lif"] / out["revlif"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--neurons", type=int, default=1024)
    ap.add_argument("--net-batch", type=int, default=4)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    table = {}
    for name, run in nodes().items():
        table[name] = {}
        for T in TIMESTEPS:
            x = torch.randn(T, args.batch, args.neurons) + 0.5
            table[name][T] = node_bytes(run, x) / x.numel()
    sj_name = next((n for n in table if n.startswith("SpikingJelly")), None)
    print(f"Bytes saved for backward per neuron-step, [T, {args.batch}, {args.neurons}] float32 (node input/output excluded)")
    print(f"{'node':40s}" + "".join(f"{'T=' + str(T):>9s}" for T in TIMESTEPS))
    for name, row in table.items():
        print(f"{name:40s}" + "".join(f"{row[T]:9.3f}" for T in TIMESTEPS))
    ratios = {}
    if sj_name:
        for name in table:
            if "RevLIF" in name:
                ratios[name] = {T: table[sj_name][T] / table[name][T] for T in TIMESTEPS}
                print(f"{'SJ / ' + name[8:]:40s}" + "".join(f"{ratios[name][T]:8.1f}x" for T in TIMESTEPS))
    ex = exactness()
    print(f"\nRevLIF exact-mode inverse at T={ex['T']}: bit-exact={ex['bit_exact']} "
          f"(max input error {ex['max_input_error']:.1e}, initial-state error {ex['max_v0_error']:.1e})")
    net = {T: network(T, args.net_batch) for T in (4, 8)}
    print(f"\nVGG-11 (CIFAR 3x32x32, batch {args.net_batch}): activation bytes saved for backward (whole network)")
    for T, r in net.items():
        print(f"  T={T}: LIF {r['lif'] / 2**20:8.1f} MiB   RevLIF {r['revlif'] / 2**20:8.1f} MiB   ratio {r['ratio']:.2f}x")
    if sj_name:
        r64 = ratios["edgesnn RevLIF exact, 2 groups"][64]
        r16 = ratios["edgesnn RevLIF exact, 2 groups"][16]
        print(f"\nTargets: T=64 >= 58.65x: {'PASS' if r64 >= 58.65 else 'FAIL'} ({r64:.1f}x); "
              f"T=16 >= 20x: {'PASS' if r16 >= 20 else 'FAIL'} ({r16:.1f}x)")
    if args.json:
        from edgesnn.checkpoint import atomic_write

        payload = {"per_neuron_step_bytes": table, "ratios_vs_spikingjelly": ratios, "exactness": ex, "vgg11": net,
                   "shape": [args.batch, args.neurons]}
        atomic_write(args.json, lambda fh: fh.write(json.dumps(payload, indent=2)), mode="w")
    return 0


if __name__ == "__main__":
    sys.exit(main())
