"""Thread-safety audit: one model (or planner, or buffer pool) used from several Python threads at once.

* Numba's ``workqueue`` threading layer (the README's remedy for forked DataLoader workers) ends the
  process when two threads launch parallel kernels at once; every ``parallel=True`` kernel now goes
  through :func:`edgesnn.kernels.launch.launch`, which serializes launches on that layer only.
* Stateless nodes (LIF, RevLIF exact/float, ParametricLIF; numba, torch and reference backends)
  shared by threads give each thread the single-threaded outputs and gradients.
* A model rewritten by ``edgesnn.optimize_memory`` handed one block's packed output to the next
  through the (shared) block, and a block's backward puts stand-ins for its parameters on the
  shared modules: concurrent calls mixed inputs and gradients. Both fixed (a per-thread hand-over,
  and a process lock around recorded block forwards and backwards).
* The planner's shape probe switched modules to eval mode and back: two threads planning one
  model left it in eval mode (probes now take turns). The kernels' buffer pool is checked too.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Callable, Dict, List

import pytest
import torch
from torch import nn

import edgesnn
from edgesnn.kernels import dispatch
from edgesnn.nn import LIF, RevLIF

ROOT = Path(__file__).resolve().parents[1]
needs_numba = pytest.mark.skipif(not dispatch.numba_available(), reason="needs Numba")


def _callers_thread_counts() -> Callable[[], None]:
    """A function that gives the thread calling it this thread's PyTorch and Numba thread counts."""
    import numba

    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()

    def take() -> None:
        torch.set_num_threads(torch_threads)
        numba.set_num_threads(numba_threads)

    return take


def _in_threads(fn: Callable[[int], object], n: int) -> Dict[int, object]:
    """``{i: fn(i)}`` from ``n`` threads started together; an exception in a thread fails the test.

    Each thread first takes the calling thread's PyTorch and Numba thread counts (both are per
    thread under OpenMP: a new thread starts with one per core): a convolution's weight gradient on
    another thread count differs in the last bits, which the bit-for-bit comparisons would blame on
    the model (an earlier test in the same worker may have set one thread)."""
    out: Dict[int, object] = {}
    errors: List[str] = []
    gate = threading.Barrier(n)
    take_counts = _callers_thread_counts()

    def run(i: int) -> None:
        try:
            take_counts()
            gate.wait(timeout=60)
            out[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(f"thread {i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(out) == n, "a thread did not finish"
    return out


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y)) for x, y in zip(a, b))


# ---------------------------------------------------------------------------------------------
# 1. the parallel kernels: one launcher, serialized on the workqueue layer


def kernel_workload(seed: int = 0) -> List[torch.Tensor]:
    """Every ``parallel=True`` CPU kernel once, through the public paths (shared nodes): LIF and
    RevLIF forward/backward, LIF + 2x2 max-pool forward/backward, the exact BatchNorm statistics and
    gradient kernels, and the 1-bit packing; returns every result."""
    from edgesnn.kernels.numba_lif_pool import lif_pool2_backward, lif_pool2_forward
    from edgesnn.memopt.batchnorm import ExactStats, grad_sums, input_grad_
    from edgesnn.memopt.packing import pack_bits, unpack_bits

    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(8, 4, 4096, generator=g) * 2).requires_grad_()
    res: List[torch.Tensor] = []
    for node in _SHARED_NODES:
        y = node(x)
        (gx,) = torch.autograd.grad(y.square().sum(), x)
        res += [y.detach(), gx]
    z = torch.rand(6, 8, 16, 16, generator=g) * 2
    pooled, vT = lif_pool2_forward(z, torch.zeros(8, 16, 16), _SHARED_NODES[0].params)
    res += [pooled, vT, *lif_pool2_backward(z, torch.zeros(8, 16, 16), torch.ones_like(pooled), torch.zeros_like(vT),
                                            _SHARED_NODES[0].params)]
    a = torch.randn(4, 16, 256, generator=g)
    st = ExactStats()
    st.add_sum(a)
    st.add_var(a)
    c = torch.rand(16, generator=g)
    res += [st.mean(), st.var_sum(), *grad_sums(a, a.clone()), input_grad_(a.clone(), a.clone(), c, c, c)]
    spikes = (torch.rand(8, 4096, generator=g) > 0.5).float()
    packed = pack_bits(spikes)
    return res + [packed, unpack_bits(packed, (4096,), torch.float32)]


