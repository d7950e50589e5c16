"""Thread-safety audit: one model (or planner, or buffer pool) used from several Python threads at once
(the kernel launches themselves: tests/test_kernel_launch_threads_audit.py).

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

import threading
from typing import Callable, Dict, List

import pytest
import torch
from torch import nn

import edgesnn
from edgesnn.kernels import dispatch


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
# 1. stateless nodes shared by threads


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
# 2. a model rewritten by optimize_memory, called from two threads


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
# 3. the buffer pool and the planner


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
