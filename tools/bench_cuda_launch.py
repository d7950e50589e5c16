"""Launch overhead and layer speed of the numba-cuda kernels. Needs a CUDA GPU.

(1) Per-call overhead on tiny tensors (``[T, K] = [1, 32]``: no work to speak of), microseconds
    per call, each averaged over ``--calls`` back-to-back calls with one synchronize at the end:
    * ``numba empty kernel``: a kernel with no arguments and an empty body on PyTorch's stream:
      numba-cuda's own floor on this machine;
    * ``torch x.add_(1)``: one PyTorch kernel launch, for scale;
    * ``kernel wrapper lif_forward``: ``edgesnn.kernels.cuda_kernels.lif_forward`` (argument
      conversion + launch, no checks);
    * ``op lif_fwd (no grad)``: ``dispatch.lif_multistep(..., backend="cuda")`` under no_grad
      (the custom op with its NaN/Inf check: one aminmax and one host read per tensor);
    * ``LIF fwd+bwd``: ``LIF(backend="cuda")`` forward + backward with autograd;
    * ``LIF fwd+bwd, CUDA graph replay``: the same step captured once and replayed (no host work
      per step: the launch floor of the whole step).
    Target: the kernel wrapper and the empty kernel <= 50 us.
(2) The layer ``[T, B, N] = [64, 16, 4096]`` forward + backward (``y.sum().backward()``), and 16M
    neurons (``[8, 16, 1048576]``): edgesnn cuda LIF / RevLIF vs SpikingJelly's fastest backend
    available here (``triton``, ``cupy``, else ``torch``), median of ``--reps`` after a warm-up,
    CUDA events; plus the same edgesnn step as a CUDA graph replay.

Usage: ``python tools/bench_cuda_launch.py [--calls 2000] [--reps 20] [--json out.json [--force]]``
(the JSON names the baseline of section (2), ``baseline``, beside its ``x_vs_sj`` ratios). Without
a CUDA device it measures nothing, writes nothing, says so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Callable, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from tool_args import add_force, tool_parser, check_out, positive_int, run_main, write_json  # noqa: E402


def per_call_us(fn: Callable[[], Any], calls: int) -> float:
    """Microseconds per call of ``fn``: ``calls`` back-to-back calls, one synchronize at the end, best of 3
    (after one warm-up call)."""
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best * 1e6


def cuda_ms(fn: Callable[[], Any], reps: int) -> float:
    """Milliseconds per call of ``fn`` on the GPU: median of ``reps`` calls timed with CUDA events
    (after one warm-up call)."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def graphed(step: Callable[[], Any], warmup: int = 2) -> Callable[[], None]:
    """Capture ``step`` (warm-up on a side stream first); returns ``replay``."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    return g.replay


def overhead(calls: int) -> dict:
    """Section (1): microseconds per call (float, or the error text) of each variant on tiny tensors
    (``[T, K] = [1, 32]``), ``calls`` back-to-back calls each."""
    from numba import cuda

    from edgesnn.functional.lif import LIFParams
    from edgesnn.kernels import cuda_kernels as C
    from edgesnn.kernels import dispatch
    from edgesnn.nn.neurons import LIF

    out = {}
    stream = cuda.external_stream(torch.cuda.current_stream().cuda_stream)

    @cuda.jit("void()")
    def empty():
        pass

    out["numba empty kernel"] = per_call_us(lambda: empty[1, 32, stream](), calls)
    t = torch.zeros(32, device="cuda")
    out["torch x.add_(1)"] = per_call_us(lambda: t.add_(1), calls)
    x = torch.randn(1, 32, device="cuda")
    v0 = torch.zeros(32, device="cuda")
    p = LIFParams()
    out["kernel wrapper lif_forward"] = per_call_us(lambda: C.lif_forward(x, v0, p), calls)
    x3 = torch.randn(1, 1, 32, device="cuda")

    def op():
        with torch.no_grad():
            dispatch.lif_multistep(x3, p, None, "cuda")

    out["op lif_fwd (no grad)"] = per_call_us(op, calls)
    node = LIF(backend="cuda")
    xg = x3.clone().requires_grad_()

    def fwd_bwd():
        xg.grad = None
        node(xg).sum().backward()

    out["LIF fwd+bwd"] = per_call_us(fwd_bwd, max(1, calls // 4))
    xs = x3.clone().requires_grad_()

    def fwd_bwd_static():
        node(xs).sum().backward()

    try:
        replay = graphed(fwd_bwd_static)
        out["LIF fwd+bwd, CUDA graph replay"] = per_call_us(replay, calls)
    except Exception as exc:  # reported, not fatal
        out["LIF fwd+bwd, CUDA graph replay"] = f"{type(exc).__name__}: {exc}"[:300]
    return out


def _sj_fastest():
    try:
        from spikingjelly.activation_based import functional as sjf
        from spikingjelly.activation_based import neuron
    except Exception as exc:
        return None, f"SpikingJelly not importable: {exc}"
    x = torch.randn(4, 2, 64, device="cuda", requires_grad=True)
    for backend in ("triton", "cupy", "torch"):
        try:
            node = neuron.LIFNode(step_mode="m", backend=backend).cuda()
            sjf.reset_net(node)
            node(x).sum().backward()
            torch.cuda.synchronize()
        except Exception:
            continue

        def run(inp, node=node):
            sjf.reset_net(node)
            return node(inp)

        return (backend, run), None
    return None, "no SpikingJelly backend ran"


def layers(reps: int) -> dict:
    """Section (2): forward + backward of each variant on ``[T, B, N]`` = ``[64, 16, 4096]`` and
    ``[8, 16, 1048576]``, median of ``reps`` in ms (``{"ms": ..., "x_vs_sj": ...}`` or ``{"error": ...}`` per row),
    keyed by shape ``"TxBxN"``, plus ``spikingjelly_backend`` and ``baseline``."""
    from edgesnn.nn.neurons import LIF, RevLIF

    sj, why = _sj_fastest()
    out = {"spikingjelly_backend": sj[0] if sj else why, "baseline": f"SpikingJelly {sj[0]}" if sj else None}
    for shape in ((64, 16, 4096), (8, 16, 1 << 20)):
        torch.manual_seed(0)
        x0 = torch.randn(*shape, device="cuda") * 1.5 + 0.5
        rows = {}
        variants = {"edgesnn cuda LIF": LIF(backend="cuda"), "edgesnn cuda RevLIF": RevLIF(backend="cuda"),
                    "edgesnn torch LIF": LIF(backend="torch")}
        if sj:
            variants[f"SpikingJelly {sj[0]}"] = sj[1]
        for name, f in variants.items():
            def step(f=f):
                x = x0.clone().requires_grad_()
                f(x).sum().backward()

            try:
                rows[name] = {"ms": cuda_ms(step, reps)}
            except Exception as exc:
                rows[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        for name in ("edgesnn cuda LIF", "edgesnn cuda RevLIF"):
            xs = x0.clone().requires_grad_()

            def static_step(f=variants[name]):
                xs.grad = None
                f(xs).sum().backward()

            try:
                rows[name + ", CUDA graph replay"] = {"ms": cuda_ms(graphed(static_step), reps)}
            except Exception as exc:
                rows[name + ", CUDA graph replay"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        if sj and "ms" in rows.get(f"SpikingJelly {sj[0]}", {}):
            base = rows[f"SpikingJelly {sj[0]}"]["ms"]
            for r in rows.values():
                if "ms" in r:
                    r["x_vs_sj"] = base / r["ms"]
        out["x".join(map(str, shape))] = rows
    return out


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: parse ``argv`` (default ``sys.argv[1:]``), run, return the exit status."""
    ap = tool_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=positive_int, default=2000, help="back-to-back calls per overhead figure (default 2000)")
    ap.add_argument("--reps", type=positive_int, default=20, help="timed repetitions per layer figure, median (default 20)")
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    add_force(ap, "the --json file")
    args = ap.parse_args(argv)
    args.json = check_out(ap, args.json, "--json", args.force)
    if not torch.cuda.is_available():
        print("bench_cuda_launch: no CUDA device (torch.cuda.is_available() is False); nothing measured"
              + (f", {args.json} not written" if args.json else ""))
        return 0
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    try:
        import numba_cuda

        report["numba_cuda"] = getattr(numba_cuda, "__version__", "?")
    except Exception:
        pass
    print(f"device: {report['device']}  torch {report['torch']}  numba-cuda {report.get('numba_cuda')}")
    report["overhead_us"] = overhead(args.calls)
    print("\n(1) per-call overhead, tiny tensors (us per call)")
    for name, v in report["overhead_us"].items():
        print(f"  {name:36s} {v:9.1f}" if isinstance(v, float) else f"  {name:36s} {v}")
    report["layers"] = layers(args.reps)
    print(f"\n(2) forward + backward (y.sum().backward()), SpikingJelly backend: {report['layers']['spikingjelly_backend']}")
    for shape, rows in report["layers"].items():
        if shape in ("spikingjelly_backend", "baseline"):
            continue
        print(f"  [{shape}]")
        for name, r in rows.items():
            if "ms" in r:
                ratio = f"   x{r['x_vs_sj']:.2f} vs SpikingJelly" if "x_vs_sj" in r else ""
                print(f"    {name:40s} {r['ms']:9.3f} ms{ratio}")
            else:
                print(f"    {name:40s} {r['error']}")
    if args.json:
        write_json(args.json, report, indent=1)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