_SHARED_NODES = [LIF(backend="numba"), RevLIF(backend="numba")]

WORKQUEUE_SCRIPT = textwrap.dedent(
    """
    import json, sys, threading, torch
    sys.path.insert(0, sys.argv[1])
    import numba
    from test_thread_safety_audit import kernel_workload
    ref = kernel_workload()
    out, errors = {}, []
    def run(i):
        try:
            for _ in range(6):
                out[i] = kernel_workload()
        except BaseException as exc:
            errors.append(repr(exc))
    ts = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    [t.start() for t in ts]; [t.join() for t in ts]
    same = len(out) == 4 and all(all(torch.equal(a, b) for a, b in zip(r, ref)) for r in out.values())
    from edgesnn.kernels import launch
    print(json.dumps({"layer": numba.threading_layer(), "serialized": launch.serialized(), "same": same,
                      "errors": errors}))
    """
)


@needs_numba
def test_workqueue_layer_concurrent_kernels_match_single_thread():
    """4 threads run every parallel kernel (shared LIF / RevLIF nodes, BatchNorm, packing) on the
    workqueue layer: exit 0 and the single-threaded results (the process aborted before)."""
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_NUM_THREADS", "PYTHONPATH")}
    env["NUMBA_THREADING_LAYER"] = "workqueue"
    r = subprocess.run([sys.executable, "-c", WORKQUEUE_SCRIPT, str(ROOT / "tests")], capture_output=True, text=True,
                       timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-1500:]}"
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == {"layer": "workqueue", "serialized": True, "same": True, "errors": []}, got


def _parallel_kernels() -> Dict[str, tuple]:
    """``"module.name" -> (module, name)`` of every ``parallel=True`` Numba kernel of edgesnn."""
    import importlib

    from edgesnn.kernels.cache_key import CACHED_KERNEL_MODULES

    found = {}
    for mod_name in CACHED_KERNEL_MODULES:
        mod = importlib.import_module(f"edgesnn.kernels.{mod_name}")
        for name, obj in vars(mod).items():
            if getattr(obj, "targetoptions", {}).get("parallel") and getattr(obj, "py_func", None) is not None \
                    and obj.py_func.__module__ == mod.__name__:
                found[f"{mod_name}.{name}"] = (mod, name)
    return found


@needs_numba
def test_every_parallel_kernel_is_launched_through_the_launcher(monkeypatch):
    """With launches serialized, each of the parallel kernels is called by the launcher's locked
    call, none directly (a direct call would bypass the lock); and no edgesnn source calls one by name."""
    from edgesnn.kernels import launch

    kernels = _parallel_kernels()
    assert len(kernels) >= 12, sorted(kernels)
    locked_call = launch._Serialized.__call__.__code__
    called, direct = set(), []

    def tripwire(key: str, real):
        def kernel(*args):
            called.add(key)
            if sys._getframe(1).f_code is not locked_call:
                direct.append(f"{key} called from {sys._getframe(1).f_code.co_name}")
            return real(*args)
        return kernel

    for key, (mod, name) in kernels.items():
        monkeypatch.setattr(mod, name, tripwire(key, getattr(mod, name)))
    monkeypatch.setattr(launch, "_SERIAL", True)
    kernel_workload()
    assert not direct, direct
    assert called == set(kernels), sorted(set(kernels) - called)
    names = {name for _, name in kernels.values()}
    calls = []
    for path in sorted((ROOT / "edgesnn").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):  # kernel(...) or numba_xxx.kernel(...); launch(kernel)(...) is fine
                f = node.func
                name = f.id if isinstance(f, ast.Name) else None
                if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id.startswith("numba_"):
                    name = f.attr
                if name in names:
                    calls.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}(...)")
    assert not calls, f"parallel kernels called without launch(kernel)(...): {calls}"


@needs_numba
def test_launcher_decides_after_the_layer_started_and_calls_directly_off_workqueue():
    import numba

    from edgesnn.kernels import launch

    kernel_workload()  # kernels ran: Numba's layer started
    layer = numba.threading_layer()
    assert launch.serialized() == (layer == "workqueue")
    if layer != "workqueue":
        k = _parallel_kernels()["numba_cpu._lif_fwd"]
        assert launch.launch(getattr(*k)) is getattr(*k)  # the direct path: the kernel itself


