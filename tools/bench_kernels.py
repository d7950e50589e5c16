"""Benchmark of the fused kernels (issue 5). Prints a table; ``--json PATH`` writes the figures.

(a) Open Neuromorphic workload on CPU: ``Linear(N, N)`` + one spiking layer, batch 16, float32,
    forward + backward, loss = output.sum(); N = 4096 and T = 64 by default (the published
    benchmark uses T = 500 on GPUs; 64 keeps a CPU run short). Variants: edgesnn numba (LIF and
    RevLIF), edgesnn torch, SpikingJelly's torch backend, torch.compile of an eager LIF loop.
    The Linear layer dominates on a CPU; "Linear alone" (the same Linear forward + backward, no
    node) is timed interleaved with the other rows in the same loop (median of ``--on-reps``
    rounds, same warm-up), so it can be compared with them. ``--only-on`` runs (a) alone.
(b) The spiking layer alone, ``[T, B, N] = [64, 16, 4096]``, forward + backward (gradient of
    ones handed in): edgesnn numba LIF / RevLIF vs SpikingJelly's torch backend (and edgesnn torch).
(c) Kernel-only bandwidth (outputs preallocated, no autograd) for N = 1e6 and 4e6 neurons,
    T in {4, 8}, against a STREAM triad measured in the same run (working sets 32-256 MB, above
    the last-level cache). The kernels include their fused NaN/Inf checks.
(p) The public form (what a user writes): ``x0.clone().requires_grad_()``, ``LIF()`` /
    ``RevLIF()`` with defaults, ``y.sum().backward()``, vs SpikingJelly's ``LIFNode`` (torch
    backend), interleaved rounds; wall and process-CPU-time ratios. ``--only-public`` runs it alone.
(d) With ``--cuda`` and a GPU: the same spiking layer on CUDA tensors (numba-cuda kernels on
    PyTorch's current stream) vs edgesnn torch and SpikingJelly on the GPU, and kernel-only GB/s
    against a device-to-device copy.

Usage: ``python tools/bench_kernels.py [--threads 2] [--json out.json] [--quick] [--cuda] [--only-layer]
[--only-on] [--on-reps 5] [--tuned] [--thp]`` (``--tuned`` / ``--thp``: opt-in process settings, see below).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

# Opt-in process settings; they must be in place before torch / numba are imported, so they are
# read from argv here. Default: none (what a user gets without tuning).
#   --thp    THP_MEM_ALLOC_ENABLE=1: huge pages for large torch allocations. A study (docs/design.md §3) saw a
#            128 MB allocation go from 48 to 12 ms; on the 2-core test VM (THP 'madvise', no huge
#            pages granted) it made every fresh 16.8 MB output cost ~20 ms: off by default.
#   --tuned  edgesnn.kernels.config.retain_freed_memory() (glibc keeps freed blocks: no page
#            faults on the next step's outputs) and EDGESNN_WIDE_VECTORS=1 (512-bit vectors).
if "--thp" in sys.argv:
    os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
if "--tuned" in sys.argv:
    os.environ.setdefault("EDGESNN_WIDE_VECTORS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from edgesnn.functional.lif import LIFParams, lif_multistep_reference  # noqa: E402
from edgesnn.functional.revlif import RevLIFParams  # noqa: E402
from edgesnn.kernels import set_num_threads  # noqa: E402
from edgesnn.atomic import atomic_write  # noqa: E402
from edgesnn.nn.neurons import LIF, RevLIF  # noqa: E402


def _timeit(fn, reps: int, warmup: int = 1, sync=None) -> float:
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _spikingjelly_node():
    try:
        from spikingjelly.activation_based import neuron
    except Exception:
        return None
    return neuron.LIFNode(step_mode="m")


def _sj_call(node):
    from spikingjelly.activation_based import functional as sjf

    def run(x):
        sjf.reset_net(node)
        return node(x)

    return run


_EAGER_P = LIFParams()  # built outside the compiled function (dynamo cannot trace its validation)


def _eager_lif_loop(x):
    """A plain eager LIF loop (SpikingJelly semantics), the input of torch.compile."""
    s, _ = lif_multistep_reference(x, _EAGER_P)
    return s


# ----------------------------------------------------------------------------- (a) + (b)


def layer_variants(device: str, T: int, B: int, N: int, with_compile: bool):
    """name -> callable(x) returning the layer's output, for the spiking layer alone."""
    out = {
        "edgesnn numba LIF" if device == "cpu" else "edgesnn cuda LIF": LIF(backend="numba" if device == "cpu" else "cuda"),
        "edgesnn numba RevLIF" if device == "cpu" else "edgesnn cuda RevLIF": RevLIF(backend="numba" if device == "cpu" else "cuda"),
        "edgesnn torch LIF": LIF(backend="torch"),
    }
    sj = _spikingjelly_node()
    if sj is not None:
        out["SpikingJelly torch LIF"] = _sj_call(sj.to(device))
    if with_compile:
        out["torch.compile eager LIF loop"] = torch.compile(_eager_lif_loop)
    return out


