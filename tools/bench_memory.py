"""Bytes saved for backward: edgesnn LIF / RevLIF vs SpikingJelly's LIFNode, and a VGG-11 net.

Per node: unique storages saved through ``torch.autograd.graph.saved_tensors_hooks`` during the
forward of one node on ``[T, B, N]``, divided by ``T * B * N``. The node's output is never counted
(the next Conv/Linear saves it as its input anyway). Two accountings of the node's *input*:

* ``input counted`` (the usual case): Conv, Linear and BatchNorm save their inputs, not their
  outputs, so nothing else keeps the node's input; a node that saves it (the numba LIF: 4 B per
  neuron-step) holds that memory alone. The script measures it: Linear -> numba LIF and
  BatchNorm -> numba LIF against the layer alone at T = 8 (the "layer pairs" table).
* ``input not counted``: right only when the layer before saves its own output (ReLU, sigmoid,
  a RevLIF), which then shares it with the node.

Whole network: every non-parameter storage the forward of a VGG-11 (CIFAR-shaped) saves
(parameters and buffers that autograd also saves are left out and reported separately). Also
checks that the RevLIF inverse is bit-exact at T = 256 in the same run.

    python tools/bench_memory.py [--json PATH [--force]] [--batch 16] [--neurons 1024] [--net-batch 4]

The JSON names the baseline of its ratios (``baseline``: SpikingJelly's row) beside them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from edgesnn.functional import LIFParams, RevLIFParams  # noqa: E402
from edgesnn.functional.grid import quantize_input, unpack_bit  # noqa: E402
from edgesnn.functional.revlif import revlif_initial_state, revlif_step_inverse, to_groups  # noqa: E402
from edgesnn.functional.revlif_autograd import torch_forward  # noqa: E402
from edgesnn.kernels import dispatch  # noqa: E402
from edgesnn.memory import SavedTensorCounter  # noqa: E402
from edgesnn.models import build_model  # noqa: E402
from tool_args import add_force, tool_parser, check_out, positive_int, run_main, write_json  # noqa: E402

TIMESTEPS = (4, 8, 16, 32, 64)


def node_bytes(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple:
    """``(bytes without the node's input and output, bytes without its output only)`` that ``run`` saves for backward
    on ``x`` ``[T, B, N]``; see the module doc."""
    x = x.detach().requires_grad_()
    with SavedTensorCounter() as c:
        out = run(x)
    return c.bytes(exclude=[x, out]), c.bytes(exclude=[out])


def nodes() -> Dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The per-node rows: name -> a forward ``[T, B, N] -> [T, B, N]`` spikes (SpikingJelly's row only where it
    imports)."""
    rows = {
        "edgesnn LIF (reference autograd)": lambda x: dispatch.lif_multistep(x, LIFParams(), None, "reference")[0],
        "edgesnn LIF (torch backend)": lambda x: dispatch.lif_multistep(x, LIFParams(), None, "torch")[0],
        "edgesnn LIF (numba backend)": lambda x: dispatch.lif_multistep(x, LIFParams(), None, "numba")[0],
        "edgesnn RevLIF exact, 2 groups (numba)": lambda x: dispatch.revlif_multistep(x, RevLIFParams(groups=2), None, "numba")[0],
        "edgesnn RevLIF exact, 4 groups (numba)": lambda x: dispatch.revlif_multistep(x, RevLIFParams(groups=4), None, "numba")[0],
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
    """Invert a RevLIF forward (exact mode, 2 groups) on ``[T, B, N]`` step by step from ``t = T``; returns ``T``, the
    largest input and initial-state errors and ``bit_exact`` (both zero)."""
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


def layer_pairs(T: int, batch: int, N: int) -> dict:
    """Bytes per neuron-step that a numba LIF adds behind a Linear or a BatchNorm: the layer and
    the layer followed by the LIF, each on ``[T, batch, N]``; parameters, buffers, the input and the
    last output are not counted (the LIF's input is the layer's output, which only the LIF keeps)."""
    lin, bn = torch.nn.Linear(N, N), torch.nn.BatchNorm1d(N)
    state = list(lin.parameters()) + list(bn.parameters()) + list(bn.buffers())

    def lif(z):
        return dispatch.lif_multistep(z, LIFParams(), None, "numba")[0]

    def norm(z):
        return bn(z.flatten(0, 1)).view_as(z)

    def saved(run) -> float:
        x = torch.randn(T, batch, N).requires_grad_()
        with SavedTensorCounter() as c:
            out = run(x)
        return c.bytes(exclude=[x, out] + state) / x.numel()

    out = {}
    for name, layer in (("Linear", lin), ("BatchNorm", norm)):
        alone, with_lif = saved(layer), saved(lambda x, layer=layer: lif(layer(x)))
        out[name] = {"layer_alone": alone, "layer_then_lif": with_lif, "lif_adds": with_lif - alone}
    return out


def network(T: int, batch: int) -> dict:
    """Bytes of activations one VGG-11 forward (``[batch, 3, 32, 32]``, ``T`` time steps) saves for backward, LIF and
    RevLIF (``lif``, ``revlif``), the parameters autograd also saves (``*_saved_params``) and ``ratio`` LIF / RevLIF."""
    out = {}
    for neuron in ("lif", "revlif"):
        model = build_model("vgg11", (3, 32, 32), 10, T, neuron)
        x = torch.rand(batch, 3, 32, 32)
        with SavedTensorCounter() as c:
            model(x).sum()
        state = list(model.parameters()) + list(model.buffers())
        out[neuron] = c.bytes(exclude=state)  # activations only
        out[neuron + "_saved_params"] = c.bytes() - out[neuron]  # weights autograd also saves (not activations)
    out["ratio"] = out["lif"] / out["revlif"]
    return out


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: parse ``argv`` (default ``sys.argv[1:]``), run, return the exit status."""
    ap = tool_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=positive_int, default=16, help="batch of the per-node tables and layer pairs (default 16)")
    ap.add_argument("--neurons", type=positive_int, default=1024,
                    help="neurons per node, a multiple of 4 (RevLIF's 4-group row) (default 1024)")
    ap.add_argument("--net-batch", type=positive_int, default=4, help="batch of the VGG-11 rows (default 4)")
    ap.add_argument("--json", default=None, help="write the tables and ratios to this JSON file")
    add_force(ap, "the --json file")
    args = ap.parse_args(argv)
    if args.neurons % 4:
        ap.error(f"--neurons: expected a multiple of 4 (the RevLIF rows split it into 2 and 4 groups), got {args.neurons}")
    args.json = check_out(ap, args.json, "--json", args.force)
    torch.manual_seed(0)
    table, table_in = {}, {}
    for name, run in nodes().items():
        table[name], table_in[name] = {}, {}
        for T in TIMESTEPS:
            x = torch.randn(T, args.batch, args.neurons) + 0.5
            b_excl, b_in = node_bytes(run, x)
            table[name][T] = b_excl / x.numel()
            table_in[name][T] = b_in / x.numel()
    sj_name = next((n for n in table if n.startswith("SpikingJelly")), None)
    ratios, ratios_in = {}, {}
    for title, tab, rat in (
            ("node input counted (layer before = Conv/Linear/BatchNorm; output not counted)", table_in, ratios_in),
            ("node input NOT counted (only if the layer before saves its output, e.g. ReLU; output not counted)",
             table, ratios)):
        print(f"Bytes saved for backward per neuron-step, [T, {args.batch}, {args.neurons}] float32, {title}")
        print(f"{'node':40s}" + "".join(f"{'T=' + str(T):>9s}" for T in TIMESTEPS))
        for name, row in tab.items():
            print(f"{name:40s}" + "".join(f"{row[T]:9.3f}" for T in TIMESTEPS))
        if sj_name:
            for name in tab:
                if name != sj_name and not name.endswith("(reference autograd)"):
                    rat[name] = {T: tab[sj_name][T] / tab[name][T] for T in TIMESTEPS}
                    print(f"{'SJ / ' + name[8:]:40s}" + "".join(f"{rat[name][T]:8.1f}x" for T in TIMESTEPS))
        print()
    ex = exactness()
    print(f"RevLIF exact-mode inverse at T={ex['T']}: bit-exact={ex['bit_exact']} "
          f"(max input error {ex['max_input_error']:.1e}, initial-state error {ex['max_v0_error']:.1e})")
    pairs = layer_pairs(8, args.batch, args.neurons)
    print(f"\nLayer pairs, [8, {args.batch}, {args.neurons}]: bytes per neuron-step saved for backward "
          "(parameters, input and last output not counted)")
    for name, r in pairs.items():
        print(f"  {name:10s} alone {r['layer_alone']:6.3f}   {name} -> numba LIF {r['layer_then_lif']:6.3f}"
              f"   the LIF adds {r['lif_adds']:6.3f} B")
    net = {T: network(T, args.net_batch) for T in (4, 8)}
    print(f"\nVGG-11 (CIFAR 3x32x32, batch {args.net_batch}): activation bytes saved for backward (whole network; "
          "parameters/buffers autograd also saves are not counted)")
    for T, r in net.items():
        print(f"  T={T}: LIF {r['lif'] / 2**20:8.1f} MiB   RevLIF {r['revlif'] / 2**20:8.1f} MiB   ratio {r['ratio']:.2f}x"
              f"   (saved parameters, excluded: {r['lif_saved_params'] / 2**20:.1f} / {r['revlif_saved_params'] / 2**20:.1f} MiB)")
    if sj_name:
        r64 = ratios_in["edgesnn RevLIF exact, 2 groups (numba)"][64]
        r16 = ratios_in["edgesnn RevLIF exact, 2 groups (numba)"][16]
        print(f"\nTargets: T=64 >= 58.65x: {'PASS' if r64 >= 58.65 else 'FAIL'} ({r64:.1f}x); "
              f"T=16 >= 20x: {'PASS' if r16 >= 20 else 'FAIL'} ({r16:.1f}x)")
    if args.json:
        payload = {"baseline": sj_name, "per_neuron_step_bytes_input_counted": table_in, "per_neuron_step_bytes_input_not_counted": table,
                   "ratios_vs_spikingjelly_input_counted": ratios_in,
                   "ratios_vs_spikingjelly_input_not_counted": ratios,
                   "exactness": ex, "layer_pairs_T8": pairs, "vgg11": net,
                   "shape": [args.batch, args.neurons]}
        write_json(args.json, payload, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