def test_forked_child_gets_unlocked_launch_and_block_locks():
    """A fork while another thread holds the launch lock (or the memopt block lock) must not leave
    the child's lock held: the child's first launch would wait forever."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    from edgesnn.kernels import launch
    from edgesnn.memopt import handoff

    held, release = threading.Event(), threading.Event()

    def holder():
        with launch._LOCK, handoff.run_lock():
            held.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(30)
    try:
        pid = os.fork()
        if pid == 0:  # child: both locks free
            ok = launch._LOCK.acquire(timeout=2) and handoff.run_lock().acquire(timeout=2)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        t.join()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


# ---------------------------------------------------------------------------------------------
# 2. stateless nodes shared by threads


def _node_cases():
    from edgesnn.nn import LIF, ParametricLIF, RevLIF

    cases = [(f"LIF-{b}", lambda b=b: LIF(backend=b)) for b in ("numba", "torch", "reference")]
    cases += [(f"RevLIF-exact-{b}", lambda b=b: RevLIF(backend=b)) for b in ("numba", "torch", "reference")]
    cases += [(f"RevLIF-float-{b}", lambda b=b: RevLIF(mode="float", alpha=0.3, beta=0.9, backend=b))
              for b in ("numba", "torch")]
    cases += [("ParametricLIF", lambda: ParametricLIF(learn_threshold=True))]
    if not dispatch.numba_available():
        cases = [c for c in cases if "numba" not in c[0]]
    return cases


@pytest.mark.parametrize("name, make", _node_cases(), ids=[c[0] for c in _node_cases()])
def test_shared_stateless_node_gives_each_thread_its_single_threaded_results(name, make):
    node = make()
    params = [p for p in node.parameters() if p.requires_grad]
    xs = [torch.rand(6, 3, 64, generator=torch.Generator().manual_seed(i)) * 2 for i in range(4)]

    def step(i: int):
        x = xs[i].clone().requires_grad_()
        y = node(x)
        return (y.detach(), *torch.autograd.grad(y.square().sum(), [x] + params))

    ref = [step(i) for i in range(4)]
    got = _in_threads(lambda i: [step(i) for _ in range(3)], 4)
    for i in range(4):
        assert all(_same(r, ref[i]) for r in got[i]), f"{name}: thread {i} differs from its single-threaded run"


def test_parametric_lif_backward_from_threads_accumulates_every_threads_gradient():
    """``.backward()`` from several threads into one node's parameters: ``.grad`` is the sum
    (autograd accumulates under its own lock; the order of the float sum may differ)."""
    from edgesnn.nn import ParametricLIF

    node = ParametricLIF(learn_threshold=True)
    xs = [torch.rand(6, 3, 32, generator=torch.Generator().manual_seed(i)) * 2 for i in range(4)]
    want = [torch.autograd.grad(node(x).sum(), list(node.parameters())) for x in xs]
    _in_threads(lambda i: node(xs[i]).sum().backward(), 4)
    for p, parts in zip(node.parameters(), zip(*want)):
        torch.testing.assert_close(p.grad, sum(parts), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# 3. a model rewritten by optimize_memory, called from two threads


def _optimized_model():
    """A two-block LIF conv net (block 1 hands its 1-bit output to block 2), optimized in 2-step chunks."""
    from edgesnn.nn import LIF, SeqToANN

    torch.manual_seed(0)
    model = nn.Sequential(
        SeqToANN(nn.Conv2d(2, 6, 3, padding=1, bias=False)), SeqToANN(nn.BatchNorm2d(6)), LIF(), SeqToANN(nn.MaxPool2d(2)),
        SeqToANN(nn.Conv2d(6, 8, 3, padding=1)), SeqToANN(nn.BatchNorm2d(8)), LIF(),
        SeqToANN(nn.Flatten()), SeqToANN(nn.Linear(8 * 4 * 4, 5)))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(3)  # enough spikes
    xs = [torch.rand(8, 3, 2, 8, 8, generator=torch.Generator().manual_seed(i)) * 2 for i in range(4)]
    edgesnn.optimize_memory(model, xs[0], chunk=2)
    blocks = model._memopt_blocks
    assert len(blocks) == 2 and blocks[0].next_block is blocks[1], "block 1 should hand its output to block 2"
    params = list(model.parameters())

    def step(i: int):
        x = xs[i].clone().requires_grad_()
        out = model(x)
        return (out.detach(), *torch.autograd.grad(out.square().sum(), [x] + params))

    return model, step


def test_optimized_model_threads_do_not_read_each_others_block_handoff(monkeypatch):
    """Both threads' first blocks run before either second block (forced): each second block must
    still read its own thread's packed input (it read the other's, or none, through the block)."""
    from edgesnn.memopt import sequential

    model, step = _optimized_model()
    ref = [step(i) for i in range(2)]
    real, both_handed_over = sequential.run_block, threading.Barrier(2, timeout=30)

    def paced(block, x, route):
        if block.start > 0:
            both_handed_over.wait()
        return real(block, x, route)

    monkeypatch.setattr(sequential, "run_block", paced)
    got = _in_threads(step, 2)
    for i in range(2):
        assert _same(got[i], ref[i]), f"thread {i}: output or gradients differ from its single-threaded step"


def test_optimized_model_forward_during_another_threads_backward_keeps_its_gradients(monkeypatch):
    """Thread B's forward starts while thread A's block backward holds stand-ins for the block's
    parameters: B must get its own gradients (its graph used the stand-ins: wrong or missing gradients)."""
    from edgesnn.memopt import block as block_mod

    model, step = _optimized_model()
    ref = [step(i) for i in range(2)]
    real, a_in_backward, b_done = block_mod.collected, threading.Event(), threading.Event()

    def collected(subs):
        if threading.current_thread().name == "A" and not a_in_backward.is_set():
            a_in_backward.set()
            b_done.wait(1.0)  # B runs now, unless it waits for this backward (the fix): then 1 s
        return real(subs)

    monkeypatch.setattr(block_mod, "collected", collected)
    got, errors = {}, []

    take_counts = _callers_thread_counts()

    def run(i: int) -> None:
        try:
            take_counts()
            if i == 1:
                a_in_backward.wait(30)
            got[i] = step(i)
        except BaseException as exc:  # noqa: BLE001
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            if i == 1:
                b_done.set()

    threads = [threading.Thread(target=run, args=(i,), name="AB"[i]) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert a_in_backward.is_set() and not errors, errors
    assert _same(got[0], ref[0]) and _same(got[1], ref[1]), "a thread's output or gradients changed"


def test_optimized_model_trained_from_three_threads_matches_single_threaded_steps():
    model, step = _optimized_model()
    ref = [step(i) for i in range(3)]
    got = _in_threads(lambda i: [step(i) for _ in range(2)], 3)
    for i in range(3):
        assert all(_same(r, ref[i]) for r in got[i]), f"thread {i} differs from its single-threaded step"


# ---------------------------------------------------------------------------------------------
# 4. the buffer pool and the planner


def test_buffer_pool_never_hands_one_storage_to_two_live_tensors():
    from edgesnn.kernels import buffers

    live: Dict[int, int] = {}  # data pointer -> thread holding it
    lock, clashes = threading.Lock(), []

    def use(i: int) -> None:
        for k in range(150):
            t = buffers.empty((256 + 256 * (k % 2), 1024))  # 1 or 2 MiB: pooled
            with lock:
                owner = live.setdefault(t.data_ptr(), i)
                if owner != i:
                    clashes.append((i, owner))
            t.fill_(float(i))
            threading.Event().wait(0.0005)
            if not bool((t == float(i)).all()):
                clashes.append((i, "overwritten"))
            with lock:
                live.pop(t.data_ptr(), None)
            del t

    _in_threads(use, 4)
    assert not clashes, clashes[:5]
    assert buffers.pool_bytes() <= buffers.pool_limit() + 4 * (2 << 20)


def test_planning_one_model_from_threads_gives_the_single_threaded_plan_and_leaves_its_modes():
    from edgesnn.devices import load_device
    from edgesnn.models import build_model
    from edgesnn.planner import ChainModel, make_plan

    model = build_model("convnet", (2, 16, 16), 10, 4, channels=(8, 8))
    device = load_device("raspberry-pi-4-4gb")
    want = make_plan(model, device, 4, 8).to_dict()

    def plan(i: int):
        for _ in range(6):
            ChainModel(model)
        return make_plan(model, device, 4, 8).to_dict()

    got = _in_threads(plan, 4)
    assert all(p == want for p in got.values())
    left = sorted({type(m).__name__ for m in model.modules() if not m.training})
    assert not left, f"planning from threads left these modules in eval mode: {left}"
