"""Whole-network training memory: VGG-11 (CIFAR-shaped), SpikingJelly vs edgesnn, peak RSS and step time.

Method (every row in a fresh process): VGG-11 on 3x32x32 with SpikingJelly multi-step Conv2d /
BatchNorm2d / MaxPool2d layers (only the spiking node differs between rows), input repeated over
T as a zero-stride view, batch 8, forward + backward of cross-entropy on the time-averaged logits,
one warm-up step, parameter gradients kept allocated (``zero_grad(set_to_none=False)``), large
allocations forced to mmap (``MALLOC_MMAP_THRESHOLD_=131072``, so freed memory returns to the OS
and RSS tracks live tensors). Peak = VmHWM during the measured steps minus the RSS before them
(so parameters, gradients and the process baseline are excluded). Step times come from
more fresh processes, one per row and round, the rows taken in turn (``--rounds``, default 3; the
median of all timed steps), run with glibc's default allocator settings as a user's training
runs: forcing every allocation above 128 KiB to ``mmap`` (right for measuring peaks) makes each
step page-fault its large tensors afresh, which slowed SpikingJelly's T = 64 step 2.3x and
edgesnn's optimized one 1.7x. Times are ratios to SpikingJelly BPTT in the same run.

Rows: SpikingJelly 2.0 LIFNode BPTT; SpikingJelly ``memopt.optimize_memory(level=1,
compress=True)`` (the level that runs on a CPU); edgesnn all-LIF and all-RevLIF (2 groups) without
optimization; ``edgesnn.optimize_memory`` with no budget and with a budget of 1/15 of SpikingJelly
BPTT's T = 64 peak (measured in the same run). Ratios are against SpikingJelly BPTT at the same T.
"pred." is the planner's prediction from shapes: the optimized rows' plan
(:mod:`edgesnn.planner.network`), the other rows' :func:`edgesnn.planner.bptt_peak.predict_peak`
(computed in each row's worker after its measurement; ``predicted_peak_bytes`` in the JSON).
A separate check compares the optimized model's loss, parameter gradients and BatchNorm running
statistics with the unoptimized edgesnn model.

    python tools/bench_network_memory.py                 # T in 8, 32, 64; prints a table
    python tools/bench_network_memory.py -T 8 --json out.json

After the table it prints each row's peak against SpikingJelly memopt at the same T (when that row
ran) and each row's peak growth from the smallest to the largest T (when several T ran). The JSON
(``--json``; an existing file is replaced only with ``--force``) names the baseline (``baseline``:
``sj_bptt``) and holds the printed ratios beside the raw bytes and seconds: per result
``peak_x_less_than_sj_bptt``, ``step_x_of_sj_bptt``, ``peak_x_less_than_sj_memopt``; per row
``peak_growth`` (largest T's peak / smallest T's).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: edgesnn from any folder
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from network_ratios import ratio_lines  # noqa: E402
from tool_args import add_force, tool_parser, check_out, positive_int, run_main, worker_error, write_json  # noqa: E402
from vgg11_sj import build_vgg  # noqa: E402  (also this tool's: validate_planner and the tests take it from here)

ROWS = ("sj_bptt", "sj_memopt", "lif", "revlif", "opt", "opt_budget")
LABELS = {
    "sj_bptt": "SpikingJelly 2.0 LIFNode, BPTT",
    "sj_memopt": "SpikingJelly memopt level 1 (compress)",
    "lif": "edgesnn LIF",
    "revlif": "edgesnn RevLIF (2 groups)",
    "opt": "edgesnn optimize_memory, no budget",
    "opt_budget": "edgesnn optimize_memory, budget SJ/15",
}
_ROW_NODE = {"sj_bptt": "sj", "sj_memopt": "sj", "revlif": "revlif"}  # other rows: edgesnn LIF
BASELINE_ROWS = ("sj_bptt", "sj_memopt", "lif", "revlif")  # predicted by edgesnn.planner.bptt_peak


def predict_baseline(row: str, T: int, batch: int, steps: int = 3) -> Any:
    """The planner's prediction for a baseline row (``BASELINE_ROWS``), from shapes only (no run):
    :func:`edgesnn.planner.bptt_peak.predict_peak` on a fresh copy of the row's model, as
    ``tools/validate_planner.py --network`` computes it. Returns a ``PeakPrediction`` (``peak_bytes``: bytes)."""
    from edgesnn.planner.bptt_peak import Strategy, predict_peak

    model, _ = build_vgg(_ROW_NODE.get(row, "lif"), grouped=(row == "sj_memopt"))
    model.train()
    strategy = Strategy("sj_memopt", compress=True) if row == "sj_memopt" else Strategy("bptt")
    return predict_peak(model, (3, 32, 32), T, batch, strategy=strategy, steps=steps)


def row_model(row: str, x: Any, budget: int) -> Tuple[Any, Any]:
    """The row's VGG-11, in training mode, with its memory optimisation applied for input ``x`` ``[T, B, 3, 32, 32]``
    (``budget``: bytes, used by the ``opt_budget`` row).

    Returns ``(model, plan)``; ``plan`` is edgesnn's plan for the ``opt`` rows, else ``None``.
    Raises ``ValueError`` when the planner predicts the ``opt_budget`` row's budget cannot be met.
    """
    model, block_cls = build_vgg(_ROW_NODE.get(row, "lif"), grouped=(row == "sj_memopt"))
    model.train()
    if row == "sj_memopt":
        from spikingjelly.activation_based import functional, memopt

        def example(m):
            functional.reset_net(m)
            return m(x)

        memopt.optimize_memory(model, block_cls, example, level=1, compress=True)
    elif row in ("opt", "opt_budget"):
        import edgesnn

        return model, edgesnn.optimize_memory(model, x, budget=budget if row == "opt_budget" else None)
    return model, None


def _rss() -> int:
    from edgesnn.memory import rss_bytes

    return rss_bytes()


def _hwm() -> int:
    from edgesnn.memory import peak_rss_bytes

    return peak_rss_bytes()


def _reset_hwm() -> None:
    from edgesnn.memory import reset_peak_rss

    reset_peak_rss()


def worker(row: str, T: int, batch: int, budget: int, steps: int, threads: int, timing: bool = False) -> dict:
    """One row in this process: one warm-up step, then ``steps`` measured ones. ``timing``: the
    kernels' buffer pool stays as the warm-up left it (as in training, where it saves page
    faults); otherwise it is emptied first, so that the buffers a step pools count in its peak."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    node = _ROW_NODE.get(row, "lif")
    x0 = torch.rand(batch, 3, 32, 32)
    x = x0.unsqueeze(0).expand(T, *x0.shape)
    y = torch.randint(0, 10, (batch,))
    try:
        model, plan = row_model(row, x, budget)
    except ValueError as exc:  # a budget the planner predicts cannot be met
        return {"row": row, "T": T, "batch": batch, "error": str(exc)}

    def step():
        if node == "sj":
            from spikingjelly.activation_based import functional
            functional.reset_net(model)
        model.zero_grad(set_to_none=False)
        loss = F.cross_entropy(model(x).mean(0), y)
        loss.backward()
        return loss

    step()  # warm-up: allocates gradients, compiles kernels
    if not timing:
        # edgesnn's kernel buffer pool keeps idle output buffers resident between steps; they would
        # sit in the baseline and hide up to its cap from the peak, so the step starts with it empty
        from edgesnn.kernels import buffers
        buffers.release()
    before = _rss()
    _reset_hwm()
    times, faults = [], []
    for _ in range(steps):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    peak = _hwm() - before
    out = {"row": row, "T": T, "batch": batch, "peak_bytes": peak, "step_s": statistics.median(times),
           "step_times": times, "minor_faults": faults}
    if plan is not None:
        out["predicted_peak_bytes"] = plan.peak_bytes
        out["chunks"] = [b.chunk for b in plan.blocks]
        out["holds"] = [b.hold for b in plan.blocks]
    elif row in BASELINE_ROWS and not timing:  # after the measurement: it does not touch the peak
        p = predict_baseline(row, T, batch, steps)
        out["predicted_peak_bytes"], out["predicted_phase"] = p.peak_bytes, p.phase
    return out


