"""Benchmark of the fused kernels. Prints a table; ``--json PATH`` writes the figures.

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

The measurements themselves are in ``tools/kernel_bench_cases.py`` (one function per section);
this script sets the opt-in process settings, runs them and prints the table / JSON.

Usage: ``python tools/bench_kernels.py [--threads 2] [--json out.json [--force]] [--quick] [--cuda] [--only-layer]
[--only-on] [--on-reps 5] [--tuned] [--thp]`` (``--tuned`` / ``--thp``: opt-in process settings, see below).
The JSON names each section's baseline (``baseline``) and holds the printed ratios beside the raw
figures (``x_vs_sj``: the baseline's time / the row's; ``x_of_linear_alone`` in (a)).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import List, Optional

# Opt-in process settings; they must be in place before torch / numba are imported, so they are
# read from argv here (the parser below takes no abbreviations, so only these exact spellings turn
# them on). Default: none (what a user gets without tuning).
#   --thp    THP_MEM_ALLOC_ENABLE=1: huge pages for large torch allocations (fewer page faults where
#            the kernel grants them); on the 2-core test VM (THP 'madvise', no huge pages granted)
#            it made every fresh 16.8 MB output cost ~20 ms: off by default.
#   --tuned  edgesnn.kernels.config.retain_freed_memory() (glibc keeps freed blocks: no page
#            faults on the next step's outputs) and EDGESNN_WIDE_VECTORS=1 (512-bit vectors).
if "--thp" in sys.argv:
    os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
if "--tuned" in sys.argv:
    os.environ.setdefault("EDGESNN_WIDE_VECTORS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from edgesnn.kernels import set_num_threads  # noqa: E402
from kernel_bench_cases import (bench_bandwidth, bench_cuda, bench_layer, bench_on_workload,  # noqa: E402
                                bench_public_form, stream_triad)
from tool_args import add_force, tool_parser, check_out, positive_int, run_main, write_json  # noqa: E402


# ----------------------------------------------------------------------------- main


def _ratio(res, base, name):
    if name in res and base in res and "ms" in res[name] and "ms" in res[base]:
        return res[base]["ms"] / res[name]["ms"]
    return None


def _times(ratio: float) -> str:
    """A speed ratio as printed: ``x5.3``; below 1 with two significant digits (``x0.033``, not ``x0.0``)."""
    return f"x{ratio:.1f}" if ratio >= 1 else f"x{ratio:.2g}"


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: parse ``argv`` (default ``sys.argv[1:]``), run, return the exit status."""
    # allow_abbrev=False: --thp / --tuned are read from sys.argv above, so an abbreviation such as
    # --tune must be refused, not recorded as tuned without the settings in place
    ap = tool_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--threads", type=positive_int, default=os.cpu_count() or 1,
                    help="Numba and PyTorch threads (default: every core)")
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    add_force(ap, "the --json file")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, skip torch.compile")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    ap.add_argument("--no-on", action="store_true", help="skip (a), the Linear + LIF workload")
    ap.add_argument("--cuda", action="store_true", help="also benchmark the CUDA kernels (needs a GPU)")
    ap.add_argument("--only-cuda", action="store_true", help="run (d) alone")
    ap.add_argument("--only-layer", action="store_true",
                    help="run STREAM (for the bandwidth floor) and (b) alone (skips (a), (p) and (c))")
    ap.add_argument("--only-on", action="store_true", help="run (a) alone (skips STREAM, (b) and (c))")
    ap.add_argument("--only-public", action="store_true", help="run STREAM and (p) alone")
    ap.add_argument("--no-public", action="store_true", help="skip (p), the public form")
    ap.add_argument("--on-reps", type=positive_int, default=None,
                    help="interleaved rounds for (a) (default 5; 3 with --quick)")
    ap.add_argument("--thp", action="store_true", help="set THP_MEM_ALLOC_ENABLE=1 (see the top of this file)")
    ap.add_argument("--tuned", action="store_true",
                    help="retain freed heap memory and use 512-bit vectors (opt-in settings, see the top of this file)")
    ap.add_argument("--N", type=positive_int, default=4096, help="neurons of the layer in (a), (b), (p), (d) (default 4096)")
    ap.add_argument("--T", type=positive_int, default=64, help="time steps in (a), (b), (p), (d) (default 64)")
    args = ap.parse_args(argv)
    only = [f"--only-{k}" for k in ("cuda", "layer", "on", "public") if getattr(args, f"only_{k}")]
    if len(only) > 1:
        ap.error(f"{', '.join(only)}: each runs one part alone; pass one of them")
    for part in ("public", "on"):
        if getattr(args, f"only_{part}") and getattr(args, f"no_{part}"):
            ap.error(f"--only-{part} with --no-{part}: one runs that part alone, the other skips it; pass one")
    args.json = check_out(ap, args.json, "--json", args.force)
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
              "shape": {"T": T, "B": B, "N": N},
              "baseline": {"layer": "SpikingJelly torch LIF", "on_workload": "SpikingJelly torch LIF",
                           "cuda": "SpikingJelly torch LIF", "public_form": "SpikingJelly LIFNode torch",
                           "bandwidth": "stream_triad_GBps"}}
    if args.only_cuda:
        args.cuda = True
        return _finish(args, report, T, B, N, reps, "SpikingJelly torch LIF")
    base = "SpikingJelly torch LIF"
    if args.only_on:
        _print_on(args, report, T, B, N, reps, with_compile, base)
        return _finish(args, report, T, B, N, reps, base)
    report["stream_triad_GBps"] = stream_triad()
    print(f"STREAM triad (numba prange, float32, 3x192 MiB): {report['stream_triad_GBps']:.1f} GB/s")

    if not args.no_public and not args.only_layer:
        _print_public(args, report, T, B, N)
        if args.only_public:
            return _finish(args, report, T, B, N, reps, base)

    print(f"\n(b) spiking layer alone, [T,B,N]=[{T},{B},{N}], forward+backward, float32, {args.threads} threads")
    layer = bench_layer("cpu", T, B, N, reps, with_compile)
    report["layer"] = layer
    for name, r in layer.items():
        if "ms" in r:
            ratio = _ratio(layer, base, name)
            if ratio:
                r["x_vs_sj"] = ratio
            print(f"  {name:34s} {r['ms']:9.2f} ms   {_times(ratio) + ' vs SpikingJelly' if ratio else ''}")
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
            extra = (f"   {_times(r['x_vs_sj'])} vs SpikingJelly (wall), {_times(r['x_vs_sj_cpu'])} (CPU time), "
                     f"per-round {_times(min(r['paired_x']))}..{_times(max(r['paired_x']))} "
                     f"(median {_times(r['paired_x_median'])})")
        print(f"  {name:34s} {r['ms']:9.2f} ms  (CPU {r['cpu_ms']:.2f} ms, {r['page_faults']:.0f} page faults){extra}")
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
            if lin:
                r["x_of_linear_alone"] = r["ms"] / lin
            if ratio:
                r["x_vs_sj"] = ratio
            if "minus_linear_ms" in r:
                vs_lin += f", paired diff {r['minus_linear_ms']:+6.1f} ms"
            print(f"  {name:34s} {r['ms']:9.1f} ms  (min {r['min_ms']:.1f}, max {r['max_ms']:.1f}){vs_lin}"
                  f"   {'x%.2f vs SpikingJelly' % ratio if ratio else ''}")
        else:
            print(f"  {name:34s} {r['error']}")
    if "on_workload_cpu_pressure_pct" in report:
        print(f"  machine load during (a): runnable tasks waited for a CPU {report['on_workload_cpu_pressure_pct']:.0f}% "
              "of the time (/proc/pressure/cpu); above ~10% other jobs dominate the spread: rerun")


