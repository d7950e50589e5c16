"""The measurements of ``tools/bench_kernels.py``, one function per section: (a)
:func:`bench_on_workload`, (b) :func:`bench_layer`, (c) :func:`stream_triad` and
:func:`bench_bandwidth`, (p) :func:`bench_public_form`, (d) :func:`bench_cuda`. Each returns its
figures as plain dicts; printing, the report and the command line live in ``bench_kernels.py``
(which sets the opt-in process settings before this module imports torch)."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from edgesnn.functional.lif import LIFParams, lif_multistep_reference
from edgesnn.functional.revlif import RevLIFParams
from edgesnn.nn.neurons import LIF, RevLIF

__all__ = ["layer_variants", "bench_layer", "bench_public_form", "bench_on_workload", "stream_triad",
           "bench_bandwidth", "bench_cuda"]


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


def layer_variants(device: str, T: int, B: int, N: int, with_compile: bool) -> Dict[str, Callable[[torch.Tensor], Any]]:
    """name -> callable(x) returning the layer's output (spikes ``[T, B, N]`` for ``x [T, B, N]``), for the
    spiking layer alone on ``device`` ("cpu": the Numba kernels, else the CUDA ones)."""
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


def bench_layer(device: str, T: int, B: int, N: int, reps: int, with_compile: bool,
                sync: Optional[Callable[[], Any]] = None) -> Dict[str, dict]:
    """(b) The spiking layer alone on ``[T, B, N]`` on ``device``: forward + backward (gradient of ones handed in)
    of every :func:`layer_variants` row, median of ``reps`` after a warm-up call, ``sync`` after each call (e.g.
    ``torch.cuda.synchronize``). Returns name -> ``{"ms", "first_call_s"}`` (ms, s) or ``{"error": text}``."""
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


def bench_public_form(T: int, B: int, N: int, reps: int, rounds: int = 3) -> Dict[str, dict]:
    """(p) The public form: ``x = x0.clone().requires_grad_()``, ``LIF()`` / ``RevLIF()`` with
    their defaults (backend auto), ``y.sum().backward()``; SpikingJelly's ``LIFNode(step_mode="m")``
    (torch backend) the same way. One warm-up call each, then ``rounds`` rounds; in every round
    each variant runs ``reps`` steps back to back, the order of the variants reversed every other
    round. Reported per variant: the median over all its steps (wall) and the median of its process
    CPU time per step (all threads; less sensitive to other jobs than the wall clock), and per
    round the ratio SpikingJelly / variant of the medians (``paired`` ratios, their median too), and
    the median of the process's minor page faults per step (``page_faults``: fresh pages the step
    touched, the user's ``clone`` included). Input ``[T, B, N]``; returns name -> figures (``ms``, ``cpu_ms``: ms
    per step)."""
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

    def usage():
        """(process CPU seconds, minor page faults) so far."""
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime, r.ru_minflt

    res = {name: {"wall": [], "cpu": [], "faults": [], "round_ms": []} for name in variants}
    for name, f in variants.items():
        step(f)
    names = list(variants)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            f = variants[name]
            ws = []
            for _ in range(reps):
                (c0, f0), t0 = usage(), time.perf_counter()
                step(f)
                ws.append(time.perf_counter() - t0)
                c1, f1 = usage()
                res[name]["cpu"].append(c1 - c0)
                res[name]["faults"].append(f1 - f0)
            res[name]["wall"] += ws
            res[name]["round_ms"].append(1e3 * statistics.median(ws))
    out = {}
    for name, d in res.items():
        out[name] = {"ms": 1e3 * statistics.median(d["wall"]), "cpu_ms": 1e3 * statistics.median(d["cpu"]),
                     "page_faults": statistics.median(d["faults"]), "round_ms": d["round_ms"]}
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


def bench_on_workload(T: int, B: int, N: int, reps: int, with_compile: bool) -> Dict[str, dict]:
    """(a): every variant, "Linear alone" included, timed interleaved in one loop.

    Each callable gets the same warm-up (one untimed call, which also compiles), then ``reps``
    rounds; in each round every variant runs once, in an order rotated by one per round (so no
    variant always runs first or right after the same neighbour). Reported: the median over the
    rounds, plus min and max, so "Linear alone" and "Linear + node" share the machine's state, and
    the median over rounds of (row - Linear alone in the same round): the node's share, which is
    below the noise when the Linear dominates (read the node's own cost from (b)).

    Input ``[T, B, N]`` into ``Linear(N, N)``. Returns name -> ``{"ms", "min_ms", "max_ms", "minus_linear_ms",
    "first_call_s", "reps"}`` (ms, s) or ``{"error": text}``.
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


def bench_bandwidth(sizes: Sequence[int], Ts: Sequence[int], reps: int) -> List[dict]:
    """(c) Kernel-only time and bandwidth of the Numba LIF and RevLIF (exact, 2 groups) kernels on ``[T, N]``
    float32 arrays, outputs preallocated, no autograd, for every ``N`` in ``sizes`` (even) and ``T`` in ``Ts``.
    One row per kernel, N and T: ``fwd_ms``, ``bwd_ms`` (ms, median of ``reps``) and ``fwd_GBps``, ``bwd_GBps``
    (GB/s: the bytes each pass must move / its time)."""
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
            rblk = R.revlif_block_size(N // 2, T)
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


def bench_cuda(T: int, B: int, N: int, reps: int) -> Dict[str, Any]:
    """(d) On the GPU: :func:`bench_layer` on CUDA tensors ``[T, B, N]`` (``layer``, ms), a device-to-device copy
    (``d2d_copy_GBps``, GB/s) and the numba-cuda LIF kernels on ``[T, N]`` for N in 1e6, 4e6, 16e6 and T in 4, 8, 64
    (``bandwidth``: rows of ``fwd_ms``, ``bwd_ms`` in ms and ``fwd_GBps``, ``bwd_GBps`` in GB/s), median of
    ``reps``; plus the device name."""
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