def showcase(device_name: str, T: int, threads: int) -> dict:
    """VGG-11 at T on a device's memory: the largest batch the plan allows, its measured peak.

    The activation budget is the device's memory minus reserved memory, runtime overhead and the
    parameters, gradients and SGD-momentum state. One step (no warm-up: gradient buffers are
    allocated inside it and counted). SpikingJelly BPTT at that batch would not fit this machine:
    its peak there is extrapolated from batches 8 and 16 measured in the same run (it is linear in B).
    """
    import torch
    import torch.nn.functional as F

    import edgesnn
    from edgesnn.devices import load_device
    from edgesnn.memopt.optimize import largest_batch

    torch.set_num_threads(threads)
    dev = load_device(device_name)
    model, _ = build_vgg("lif")
    params = sum(p.numel() * 4 for p in model.parameters())
    room = dev.memory_bytes - dev.reserved_bytes - dev.runtime_overhead_bytes - 3 * params
    x0 = torch.rand(1, 3, 32, 32)
    batch, plan = largest_batch(model, lambda b: x0.expand(b, 3, 32, 32).unsqueeze(0).expand(T, b, 3, 32, 32), room)
    plan = edgesnn.optimize_memory(model, torch.rand(batch, 3, 32, 32).unsqueeze(0).expand(T, batch, 3, 32, 32),
                                   budget=room)
    x = torch.rand(batch, 3, 32, 32).unsqueeze(0).expand(T, batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    before = _rss()
    _reset_hwm()
    t = time.perf_counter()
    F.cross_entropy(model(x).mean(0), y).backward()
    return {"device": device_name, "T": T, "batch": batch, "activation_budget_bytes": int(room),
            "predicted_peak_bytes": plan.peak_bytes, "peak_bytes": _hwm() - before,
            "step_s": time.perf_counter() - t, "chunks": [b.chunk for b in plan.blocks]}


def _run_child(args: list, mmap_threshold: bool = True) -> dict:
    env = dict(os.environ)
    if mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"  # RSS tracks live tensors (peak measurements)
    else:
        env.pop("MALLOC_MMAP_THRESHOLD_", None)  # the allocator as a user's training runs it
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:  # a RuntimeError (WorkerError) naming the worker's last error line
        raise worker_error(f"worker {' '.join(args)}", out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def timing_rounds(T: int, budget: int, rows: Sequence[str], common: List[str], rounds: int) -> dict:
    """Step time per row under glibc's default allocator: every row in a fresh process (one
    warm-up step, then ``--steps`` timed ones), the rows taken in turn, ``rounds`` times over (so a
    load change on a shared machine hits every row alike); the median of all timed steps, and the
    median minor page faults per step (fresh pages the allocator handed out: a cost of its own).
    ``common``: the worker's shared options; returns ``{row: (step s, minor faults per step)}``."""
    times = {row: [] for row in rows}
    faults = {row: [] for row in rows}
    for _ in range(rounds):
        for row in rows:
            r = _run_child(["--worker", row, str(T), str(budget), *common, "--timing"], mmap_threshold=False)
            times[row] += r["step_times"]
            faults[row] += r["minor_faults"]
    return {row: (statistics.median(times[row]), statistics.median(faults[row])) for row in rows}


#: Options of the table that --showcase (its own batch, one step, no gradient check) does not read.
_NOT_SHOWCASE = ("--batch", "--steps", "--rows", "--no-check", "--rounds")


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: parse ``argv`` (default ``sys.argv[1:]``), run, return the exit status."""
    ap = tool_parser(description=__doc__.split("\n")[0])
    ap.add_argument("-T", "--timesteps", type=positive_int, nargs="+", default=[8, 32, 64],
                    help="time steps, one or more (default 8 32 64); --showcase uses the largest")
    ap.add_argument("--batch", type=positive_int, default=8, help="batch size of every row (default 8)")
    ap.add_argument("--steps", type=positive_int, default=3, help="measured steps per process, after one warm-up (default 3)")
    ap.add_argument("--threads", type=positive_int, default=2, help="torch threads per process (default 2)")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS,
                    help="rows to run (default all; opt_budget needs sj_bptt, its budget is SJ BPTT's peak / 15)")
    ap.add_argument("--no-check", action="store_true", help="skip the gradient-agreement check")
    ap.add_argument("--json", help="write the results here")
    add_force(ap, "the --json file")
    ap.add_argument("--worker", nargs=3, metavar=("ROW", "T", "BUDGET"), help=argparse.SUPPRESS)
    ap.add_argument("--check-worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=positive_int, default=3, help="timing rounds (each row in a fresh process per round)")
    ap.add_argument("--timing", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--showcase", metavar="DEVICE",
                    help="instead of the table: VGG-11 at the largest T given by -T, on DEVICE's memory "
                         "(e.g. raspberry-pi-4-4gb), largest planned batch, measured peak vs SpikingJelly BPTT")
    ap.add_argument("--showcase-worker", metavar="DEVICE", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.timesteps = list(dict.fromkeys(a.timesteps))  # -T 8 8 is one row per T, not two
    a.rows = list(dict.fromkeys(a.rows))
    if a.worker:
        print(json.dumps(worker(a.worker[0], int(a.worker[1]), a.batch, int(a.worker[2]), a.steps, a.threads,
                                a.timing)))
        return 0
    if a.check_worker:
        from network_grad_check import check_gradients  # beside this file (the script's folder is on sys.path)

        print(json.dumps(check_gradients(lambda: build_vgg("lif")[0], a.check_worker, a.batch, a.threads)))
        return 0
    if a.showcase_worker:
        print(json.dumps(showcase(a.showcase_worker, max(a.timesteps), a.threads)))
        return 0
    if "opt_budget" in a.rows and "sj_bptt" not in a.rows and not a.showcase:
        ap.error("--rows: opt_budget needs sj_bptt too (its budget is SpikingJelly BPTT's peak at the largest T / 15)")
    if a.showcase:
        from edgesnn.devices import load_device
        from edgesnn.errors import USER_ERRORS

        words = {w.split("=", 1)[0] for w in (sys.argv[1:] if argv is None else argv) if w.startswith("--")}
        unused = [f for f in _NOT_SHOWCASE if f in words]
        if unused:
            ap.error(f"{', '.join(unused)}: not used with --showcase (it plans its own batch and runs one step)")
        try:
            dev = load_device(a.showcase)
        except USER_ERRORS as exc:
            ap.error(f"--showcase: {str(exc).removeprefix('device: ')}")
        usable = dev.memory_bytes - dev.reserved_bytes - dev.runtime_overhead_bytes
        try:
            params = sum(p.numel() * 4 for p in build_vgg("lif")[0].parameters())
        except ImportError:
            ap.error("--showcase: needs SpikingJelly 2.0 (the VGG-11 is built of its layers, and its BPTT is the "
                     "baseline): pip install --no-deps spikingjelly==2.0.0 loguru")
        if usable - 3 * params <= 0:
            ap.error(f"--showcase: {dev.name} leaves {usable / 2**20:.0f} MiB after reserved memory and runtime "
                     f"overhead, not more than VGG-11's parameters, gradients and momentum ({3 * params / 2**20:.0f} MiB)")
    a.json = check_out(ap, a.json, "--json", a.force)
    if a.showcase:
        T = max(a.timesteps)
        r = _run_child(["--showcase-worker", a.showcase, "-T", str(T), "--threads", str(a.threads)])
        sj = [_run_child(["--worker", "sj_bptt", str(T), "0", "--batch", str(b), "--steps", "1",
                          "--threads", str(a.threads)]) for b in (8, 16)]
        slope = (sj[1]["peak_bytes"] - sj[0]["peak_bytes"]) / 8
        r["sj_bptt_measured"] = {str(s_["batch"]): s_["peak_bytes"] for s_ in sj}
        r["sj_bptt_extrapolated_bytes"] = int(sj[0]["peak_bytes"] + slope * (r["batch"] - 8))
        print(f"{a.showcase}, VGG-11, T={T}: largest planned batch {r['batch']} (activation budget "
              f"{r['activation_budget_bytes'] / 2**20:.0f} MiB); measured peak {r['peak_bytes'] / 2**20:.0f} MiB "
              f"(predicted {r['predicted_peak_bytes'] / 2**20:.0f}), step {r['step_s']:.0f} s; SpikingJelly BPTT at "
              f"batch {r['batch']}: ~{r['sj_bptt_extrapolated_bytes'] / 2**30:.1f} GiB (extrapolated from "
              f"{sj[0]['peak_bytes'] / 2**20:.0f} / {sj[1]['peak_bytes'] / 2**20:.0f} MiB at batch 8 / 16)")
        r["baseline"] = "sj_bptt (extrapolated to the planned batch)"
        if r["peak_bytes"] > 0:
            r["sj_bptt_x_more"] = r["sj_bptt_extrapolated_bytes"] / r["peak_bytes"]
            print(f"SpikingJelly BPTT at batch {r['batch']} (extrapolated) against the measured peak: {r['sj_bptt_x_more']:.1f}x more")
        # the step's peak counts the gradients (no warm-up) and the Numba kernels' runtime memory, which
        # the planned budget leaves out: parameters and momentum beside it must fit what the board leaves
        need = r["peak_bytes"] + 2 * params
        r["fits"] = need <= usable
        r["usable_bytes"] = int(usable)
        print(f"fits {dev.name}: {'yes' if r['fits'] else 'NO'}: measured peak + parameters + momentum "
              f"{need / 2**20:.0f} MiB of the {usable / 2**20:.0f} MiB it leaves (memory - reserved - runtime overhead)")
        if a.json:
            write_json(a.json, r, indent=1)
        return 0 if r["fits"] else 1
    common = ["--batch", str(a.batch), "--steps", str(a.steps), "--threads", str(a.threads)]
    results, checks = [], []
    budget = 0
    Ts = sorted(a.timesteps, reverse=True)
    # sj_bptt first: the opt_budget row's budget comes from its peak at the largest T
    run_rows = sorted(a.rows, key=lambda row: row != "sj_bptt") if "opt_budget" in a.rows else a.rows
    for T in Ts:
        for row in run_rows:
            if row == "opt_budget":
                if not budget:
                    continue
            r = _run_child(["--worker", row, str(T), str(budget), *common])
            results.append(r)
            if "error" in r:
                print(f"T={T:<3} {LABELS[row]:<42} not run: {r['error']}", flush=True)
                continue
            if row == "sj_bptt" and T == max(Ts):
                budget = r["peak_bytes"] // 15
                results[-1]["budget_for_opt_budget"] = budget
            print(f"T={T:<3} {LABELS[row]:<42} peak {r['peak_bytes'] / 2**20:8.1f} MiB  step {r['step_s']:.2f} s"
                  + (f"  predicted {r['predicted_peak_bytes'] / 2**20:.1f} MiB" if "predicted_peak_bytes" in r else "")
                  + (f"  K={r['chunks']}" if "chunks" in r else ""), flush=True)
        tm = timing_rounds(T, budget, [r["row"] for r in results if r["T"] == T and "error" not in r], common, a.rounds)
        for r in results:
            if r["T"] == T and r["row"] in tm:
                r["step_s_default_alloc"], r["minor_faults_default_alloc"] = tm[r["row"]]
        print(f"T={T:<3} step time, default allocator, a fresh process per row and round (median of "
              f"{a.rounds} x {a.steps} steps; minor page faults per step): "
              + ", ".join(f"{k} {v:.2f} s ({f:.0f})" for k, (v, f) in tm.items()), flush=True)
        if not a.no_check:
            c = _run_child(["--check-worker", str(T), *common])
            checks.append(c)
            for key in ("float32", "float64"):
                d = c[key]
                print(f"T={T:<3} gradient check {key}: loss rel. diff {d['loss_rel']:.1e}, parameter gradients "
                      f"||a-b||/||a|| max {d['grad_rel_max']:.1e} (median {d['grad_rel_median']:.1e}), "
                      f"BN running stats max diff {d['bn_stats_max_abs']:.1e}"
                      + "".join(f"; {k}: {v:.1e}" for k, v in d.items() if k.startswith("plain_")), flush=True)
                if "weight_grad_rel_to_float64_opt_max" in d:
                    print(f"T={T:<3} conv/linear weight gradients against the same reduction in float64 (the plain "
                          f"model's layer inputs and output gradients): plain max "
                          f"{d['weight_grad_rel_to_float64_plain_max']:.1e}, optimized max "
                          f"{d['weight_grad_rel_to_float64_opt_max']:.1e} (worst: "
                          f"{d['weight_grad_rel_to_float64_worst']})", flush=True)
    print()
    print("| row | " + " | ".join(f"T={T} peak | T={T} step" for T in sorted(Ts)) + " |")
    print("|---|" + "---|---|" * len(Ts))
    for row in a.rows:
        cells = []
        for T in sorted(Ts):
            r = next((r for r in results if r["row"] == row and r["T"] == T), None)
            ref = next((r for r in results if r["row"] == "sj_bptt" and r["T"] == T), None)
            if r is None or "error" in r:
                cells += ["(budget not met)" if r else "", ""]
                continue
            ratio = f" ({ref['peak_bytes'] / r['peak_bytes']:.1f}x less)" if ref and row != "sj_bptt" else ""
            step = r.get("step_s_default_alloc", r["step_s"])
            ref_step = ref.get("step_s_default_alloc", ref["step_s"]) if ref else None
            tr = f" ({step / ref_step:.2f}x)" if ref and row != "sj_bptt" else ""
            if ref and row != "sj_bptt":
                r["peak_x_less_than_sj_bptt"] = ref["peak_bytes"] / r["peak_bytes"]
                r["step_x_of_sj_bptt"] = step / ref_step
            pred = f", pred. {r['predicted_peak_bytes'] / 2**20:.0f}" if "predicted_peak_bytes" in r else ""
            cells += [f"{r['peak_bytes'] / 2**20:.0f} MiB{ratio}{pred}", f"{step:.2f} s{tr}"]
        print(f"| {LABELS[row]} | " + " | ".join(cells) + " |")
    lines, growth = ratio_lines(results, a.rows, sorted(set(Ts)), LABELS)
    if lines:
        print()
        for line in lines:
            print(line)
    if a.json:
        write_json(a.json, {"baseline": "sj_bptt", "results": results, "peak_growth": growth, "checks": checks}, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
