"""Validate the memory planner: predicted vs measured activation bytes and peak RSS.

Each configuration runs in a fresh Python process (``--worker``): it pins glibc's mmap threshold
(:func:`edgesnn.planner.runtime.lean_allocator`), builds the model and Adam, runs one training
step under saved-tensor hooks (activation bytes: unique storages, parameters excluded), then two
more steps with the peak RSS reset before them (``VmHWM`` via ``/proc/self/clear_refs``): the
steady-state peak of a step with optimizer state allocated.

    PYTHONPATH=. python tools/validate_planner.py [--json out.json] [--quick]
    PYTHONPATH=. python tools/validate_planner.py --calibrate   # runtime overhead of this host
    PYTHONPATH=. python tools/validate_planner.py --quick --micro-batch 8   # each batch in parts (train --micro-batch)

Targets: activation bytes within 10%, peak RSS within 15%.

``--network``: the whole-network benchmark's rows (``tools/bench_network_memory.py``: VGG-11 on
3x32x32, batch 8, one warm-up step, peak = VmHWM during the measured steps minus the RSS before
them): the step peak predicted from shapes by :mod:`edgesnn.planner.bptt_peak` (rows ``sj_bptt``,
``sj_memopt``, ``lif``, ``revlif``) or by :mod:`edgesnn.planner.network` (``opt``, the plan's own
prediction) vs the peak the benchmark's worker measures in a fresh process. Target: within 10%.

    python tools/validate_planner.py --network -T 8 32 [--rows sj_bptt lif] [--json out.json]
    python tools/validate_planner.py --network --from-json bench.json   # results of bench_network_memory.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # edgesnn from any folder (check_out imports it before the measurement)
sys.path.insert(0, str(ROOT / "tools"))

from tool_args import add_force, tool_parser, check_out, measured_err_pct, positive_int, run_main, worker_error, write_json  # noqa: E402

#: (model, in_shape, T, batch, neuron, extra build kwargs)
CONFIGS = [
    ("mlp", (784,), 8, 256, "lif", {"hidden": [1024, 1024]}),
    ("mlp", (784,), 32, 256, "revlif", {"hidden": [1024, 1024]}),
    ("mlp", (784,), 16, 128, ["lif", "revlif:4"], {"hidden": [1024, 1024]}),
    ("convnet", (3, 32, 32), 4, 32, "lif", {"channels": [16, 32]}),
    ("convnet", (3, 32, 32), 4, 32, "revlif", {"channels": [16, 32]}),
    ("convnet", (3, 32, 32), 16, 16, "revlif:4", {"channels": [16, 32]}),
    ("convnet", (3, 32, 32), 8, 32, ["revlif", "lif"], {"channels": [16, 32]}),
    ("vgg11", (3, 32, 32), 4, 16, "lif", {}),
    ("vgg11", (3, 32, 32), 4, 16, "revlif", {}),
    ("vgg11", (3, 32, 32), 6, 8, ["lif", "revlif"] * 4, {}),
    ("vgg11", (3, 32, 32), 8, 8, "revlif:4", {}),
    ("vgg11", (3, 32, 32), 2, 32, "lif", {}),
]
QUICK = [0, 3, 4, 7]


def worker(spec: dict) -> dict:
    """Measure one configuration in this (fresh) process."""
    from edgesnn.planner.runtime import lean_allocator

    lean_allocator()
    import torch
    from torch import nn

    from edgesnn.memory import SavedTensorCounter, _storage_key, peak_rss_bytes, reset_peak_rss
    from edgesnn.models import build_model
    from edgesnn.training.micro_batch import accumulate_gradients, micro_batches

    torch.manual_seed(0)
    m = build_model(spec["model"], spec["in_shape"], 10, spec["T"], neuron=spec["neuron"], node=spec["node"], **spec["kwargs"])
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    x = torch.randn(spec["B"], *spec["in_shape"])
    y = torch.randint(0, 10, (spec["B"],))
    pk = {_storage_key(p) for p in m.parameters()} | {_storage_key(b) for b in m.buffers()}
    act = None
    peak = 0
    times = []
    parts = micro_batches(torch.arange(spec["B"]), spec.get("micro"))  # one part unless --micro-batch

    def load(p):  # one part: the whole batch as allocated above (no copy inside the measured step)
        return (x, y) if len(parts) == 1 else (x[p], y[p])

    for it in range(3):
        if it == 1:
            reset_peak_rss()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        if it == 0:  # the activation bytes of one (the largest) part, as the planner predicts them
            with SavedTensorCounter() as c:
                xp, yp = load(parts[0])
                loss = nn.functional.cross_entropy(m(xp), yp)
            act = sum(n for k, n in c.storages.items() if k not in pk)
            c._keep.clear()
            del c
            loss.backward()
            del loss
        else:  # edgesnn train's step: the parts' gradients added up, then one optimizer step
            accumulate_gradients(m, nn.functional.cross_entropy, parts, load,
                                 lambda: opt.zero_grad(set_to_none=True), lambda v: None)
        opt.step()
        times.append(time.perf_counter() - t0)
        peak = peak_rss_bytes()
    return dict(activation_bytes=act, peak_rss_bytes=peak, step_s=min(times[1:]))


def predict(spec: dict, overhead: int) -> dict:
    """The planner's prediction for ``spec`` on a host whose torch runtime is ``overhead`` bytes (the
    Numba runtime is added as ``edgesnn plan`` adds it, when the nodes run the Numba kernels)."""
    from edgesnn.models import build_model
    from edgesnn.planner.memory_model import ChainModel, kernel_runtime_bytes
    from edgesnn.planner.solver import predict as _predict

    m = build_model(spec["model"], spec["in_shape"], 10, spec["T"], neuron=spec["neuron"], node=spec["node"], **spec["kwargs"])
    chain = ChainModel(m)
    n = spec["neuron"]
    opts = [n] * len(chain.spiking) if isinstance(n, str) else list(n)
    batch = min(spec["B"], spec.get("micro") or spec["B"])  # --micro-batch: the largest part is what is computed at once
    return _predict(chain, opts, spec["T"], batch, overhead + kernel_runtime_bytes(chain), accumulate=batch < spec["B"])


def run_fresh(spec: dict) -> dict:
    """Measure ``spec`` in a fresh worker process; returns ``activation_bytes`` and ``peak_rss_bytes`` (bytes) and
    ``step_s`` (s)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                         env=env, cwd=ROOT, check=False)
    if out.returncode != 0:  # one line: the worker's last error line (a WorkerError: run_main prints it, exit 1)
        raise worker_error(f"worker {spec['model']} T={spec['T']} B={spec['B']}", out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _spec(cfg, backend: str, micro=None) -> dict:
    model, shape, T, B, neuron, kwargs = cfg
    return dict(model=model, in_shape=list(shape), T=T, B=B, neuron=neuron, kwargs=kwargs, node={"backend": backend},
                micro=micro)


def _label(neuron) -> str:
    if isinstance(neuron, str):
        return neuron
    return "mix(" + ",".join(sorted(set(neuron))) + ")"


NETWORK_ROWS = ("sj_bptt", "sj_memopt", "lif", "revlif")


def _bench_module():
    """``tools/bench_network_memory.py`` as a module (its model builders and fresh-process worker)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_network_memory", ROOT / "tools" / "bench_network_memory.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def predict_network_row(row: str, T: int, batch: int) -> Any:
    """:class:`edgesnn.planner.bptt_peak.PeakPrediction` of a benchmark row (``peak_bytes``: bytes, ``phase``), from
    shapes only (VGG-11 on ``[T, batch, 3, 32, 32]``)."""
    from edgesnn.planner.bptt_peak import Strategy, predict_peak

    bench = _bench_module()
    model, _ = bench.build_vgg(bench._ROW_NODE.get(row, "lif"), grouped=(row == "sj_memopt"))
    model.train()
    strategy = Strategy("sj_memopt", compress=True) if row == "sj_memopt" else Strategy("bptt")
    return predict_peak(model, (3, 32, 32), T, batch, strategy=strategy)


def _check_row(path: str, i: int, r: dict) -> None:
    """A measured row of ``--from-json``: ``row`` a name, ``T`` and ``peak_bytes`` whole numbers
    (``predicted_peak_bytes`` too where present); one line naming the row and field otherwise."""
    from edgesnn.errors import UsageError

    def whole(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    for key, ok, want in (("row", lambda v: isinstance(v, str), "a row name"),
                          ("T", lambda v: whole(v) and v > 0, "a whole number > 0"),
                          ("peak_bytes", whole, "a whole number of bytes"),
                          ("predicted_peak_bytes", whole, "a whole number of bytes")):
        if key == "predicted_peak_bytes" and key not in r:
            continue
        if key not in r or not ok(r[key]):
            got = "missing" if key not in r else f"got {json.dumps(r[key])[:40]}"
            raise UsageError(f"--from-json: {path}: results[{i}].{key}: expected {want}, {got}")


def network_main(args: argparse.Namespace) -> int:
    """Predicted vs measured peak (bytes, printed in MiB) of the whole-network benchmark's rows (see the module
    docstring); returns the exit status (0: every row within 10%; 1: a row outside it, or no row measured)."""
    bench = _bench_module()
    measured = {}
    if args.from_json:
        from edgesnn.errors import UsageError

        if os.path.isdir(args.from_json):
            raise UsageError(f"--from-json: {args.from_json} is a directory; expected bench_network_memory.py's --json file")
        if not os.path.isfile(args.from_json):
            raise UsageError(f"--from-json: {args.from_json}: no such file")
        try:
            with open(args.from_json) as fh:
                results = json.load(fh)["results"]
            if not all(isinstance(r, dict) for r in results):
                raise TypeError("every result must be an object")
            batches = sorted({r.get("batch") for r in results if "peak_bytes" in r} - {None})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UsageError(f"--from-json: {args.from_json} is not bench_network_memory.py --json output "
                             f"(a 'results' list of rows): {type(exc).__name__}: {exc}") from None
        for i, r in enumerate(results):
            if "peak_bytes" in r and r.get("batch", args.batch) == args.batch:
                _check_row(args.from_json, i, r)
                measured[(r["row"], r["T"])] = r
        wanted = {(row, T) for row in args.rows for T in args.timesteps}
        if not wanted & set(measured):
            raise UsageError(f"--from-json: {args.from_json} has no rows {sorted(args.rows)} with batch {args.batch} and "
                             f"T in {args.timesteps} (it holds batch {batches}); pass --batch / -T / --rows to match")
    rows = []
    print(f"| {'row':10} | {'T':>3} | {'pred MiB':>9} | {'meas MiB':>9} | {'err':>7} | phase of the predicted peak |")
    print("|" + "|".join("-" * n for n in (12, 5, 11, 11, 9, 29)) + "|")
    for T in args.timesteps:
        for row in args.rows:
            meas = measured.get((row, T))
            if meas is None:
                if args.from_json:
                    continue
                meas = bench._run_child(["--worker", row, str(T), "0", "--batch", str(args.batch), "--steps", str(args.steps),
                                         "--threads", str(args.threads)])
            if row in NETWORK_ROWS:
                p = predict_network_row(row, T, args.batch)
                pred, phase = p.peak_bytes, p.phase
            elif "predicted_peak_bytes" in meas:
                pred, phase = meas["predicted_peak_bytes"], "edgesnn.planner.network"
            else:
                continue
            err = measured_err_pct(pred, meas["peak_bytes"], f"row {row} T={T} peak")
            rows.append(dict(row=row, T=T, batch=args.batch, predicted_bytes=int(pred), measured_bytes=int(meas["peak_bytes"]),
                             err_pct=err, phase=phase))
            print(f"| {row:10} | {T:>3} | {pred / 2**20:9.1f} | {meas['peak_bytes'] / 2**20:9.1f} | {err:+6.1f}% | {phase:27} |",
                  flush=True)
    if not rows:
        print("no rows measured")
        return 1
    worst = max(abs(r["err_pct"]) for r in rows)
    ok = worst <= 10
    print(f"\nworst |error| {worst:.1f}% (target 10%): {'PASS' if ok else 'FAIL'}")
    if args.json:
        write_json(args.json, dict(baseline="measured peak (VmHWM)", rows=rows, worst_err_pct=worst, passed=ok))
    return 0 if ok else 1


#: Flags that only the --network rows read, and flags that only the per-configuration table reads.
_NETWORK_ONLY = ("-T", "--timesteps", "--rows", "--batch", "--steps", "--threads", "--from-json")
_TABLE_ONLY = ("--quick", "--backend", "--micro-batch", "--calibrate")
#: Flags of the per-configuration table that --calibrate (one small model) does not read.
_NOT_CALIBRATE = ("--quick", "--micro-batch")


def _refuse_unused_flags(ap: argparse.ArgumentParser, args: argparse.Namespace, argv) -> None:
    """One-line usage error for a flag the chosen mode would ignore (``--rows`` without ``--network``,
    ``--quick`` with it): a run that silently measures something else than asked."""
    words = [a for a in (sys.argv[1:] if argv is None else argv) if a.startswith("-")]
    given = {a.split("=", 1)[0] for a in words} | {"-T" for a in words if a.startswith("-T")}  # -T8 too
    unused = [f for f in (_TABLE_ONLY if args.network else _NETWORK_ONLY) if f in given]
    if not unused and args.calibrate and not args.network:
        unused = [f for f in _NOT_CALIBRATE if f in given]
        if unused:
            ap.error(f"{', '.join(unused)}: not used with --calibrate (it measures one small model)")
    if unused:
        mode = "with --network (they apply to the per-configuration table)" if args.network else "without --network"
        ap.error(f"{', '.join(unused)}: not used {mode}")


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: parse ``argv`` (default ``sys.argv[1:]``), run, return the exit status."""
    ap = tool_parser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="write the results table as JSON to this path")
    add_force(ap, "the --json file")
    ap.add_argument("--quick", action="store_true", help="4 configurations instead of 12")
    ap.add_argument("--backend", default="torch", choices=["auto", "torch", "numba", "reference"],
                    help="neuron backend of every node (default: torch)")
    ap.add_argument("--micro-batch", type=positive_int, default=None, metavar="M",
                    help="run each configuration's batch in parts of at most M samples (edgesnn train --micro-batch), "
                         "predicted at the largest part with the gradients accumulating (planner predict(accumulate=True)); "
                         "the table adds the whole batch's measured peak beside it")
    ap.add_argument("--calibrate", action="store_true", help="measure the runtime overhead of this host")
    net = ap.add_argument_group("whole-network benchmark rows (--network)")
    net.add_argument("--network", action="store_true", help="predicted vs measured peak of bench_network_memory.py's rows")
    net.add_argument("-T", "--timesteps", type=positive_int, nargs="+", default=[8, 32], help="time steps of the rows")
    net.add_argument("--rows", nargs="+", default=list(NETWORK_ROWS), choices=list(NETWORK_ROWS) + ["opt"])
    net.add_argument("--batch", type=positive_int, default=8, help="batch of the rows")
    net.add_argument("--steps", type=positive_int, default=3, help="training steps per measured row")
    net.add_argument("--threads", type=positive_int, default=2, help="threads of each worker")
    net.add_argument("--from-json", help="take the measured peaks from bench_network_memory.py --json output")
    args = ap.parse_args(argv)
    if not args.worker:
        _refuse_unused_flags(ap, args, argv)
        args.json = check_out(ap, args.json, "--json", args.force, inputs={"--from-json": getattr(args, "from_json", None)})  # before the measurement
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    sys.path.insert(0, str(ROOT))
    if args.network:
        return network_main(args)
    from edgesnn import devices

    __import__("torch")  # loaded here, so that its build (CPU or CUDA: their libraries' RSS differs) decides the overhead

    runtime_overhead, overhead_source = devices.torch_runtime_overhead()

    if args.calibrate:
        spec = dict(model="mlp", in_shape=[8], T=1, B=2, neuron="lif", kwargs={"hidden": [8]}, node={"backend": args.backend})
        meas = run_fresh(spec)
        pred = predict(spec, 0)
        measured_overhead = meas['peak_rss_bytes'] - pred['peak_bytes']
        print(f"runtime overhead of this host: {measured_overhead} bytes ({measured_overhead / 2**20:.1f} MiB); "
              f"the planner's for this torch build: {runtime_overhead} ({overhead_source})")
        if args.json:
            write_json(args.json, dict(baseline="the planner's runtime overhead for this torch build",
                                       measured_overhead_bytes=int(measured_overhead),
                                       planner_overhead_bytes=int(runtime_overhead), planner_source=overhead_source,
                                       ratio=measured_overhead / runtime_overhead if runtime_overhead else None))
            print(f"wrote {args.json}")
        return 0
    rows = []
    configs = [CONFIGS[i] for i in QUICK] if args.quick else CONFIGS
    hdr = (f"| {'model':8} | {'neuron':18} | {'T':>3} | {'B':>4} | {'act pred MiB':>12} | {'act meas MiB':>12} | "
           f"{'err':>7} | {'RSS pred MiB':>12} | {'RSS meas MiB':>12} | {'err':>7} |")
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    if args.micro_batch:
        print(f"(B: the step's batch, computed in parts of at most {args.micro_batch} samples; predicted at the largest part, "
              "gradients accumulating)")
    for cfg in configs:
        spec = _spec(cfg, args.backend, args.micro_batch)
        meas = run_fresh(spec)
        pred = predict(spec, runtime_overhead)
        ea = measured_err_pct(pred["activation_bytes"], meas["activation_bytes"], f"{_label(spec['neuron'])} activation")
        er = measured_err_pct(pred["peak_bytes"], meas["peak_rss_bytes"], f"{_label(spec['neuron'])} peak RSS")
        row = dict(model=spec["model"], neuron=_label(spec["neuron"]), T=spec["T"], B=spec["B"],
                   activation_pred=pred["activation_bytes"], activation_meas=meas["activation_bytes"], activation_err_pct=ea,
                   rss_pred=pred["peak_bytes"], rss_meas=meas["peak_rss_bytes"], rss_err_pct=er, step_s=meas["step_s"])
        whole = ""
        if args.micro_batch:  # the same step on the whole batch, for the saving (and its time)
            full = run_fresh(dict(spec, micro=None))
            row.update(micro_batch=args.micro_batch, whole_rss_meas=full["peak_rss_bytes"], whole_step_s=full["step_s"],
                       whole_rss_x_of_parts=full["peak_rss_bytes"] / meas["peak_rss_bytes"])  # the printed ratio
            one = " (one part: B <= M)" if spec["B"] <= args.micro_batch else ""
            whole = (f" whole batch {full['peak_rss_bytes'] / 2**20:.1f} MiB "
                     f"({full['peak_rss_bytes'] / meas['peak_rss_bytes']:.2f}x){one} |")
        rows.append(row)
        print(f"| {row['model']:8} | {row['neuron']:18} | {row['T']:>3} | {row['B']:>4} | {row['activation_pred'] / 2**20:12.1f} | "
              f"{row['activation_meas'] / 2**20:12.1f} | {ea:+6.2f}% | {row['rss_pred'] / 2**20:12.1f} | "
              f"{row['rss_meas'] / 2**20:12.1f} | {er:+6.2f}% |{whole}", flush=True)
    worst_a = max(abs(r["activation_err_pct"]) for r in rows)
    worst_r = max(abs(r["rss_err_pct"]) for r in rows)
    ok = worst_a <= 10 and worst_r <= 15
    print(f"\nworst |error|: activation bytes {worst_a:.2f}% (target 10%), peak RSS {worst_r:.2f}% (target 15%): "
          f"{'PASS' if ok else 'FAIL'}")
    if args.json:
        write_json(args.json, dict(baseline="measured (saved-tensor bytes, VmHWM)", units="bytes, seconds (*_s), percent (*_pct)",
                                   rows=rows, worst_activation_err_pct=worst_a,
                                   worst_rss_err_pct=worst_r, passed=ok, runtime_overhead_bytes=runtime_overhead))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