def _drop_missing_baselines(report: dict) -> None:
    """Name no baseline for a section whose baseline row did not run (SpikingJelly not importable,
    or its row failed: the section has no ratios); print a note once."""
    sections = {"layer": report.get("layer"), "on_workload": report.get("on_workload"),
                "public_form": report.get("public_form"), "cuda": (report.get("cuda") or {}).get("layer")}
    missing = [k for k, rows in sections.items()
               if rows is not None and "ms" not in rows.get(report["baseline"][k], {})]
    for key in missing:
        report["baseline"][key] = None
    if missing:
        print(f"\nnote: no {', '.join(missing)} ratios: SpikingJelly's row did not run (not importable? "
              "pip install --no-deps spikingjelly==2.0.0 loguru)")


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
                    if ratio:
                        r["x_vs_sj"] = ratio
                    print(f"  {name:34s} {r['ms']:9.3f} ms   {_times(ratio) + ' vs SpikingJelly' if ratio else ''}")
                else:
                    print(f"  {name:34s} {r['error']}")
            print(f"  device-to-device copy: {cu['d2d_copy_GBps']:.0f} GB/s")
            for r in cu["bandwidth"]:
                print(f"  LIF N={r['N']:>9d} T={r['T']:>2d}  fwd {r['fwd_ms']:7.3f} ms {r['fwd_GBps']:7.0f} GB/s  "
                      f"bwd {r['bwd_ms']:7.3f} ms {r['bwd_GBps']:7.0f} GB/s")

    _drop_missing_baselines(report)
    if args.json:
        write_json(args.json, report, indent=1)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