def bench_layer(device: str, T: int, B: int, N: int, reps: int, with_compile: bool, sync=None):
    torch.manual_seed(0)
    x0 = (torch.randn(T, B, N, device=device) * 1.5 + 0.5)
    gy = torch.ones(T, B, N, device=device)
    res = {}
    for name, layer in layer_variants(device, T, B, N, with_compile).items():
        x = x0.clone().requires_grad_()

        def step():
            x.grad = None
            y = layer(x)
            y.backward(gy)

        try:
            t_compile = time.perf_counter()
            step()
            t_compile = time.perf_counter() - t_compile
            res[name] = {"ms": 1e3 * _timeit(step, reps, sync=sync), "first_call_s": round(t_compile, 2)}
        except Exception as exc:  # a variant that cannot run here is reported, not fatal
            res[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return res


def bench_public_form(T: int, B: int, N: int, reps: int, rounds: int = 3):
    """(p) The public form: ``x = x0.clone().requires_grad_()``, ``LIF()`` / ``RevLIF()`` with
    their defaults (backend auto), ``y.sum().backward()``; SpikingJelly's ``LIFNode(step_mode="m")``
    (torch backend) the same way. One warm-up call each, then ``rounds`` rounds; in every round
    each variant runs ``reps`` steps back to back, the order of the variants reversed every other
    round. Reported per variant: the median over all its steps (wall) and the median of its process
    CPU time per step (all threads; less sensitive to other jobs than the wall clock), and per
    round the ratio SpikingJelly / variant of the medians (``paired`` ratios, their median too)."""
    import resource

    torch.manual_seed(0)
    x0 = torch.randn(T, B, N) * 1.5 + 0.5
    variants = {"edgesnn LIF()": LIF(), "edgesnn RevLIF()": RevLIF()}
    sj = _spikingjelly_node()
    if sj is not None:
        variants["SpikingJelly LIFNode torch"] = _sj_call(sj)

    def step(f):
        x = x0.clone().requires_grad_()
        f(x).sum().backward()

    def cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    res = {name: {"wall": [], "cpu": [], "round_ms": []} for name in variants}
    for name, f in variants.items():
        step(f)
    names = list(variants)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            f = variants[name]
            ws = []
            for _ in range(reps):
                c0, t0 = cpu(), time.perf_counter()
                step(f)
                ws.append(time.perf_counter() - t0)
                res[name]["cpu"].append(cpu() - c0)
            res[name]["wall"] += ws
            res[name]["round_ms"].append(1e3 * statistics.median(ws))
    out = {}
    for name, d in res.items():
        out[name] = {"ms": 1e3 * statistics.median(d["wall"]), "cpu_ms": 1e3 * statistics.median(d["cpu"]),
                     "round_ms": d["round_ms"]}
    if sj is not None:
        sjn = "SpikingJelly LIFNode torch"
        for name in names:
            if name == sjn:
                continue
            o = out[name]
            o["x_vs_sj"] = out[sjn]["ms"] / o["ms"]
            o["x_vs_sj_cpu"] = out[sjn]["cpu_ms"] / o["cpu_ms"]
            o["paired_x"] = [a / b for a, b in zip(out[sjn]["round_ms"], o["round_ms"])]
            o["paired_x_median"] = statistics.median(o["paired_x"])
    return out


def bench_on_workload(T: int, B: int, N: int, reps: int, with_compile: bool):
    """(a): every variant, "Linear alone" included, timed interleaved in one loop.

    Each callable gets the same warm-up (one untimed call, which also compiles), then ``reps``
    rounds; in each round every variant runs once, in an order rotated by one per round (so no
    variant always runs first or right after the same neighbour). Reported: the median over the
    rounds, plus min and max, so "Linear alone" and "Linear + node" share the machine's state, and
    the median over rounds of (row - Linear alone in the same round): the node's share, which is
    below the noise when the Linear dominates (read the node's own cost from (b)).
    """
    torch.manual_seed(0)
    x0 = torch.randn(T, B, N) * 0.05
    res = {}
    lin = torch.nn.Linear(N, N)
    with torch.no_grad():
        lin.weight.mul_(3.0)

    def linear_only():
        lin.zero_grad(set_to_none=True)
        x = x0.clone().requires_grad_()
        lin(x).sum().backward()

    def make_step(node):
        def step():
            lin.zero_grad(set_to_none=True)
            x = x0.clone().requires_grad_()
            node(lin(x)).sum().backward()
        return step

    steps = {"Linear alone": linear_only}
    steps.update({name: make_step(node) for name, node in layer_variants("cpu", T, B, N, with_compile).items()})
    runnable = {}
    for name, fn in steps.items():  # warm-up: one untimed call each
        try:
            t0 = time.perf_counter()
            fn()
            res[name] = {"first_call_s": round(time.perf_counter() - t0, 2)}
            runnable[name] = fn
        except Exception as exc:
            res[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    names = list(runnable)
    times = {name: [] for name in names}
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            runnable[name]()
            times[name].append(time.perf_counter() - t0)
    lin = times.get("Linear alone")
    for name in names:
        ts = times[name]
        res[name].update(ms=1e3 * statistics.median(ts), min_ms=1e3 * min(ts), max_ms=1e3 * max(ts), reps=len(ts))
        if lin and name != "Linear alone":  # the node's share: median over rounds of (this row - Linear alone)
            res[name]["minus_linear_ms"] = 1e3 * statistics.median(t - l for t, l in zip(ts, lin))
    return res


# ----------------------------------------------------------------------------- (c) bandwidth


def stream_triad(n: int = 48 * 1024 * 1024, reps: int = 5) -> float:
    """GB/s of ``a = b + s * c`` (float32, 3 x 4 bytes per element, STREAM convention), Numba prange."""
    from numba import njit, prange

    @njit(parallel=True, fastmath=False)
    def triad(a, b, c, s):
        for i in prange(a.shape[0]):
            a[i] = b[i] + s * c[i]

    a = np.zeros(n, np.float32)
    b = np.ones(n, np.float32)
    c = np.full(n, 2.0, np.float32)
    triad(a, b, c, np.float32(3.0))
    t = _timeit(lambda: triad(a, b, c, np.float32(3.0)), reps)
    return 12.0 * n / t / 1e9


def bench_bandwidth(sizes, Ts, reps: int):
    from edgesnn.kernels import neuron_math as nm
    from edgesnn.kernels import numba_cpu as K
    from edgesnn.kernels import numba_revlif as R

    p = LIFParams()
    kind, a, b = nm.surrogate_constants(p.surrogate)
    f = np.float32
    rows = []
    for N in sizes:
        for T in Ts:
            x = np.random.default_rng(0).standard_normal((T, N), dtype=np.float32) + np.float32(0.5)
            v0 = np.zeros(N, np.float32)
            s = np.empty_like(x)
            vT = np.empty(N, np.float32)
            gx = np.empty_like(x)
            gs = np.ones_like(x)
            gv0 = np.empty(N, np.float32)
            gsum = np.empty(1, np.float32)  # unused: grad_x is written over T
            blk = K.block_size(N)
            bblk = K.bwd_block_size(N, T)

            nf = np.zeros(max(1, -(-N // min(blk, bblk))), np.float32)  # finite-check flags (one per block)

            def fwd():
                K._lif_fwd(x, v0, s, vT, nf, f(p.tau), f(p.v_threshold), f(0.0), True, True, blk)

            def bwd():
                K._lif_bwd(x, v0, gs, v0, gx, gsum, gsum.reshape(1, 1), gv0, nf, f(p.tau), f(p.v_threshold), f(0.0), True, True, False,
                           f(p.input_gain), f(p.state_decay), kind, a, b, bblk, T, False)

            t_f = _timeit(fwd, reps)
            t_b = _timeit(bwd, reps)
            fwd_bytes = 2 * 4 * T * N + 8 * N  # x in, s out; v0 in, vT out
            bwd_bytes = 3 * 4 * T * N + 12 * N  # x and grad_s in, grad_x out (h is recomputed block-wise in cache)
            rows.append({"kernel": "LIF", "N": N, "T": T, "fwd_ms": 1e3 * t_f, "fwd_GBps": fwd_bytes / t_f / 1e9,
                         "bwd_ms": 1e3 * t_b, "bwd_GBps": bwd_bytes / t_b / 1e9})
            # RevLIF exact, 2 groups: x in, y out, bits out (T/8 B), state; backward: y, grad_y in, grad_x out
            # (outputs preallocated like LIF's; the host wrappers add a fresh allocation per call)
            rp = RevLIFParams()
            lf = rp.lif
            xg = x.reshape(T, 1, 2, N // 2)
            v0g = np.zeros((1, 2, N // 2), np.float32)
            y, vTg = np.empty_like(xg), np.empty_like(v0g)
            bits = np.empty(((T + 7) // 8, 1, 2, N // 2), np.uint8)
            cnt = np.empty((1, 1, 1), np.int32)
            gy, gvT, gxg = np.ones_like(xg), np.zeros_like(v0g), np.empty_like(xg)
            gv0g, v0r = np.empty_like(v0g), np.empty_like(v0g)
            rblk = K.block_size(N // 2)
            rnf = np.zeros(max(1, -(-(N // 2) // rblk)), np.float32)
            lif_args = (f(lf.tau), f(lf.v_threshold), f(lf.charge_reset), bool(lf.hard_reset), bool(lf.decay_input))

            def rfwd():
                R._revlif_fwd(xg, v0g, y, vTg, bits, cnt, rnf, *lif_args, True, f(rp.alpha), f(rp.beta), f(rp.gamma), rblk)

            def rbwd():
                R._revlif_bwd(y, vTg, bits, gy, gvT, gxg, gv0g, v0r, cnt, rnf, *lif_args, bool(lf.detach_reset), True,
                              f(rp.alpha), f(rp.beta), f(rp.gamma), f(lf.input_gain), f(lf.state_decay), kind, a, b, rblk)

            rfwd()
            t_rf = _timeit(rfwd, reps)
            t_rb = _timeit(rbwd, reps)
            rf_bytes = 2 * 4 * T * N + T * N / 8 + 8 * N
            rb_bytes = 3 * 4 * T * N + T * N / 8 + 16 * N
            rows.append({"kernel": "RevLIF exact n=2", "N": N, "T": T, "fwd_ms": 1e3 * t_rf,
                         "fwd_GBps": rf_bytes / t_rf / 1e9, "bwd_ms": 1e3 * t_rb, "bwd_GBps": rb_bytes / t_rb / 1e9})
    return rows


# ----------------------------------------------------------------------------- (d) CUDA


def bench_cuda(T: int, B: int, N: int, reps: int):
    sync = torch.cuda.synchronize
    out = {"device": torch.cuda.get_device_name(), "layer": bench_layer("cuda", T, B, N, reps, False, sync=sync)}
    from edgesnn.kernels import cuda_kernels as C

    n = 64 * 1024 * 1024
    a = torch.empty(n, device="cuda")
    bsrc = torch.ones(n, device="cuda")
    t = _timeit(lambda: a.copy_(bsrc), reps, sync=sync)
    out["d2d_copy_GBps"] = 8.0 * n / t / 1e9
    rows = []
    for Nn in (1_000_000, 4_000_000, 16_000_000):
        for TT in (4, 8, 64):
            x = torch.randn(TT, Nn, device="cuda") + 0.5
            v0 = torch.zeros(Nn, device="cuda")
            p = LIFParams()
            t_f = _timeit(lambda: C.lif_forward(x, v0, p), reps, sync=sync)
            s, vT = C.lif_forward(x, v0, p)
            gs = torch.ones_like(x)
            t_b = _timeit(lambda: C.lif_backward(x, v0, gs, vT, p), reps, sync=sync)
            fb = 2 * 4 * TT * Nn + 8 * Nn
            bb = 5 * 4 * TT * Nn + 12 * Nn  # x, grad_s in; h written and re-read through gx; grad_x out
            rows.append({"kernel": "LIF", "N": Nn, "T": TT, "fwd_ms": 1e3 * t_f, "fwd_GBps": fb / t_f / 1e9,
                         "bwd_ms": 1e3 * t_b, "bwd_GBps": bb / t_b / 1e9})
    out["bandwidth"] = rows
    return out


# ----------------------------------------------------------------------------- main


def _ratio(res, base, name):
    if name in res and base in res and "ms" in res[name] and "ms" in res[base]:
        return res[base]["ms"] / res[name]["ms"]
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, skip torch.compile")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    ap.add_argument("--no-on", action="store_true", help="skip (a), the Linear + LIF workload")
    ap.add_argument("--cuda", action="store_true", help="also benchmark the CUDA kernels (needs a GPU)")
    ap.add_argument("--only-cuda", action="store_true", help="run (d) alone")
    ap.add_argument("--only-layer", action="store_true", help="run (b) alone (skips (a) and (c))")
    ap.add_argument("--only-on", action="store_true", help="run (a) alone (skips STREAM, (b) and (c))")
    ap.add_argument("--only-public", action="store_true", help="run STREAM and (p) alone")
    ap.add_argument("--no-public", action="store_true", help="skip (p), the public form")
    ap.add_argument("--on-reps", type=int, default=None,
                    help="interleaved rounds for (a) (default 5; 3 with --quick)")
    ap.add_argument("--thp", action="store_true", help="set THP_MEM_ALLOC_ENABLE=1 (see the top of this file)")
    ap.add_argument("--tuned", action="store_true",
                    help="retain freed heap memory and use 512-bit vectors (opt-in settings, see the top of this file)")
    ap.add_argument("--N", type=int, default=4096)
    ap.add_argument("--T", type=int, default=64)
    args = ap.parse_args(argv)
    set_num_threads(args.threads)
    if args.tuned:
        from edgesnn.kernels import numba_cpu  # noqa: F401  (CPU features are set before the first compile)
        from edgesnn.kernels.config import retain_freed_memory

        retain_freed_memory()
    reps = 3 if args.quick else 7
    with_compile = not (args.quick or args.no_compile)
    T, B, N = args.T, 16, args.N
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                          "torch": torch.__version__, "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
                          "tuned (retain_freed_memory + EDGESNN_WIDE_VECTORS)": bool(args.tuned),
                          "NUMBA_CPU_FEATURES set": bool(os.environ.get("NUMBA_CPU_FEATURES"))},
              "shape": {"T": T, "B": B, "N": N}}
    if args.only_cuda:
        args.cuda = True
        return _finish(args, report, T, B, N, reps, "SpikingJelly torch LIF")
    base = "SpikingJelly torch LIF"
    if args.only_on:
        _print_on(args, report, T, B, N, reps, with_compile, base)
        return _finish(args, report, T, B, N, reps, base)
    report["stream_triad_GBps"] = stream_triad()
    print(f"STREAM triad (numba prange, float32, 3x192 MiB): {report['stream_triad_GBps']:.1f} GB/s")

    if not args.no_public:
        _print_public(args, report, T, B, N)
        if args.only_public:
            return _finish(args, report, T, B, N, reps, base)

    print(f"\n(b) spiking layer alone, [T,B,N]=[{T},{B},{N}], forward+backward, float32, {args.threads} threads")
    layer = bench_layer("cpu", T, B, N, reps, with_compile)
    report["layer"] = layer
    for name, r in layer.items():
        if "ms" in r:
            ratio = _ratio(layer, base, name)
            print(f"  {name:34s} {r['ms']:9.2f} ms   {'x%.1f vs SpikingJelly' % ratio if ratio else ''}")
        else:
            print(f"  {name:34s} {r['error']}")
    floor_ms = (5 * 4 * T * B * N) / (report["stream_triad_GBps"] * 1e9) * 1e3
    report["layer_bandwidth_floor_ms"] = floor_ms
    print(f"  bandwidth floor (fwd: x in, s out; bwd: x, grad in, grad out = 20 B/neuron-step at STREAM): {floor_ms:.2f} ms")
    if args.only_layer:
        return _finish(args, report, T, B, N, reps, base)

    if not args.no_on:
        _print_on(args, report, T, B, N, reps, with_compile, base)
    print("\n(c) kernel-only bandwidth (outputs preallocated, no autograd)")
    bw = bench_bandwidth((1_000_000, 4_000_000), (4, 8), reps)
    report["bandwidth"] = bw
    for r in bw:
        pct_f = 100 * r["fwd_GBps"] / report["stream_triad_GBps"]
        pct_b = 100 * r["bwd_GBps"] / report["stream_triad_GBps"]
        print(f"  {r['kernel']:44s} N={r['N']:>8d} T={r['T']}  fwd {r['fwd_ms']:7.2f} ms {r['fwd_GBps']:6.1f} GB/s ({pct_f:4.0f}% STREAM)"
              f"  bwd {r['bwd_ms']:7.2f} ms {r['bwd_GBps']:6.1f} GB/s ({pct_b:4.0f}%)")
        r["fwd_pct_stream"] = pct_f
        r["bwd_pct_stream"] = pct_b

    return _finish(args, report, T, B, N, reps, base)


def _cpu_pressure_us():
    """``some total`` of /proc/pressure/cpu (microseconds some task waited for a CPU), or None."""
    try:
        with open("/proc/pressure/cpu") as fh:
            for line in fh:
                if line.startswith("some"):
                    return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _print_public(args, report, T, B, N) -> None:
    rounds = 3 if args.quick else 5
    print(f"\n(p) public form, [T,B,N]=[{T},{B},{N}]: x0.clone().requires_grad_(), LIF()/RevLIF() defaults, "
          f"y.sum().backward(); {rounds} rounds x 5 steps after one warm-up, {args.threads} threads")
    psi0, t0 = _cpu_pressure_us(), time.perf_counter()
    pub = bench_public_form(T, B, N, reps=5, rounds=rounds)
    psi1, wall = _cpu_pressure_us(), time.perf_counter() - t0
    report["public_form"] = pub
    for name, r in pub.items():
        extra = ""
        if "x_vs_sj" in r:
            extra = (f"   x{r['x_vs_sj']:.1f} vs SpikingJelly (wall), x{r['x_vs_sj_cpu']:.1f} (CPU time), "
                     f"per-round x{min(r['paired_x']):.1f}..x{max(r['paired_x']):.1f} (median x{r['paired_x_median']:.1f})")
        print(f"  {name:34s} {r['ms']:9.2f} ms  (CPU {r['cpu_ms']:.2f} ms){extra}")
    if psi0 is not None and psi1 is not None:
        stall = 100.0 * (psi1 - psi0) / 1e6 / wall
        report["public_form_cpu_pressure_pct"] = stall
        print(f"  machine load during (p): runnable tasks waited for a CPU {stall:.0f}% of the time")
    import numba

    report["numba_threading_layer"] = numba.threading_layer()
    print(f"  Numba threading layer: {report['numba_threading_layer']}")


def _print_on(args, report, T, B, N, reps, with_compile, base) -> None:
    on_reps = args.on_reps or (3 if args.quick else 5)
    print(f"\n(a) Open Neuromorphic workload on CPU: Linear({N},{N}) + spiking layer, B={B}, T={T} (published: T=500, GPU),"
          f" forward+backward, {args.threads} threads; all rows interleaved, median of {on_reps} rounds after one warm-up each")
    psi0, t0 = _cpu_pressure_us(), time.perf_counter()
    on = bench_on_workload(T, B, N, on_reps, with_compile)
    report["on_workload"] = on
    psi1, wall = _cpu_pressure_us(), time.perf_counter() - t0
    if psi0 is not None and psi1 is not None:
        stall = 100.0 * (psi1 - psi0) / 1e6 / wall
        report["on_workload_cpu_pressure_pct"] = stall
    lin = on.get("Linear alone", {}).get("ms")
    for name, r in on.items():
        if "ms" in r:
            ratio = _ratio(on, base, name) if name != "Linear alone" else None
            vs_lin = f"  x{r['ms'] / lin:.2f} of Linear alone" if lin else ""
            if "minus_linear_ms" in r:
                vs_lin += f", paired diff {r['minus_linear_ms']:+6.1f} ms"
            print(f"  {name:34s} {r['ms']:9.1f} ms  (min {r['min_ms']:.1f}, max {r['max_ms']:.1f}){vs_lin}"
                  f"   {'x%.2f vs SpikingJelly' % ratio if ratio else ''}")
        else:
            print(f"  {name:34s} {r['error']}")
    if "on_workload_cpu_pressure_pct" in report:
        print(f"  machine load during (a): runnable tasks waited for a CPU {report['on_workload_cpu_pressure_pct']:.0f}% "
              "of the time (/proc/pressure/cpu); above ~10% other jobs dominate the spread: rerun")


def _finish(args, report, T, B, N, reps, base) -> int:
    if args.cuda:
        if not torch.cuda.is_available():
            print("\n(d) --cuda: no CUDA device, skipped")
        else:
            cu = bench_cuda(T, B, N, reps)
            report["cuda"] = cu
            print(f"\n(d) CUDA on {cu['device']}: spiking layer [{T},{B},{N}] forward+backward")
            for name, r in cu["layer"].items():
                if "ms" in r:
                    ratio = _ratio(cu["layer"], base, name)
                    print(f"  {name:34s} {r['ms']:9.3f} ms   {'x%.1f vs SpikingJelly' % ratio if ratio else ''}")
                else:
                    print(f"  {name:34s} {r['error']}")
            print(f"  device-to-device copy: {cu['d2d_copy_GBps']:.0f} GB/s")
            for r in cu["bandwidth"]:
                print(f"  LIF N={r['N']:>9d} T={r['T']:>2d}  fwd {r['fwd_ms']:7.3f} ms {r['fwd_GBps']:7.0f} GB/s  "
                      f"bwd {r['bwd_ms']:7.3f} ms {r['bwd_GBps']:7.0f} GB/s")

    if args.json:
        atomic_write(args.json, lambda fh: fh.write(json.dumps(report, indent=1)), mode="w")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
