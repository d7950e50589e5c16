"""Whole-network memory optimisation: packed inputs, chunked recomputation, exact BatchNorm.

The optimized model must compute what the plain model computes. Exactness is checked in float64
(no spike sits within rounding of its threshold there, so outputs and gradients must agree to
float64 rounding); float32 runs check the same code path with a float32 tolerance.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

import edgesnn
from edgesnn.memopt import MemoryOptimizedSequential, uninstall
from edgesnn.memopt.batchnorm import reproduces_torch
from edgesnn.memopt.packing import pack_bits, save_input, unpack_bits
from edgesnn.models import build_model
from edgesnn.nn import LIF, RevLIF, SeqToANN
from edgesnn.planner.network import PlanningError
from test_memopt_bn_exact import documented_exact_platform


def _net(node, pool="max", channels=(6, 8, 10), bias=False):
    Pool = nn.MaxPool2d if pool == "max" else nn.AvgPool2d
    c0, c1, c2 = channels
    return nn.Sequential(
        SeqToANN(nn.Conv2d(2, c0, 3, padding=1, bias=bias)), SeqToANN(nn.BatchNorm2d(c0)), node(), SeqToANN(Pool(2)),
        SeqToANN(nn.Conv2d(c0, c1, 3, padding=1)), SeqToANN(nn.BatchNorm2d(c1)), node(), SeqToANN(Pool(2)),
        SeqToANN(nn.Conv2d(c1, c2, 3, padding=1)), SeqToANN(nn.BatchNorm2d(c2)), node(),
        SeqToANN(nn.Flatten()), SeqToANN(nn.Linear(c2 * 2 * 2, 5)),
    )


def _step(model, x, y):
    out = model(x).mean(0)
    loss = nn.functional.cross_entropy(out, y)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()], [b.clone() for b in model.buffers()]


def _compare(node, T, K, static, pool="max", dtype=torch.float64, backend=None, seed=0):
    torch.manual_seed(seed)
    kw = {} if backend is None else {"backend": backend}
    base = _net(lambda: node(**kw), pool).to(dtype)
    with torch.no_grad():  # enough activity that spikes and resets matter
        for m in base.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(3)
    opt = copy.deepcopy(base)
    x0 = torch.rand(3, 2, 9, 9, dtype=dtype) * 2  # odd spatial size: pooling floors
    x = x0.unsqueeze(0).expand(T, *x0.shape) if static else torch.rand(T, 3, 2, 9, 9, dtype=dtype) * 2
    y = torch.randint(0, 5, (3,))
    ref = _step(base, x, y)
    plan = edgesnn.optimize_memory(opt, x, chunk=K)
    got = _step(opt, x, y)
    return ref, got, plan, opt


def _optimized_pair(seed: int, chunk: int):
    """Two copies of one small LIF net, each rewritten by ``optimize_memory(chunk=chunk)``, and a
    batch ``x [7, 3, 2, 9, 9]``, ``y``: for comparing two ways of running the same chunks."""
    torch.manual_seed(seed)
    base = _net(LIF)
    x = torch.rand(7, 3, 2, 9, 9) * 2
    y = torch.randint(0, 5, (3,))
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    edgesnn.optimize_memory(a, x, chunk=chunk)
    edgesnn.optimize_memory(b, x, chunk=chunk)
    return a, b, x, y


def _assert_bit_identical(ref, got, buffers: bool = False):
    """Loss and parameter gradients (and, with ``buffers``, BatchNorm buffers) equal bit for bit."""
    assert torch.equal(ref[0], got[0])
    assert all(torch.equal(a, b) for a, b in zip(ref[1], got[1]))
    if buffers:
        assert all(torch.equal(a, b) for a, b in zip(ref[2], got[2]))


def _assert_close(ref, got, rtol):
    (l0, g0, b0), (l1, g1, b1) = ref, got
    assert torch.allclose(l0, l1, rtol=rtol, atol=0)
    scale = max(g.abs().max().item() for g in g0)
    for a, b in zip(g0, g1):
        # per tensor, relative to its own size (floor: conv biases before BatchNorm have gradient ~0)
        assert (a - b).abs().max().item() <= rtol * max(a.abs().max().item(), 1e-3 * scale)
    for a, b in zip(b0, b1):
        assert torch.allclose(a.double(), b.double(), rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("node", [LIF, RevLIF])
@pytest.mark.parametrize("T,K,static", [(7, 3, False), (7, 2, True), (5, 1, False), (6, 4, True), (6, 6, False)])
def test_chunked_equals_plain_float64(node, T, K, static):
    ref, got, _, _ = _compare(node, T, K, static)
    _assert_close(ref, got, 1e-10)


@pytest.mark.parametrize("node", [LIF, RevLIF])
@pytest.mark.parametrize("T,K", [(4, 2), (3, 3)])
def test_input_repeated_over_time_gets_its_gradient_once(node, T, K):
    """A trainable stem before the expand over T (and the input itself) get the plain model's
    gradient: the static block hands back a gradient that the caller's expand sums over T."""
    torch.manual_seed(3)
    stem = nn.Conv2d(2, 2, 1).double()
    base = _net(node).double()
    opt = copy.deepcopy(base)
    x0 = torch.rand(3, 2, 9, 9, dtype=torch.float64) * 2
    edgesnn.optimize_memory(opt, stem(x0).detach().unsqueeze(0).expand(T, *x0.shape), chunk=K)
    grads = []
    for model in (base, opt):
        stem.zero_grad()
        x = x0.clone().requires_grad_()
        z = stem(x)
        model(z.unsqueeze(0).expand(T, *z.shape)).square().sum().backward()
        grads.append((x.grad, stem.weight.grad.clone(), stem.bias.grad.clone()))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), (a - b).abs().max()


@pytest.mark.parametrize("node", [LIF, RevLIF])
def test_average_pooling_levels_codec(node):
    ref, got, _, opt = _compare(node, 7, 3, False, pool="avg")
    _assert_close(ref, got, 1e-10)
    blocks = opt._memopt_blocks
    want = "levels:4" if node is LIF else "dense"  # pooled LIF spikes are k/4; RevLIF outputs are real
    assert blocks[1].in_codec == want and blocks[0].out_codec == want


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_float32_kernels(backend):
    ref, got, _, _ = _compare(LIF, 6, 4, True, dtype=torch.float32, backend=backend, seed=3)
    _assert_close(ref, got, 1e-4)


def test_one_chunk_is_bit_identical_float32():
    ref, got, _, _ = _compare(LIF, 5, 5, False, dtype=torch.float32, seed=1)
    assert torch.equal(ref[0], got[0])
    assert all(torch.equal(a, b) for a, b in zip(ref[1], got[1]))


@pytest.mark.parametrize("node", [LIF, RevLIF])
@pytest.mark.parametrize("chunks", [(3, 5, 2), (5, 2, 11), (11, 4, 3)])
def test_blocks_with_different_chunks_hand_gradients_over_exactly(node, chunks):
    """Each block reads its output gradient from the chunks the next block wrote, whatever the
    two blocks' chunk sizes (a read may span several written chunks, or part of one)."""
    torch.manual_seed(5)
    base = _net(node).double()
    opt = copy.deepcopy(base)
    x = torch.rand(11, 3, 2, 9, 9, dtype=torch.float64) * 2
    y = torch.randint(0, 5, (3,))
    ref = _step(base, x, y)
    edgesnn.optimize_memory(opt, x, chunk=4)
    for block, k in zip(opt._memopt_blocks, chunks):
        block.chunk = k
    _assert_close(ref, _step(opt, x, y), 1e-10)


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_chunks_kept_between_the_statistics_passes_change_nothing(keep):
    """A block may keep its first chunks' layer outputs from the statistics passes for the output
    pass instead of recomputing them: same outputs and gradients, bit for bit."""
    ref_model, opt, x, y = _optimized_pair(6, chunk=3)
    for block in ref_model._memopt_blocks:
        block.keep = 0
    for block in opt._memopt_blocks:
        block.keep = keep
    _assert_bit_identical(_step(ref_model, x, y), _step(opt, x, y))


# Not skipped where the docs say the exact statistics reproduce PyTorch (a fixed platform list: the
# probe runs the code under test, so a regression there must fail, not skip); elsewhere the probe decides.
@pytest.mark.skipif(not (documented_exact_platform() or reproduces_torch(torch.float32)),
                    reason="this PyTorch build's BatchNorm rounds differently")
def test_float32_forward_is_bit_identical_to_the_plain_model():
    """Chunked BatchNorm reproduces PyTorch's float32 statistics and output rounding, so the
    optimized forward (loss, BatchNorm running statistics) equals the plain model's bit for bit
    and no spike flips; gradients differ only by the backward's summation order."""
    for seed in range(3):
        ref, got, _, _ = _compare(LIF, 9, 4, False, dtype=torch.float32, seed=seed)
        assert torch.equal(ref[0], got[0])
        assert all(torch.equal(a, b) for a, b in zip(ref[2], got[2]))
        scale = max(g.abs().max().item() for g in ref[1])
        for a, b in zip(ref[1], got[1]):  # floor: conv biases before BatchNorm have gradient ~0 (noise)
            assert (a - b).abs().max().item() <= 1e-5 * max(a.abs().max().item(), 1e-2 * scale)


@pytest.mark.parametrize("node", [LIF, RevLIF])
def test_evaluation_streams_time_chunks_with_the_same_outputs(node, monkeypatch):
    """Under no_grad with running-statistics BatchNorm the optimized container runs a few steps at
    a time through every block (states carried), with the plain model's outputs; BatchNorm in
    training mode needs all T and is not streamed."""
    from edgesnn.memopt import sequential

    torch.manual_seed(7)
    base = _net(node).double()
    x = torch.rand(11, 3, 2, 9, 9, dtype=torch.float64) * 2
    opt = copy.deepcopy(base)
    edgesnn.optimize_memory(opt, x)
    _step(base, x, torch.randint(0, 5, (3,)))  # running statistics away from their initial values
    _step(opt, x, torch.randint(0, 5, (3,)))
    monkeypatch.setattr(sequential, "EVAL_CHUNK_STEPS", 3)
    calls = []
    real = MemoryOptimizedSequential._forward_streamed
    monkeypatch.setattr(MemoryOptimizedSequential, "_forward_streamed",
                        lambda self, xx: calls.append(xx.shape[0]) or real(self, xx))
    base.eval()
    opt.eval()
    with torch.no_grad():
        assert torch.allclose(base(x), opt(x), rtol=1e-12, atol=1e-12)
    assert calls == [11]
    base.train()
    opt.train()
    with torch.no_grad():
        assert torch.allclose(base(x), opt(x), rtol=1e-12, atol=1e-12)
    assert calls == [11]  # training-mode BatchNorm: not streamed


def test_grad_chunks_read_across_written_chunks_and_free():
    from edgesnn.memopt.gradchunks import GradChunks

    g = torch.arange(10 * 2, dtype=torch.float64).view(10, 2)
    store = GradChunks((10, 2))
    for t0, t1 in [(6, 10), (2, 6), (0, 2)]:  # written last to first, as a backward does
        store.put(t0, t1, g[t0:t1].clone())
    assert torch.equal(store.get(1, 7), g[1:7])
    assert torch.equal(store.get(3, 5), g[3:5])
    store.release_from(5)  # [6, 10) is past; [2, 6) still holds steps 2..4
    assert sorted(store.parts) == [0, 2]
    assert torch.equal(store.get(0, 5), g[0:5])
    part = GradChunks((4, 2))
    part.put(2, 4, torch.ones(2, 2, dtype=torch.float64))
    assert torch.equal(part.get(0, 4)[:2], torch.zeros(2, 2, dtype=torch.float64))  # never written: zero
    part.add_dense(torch.zeros((), dtype=torch.float64).expand(4, 2))  # an expanded zero changes nothing
    assert sorted(part.parts) == [2]
    part.add_dense(torch.full((4, 2), 2.0, dtype=torch.float64))
    assert torch.equal(part.get(0, 4), torch.tensor([[2.0, 2], [2, 2], [3, 3], [3, 3]], dtype=torch.float64))
    with pytest.raises(RuntimeError, match="does not fit"):
        part.put(0, 2, torch.ones(3, 2, dtype=torch.float64))


def test_packing_round_trip_odd_sizes():
    for shape in [(3, 5, 7), (4, 1, 1), (2, 3, 8), (5, 2, 3, 3)]:
        x = (torch.rand(shape) > 0.5).float()
        p = pack_bits(x)
        assert p.dtype == torch.uint8 and p.shape[1] == (x[0].numel() + 7) // 8
        assert torch.equal(unpack_bits(p, shape[1:], torch.float32), x)
        s = save_input(x, "bits")
        assert torch.equal(s.chunk(1, shape[0]), x[1:])
    pooled = nn.functional.avg_pool2d((torch.rand(6, 3, 4, 4) > 0.5).float(), 2).unsqueeze(0).expand(1, 6, 3, 2, 2)
    s = save_input(pooled.contiguous(), "levels:4")
    assert s.data.dtype == torch.uint8 and torch.equal(s.chunk(0, 1), pooled)


def test_cpu_bit_kernels_and_torch_packing_agree_byte_for_byte(monkeypatch):
    """The Numba CPU kernels and the torch form (other devices and dtypes) share one layout, so a
    tensor packed by either unpacks with the other."""
    from edgesnn.memopt import packing

    for shape in [(3, 5, 7), (2, 3, 8), (4, 2, 3, 3), (2, 3, 11, 1001)]:  # the last: rows span 2 parallel tasks
        x = (torch.rand(shape) > 0.5).float()
        fast = pack_bits(x)
        monkeypatch.setattr(packing, "_cpu_kernels", lambda device, dtype: False)
        slow = pack_bits(x)
        assert torch.equal(fast, slow)
        assert torch.equal(unpack_bits(fast, shape[1:], torch.float32), x)
        monkeypatch.undo()
        assert torch.equal(unpack_bits(slow, shape[1:], torch.float64), x.double())


def test_repeated_input_is_stored_once():
    x0 = torch.rand(3, 2, 9, 9)
    s = save_input(x0.unsqueeze(0).expand(16, *x0.shape), "dense")
    assert s.codec == "once" and s.nbytes == x0.numel() * 4
    assert torch.equal(s.chunk(4, 9), x0.unsqueeze(0).expand(5, *x0.shape))


def test_saved_bytes_do_not_grow_with_the_model_input_over_T():
    """What autograd keeps for an optimized block is packed bits + chunk states, not float activations."""
    from edgesnn.memory import SavedTensorCounter

    sizes = {}
    for T in (8, 32):
        torch.manual_seed(0)
        model = _net(LIF)
        x0 = torch.rand(4, 2, 9, 9)
        x = x0.unsqueeze(0).expand(T, *x0.shape)
        edgesnn.optimize_memory(model, x, chunk=8)
        with SavedTensorCounter() as c:
            out = model(x)
        sizes[T] = c.bytes(exclude=[out])
        plain = _net(LIF)
        with SavedTensorCounter() as c2:
            out2 = plain(x)
        assert sizes[T] * 4 < c2.bytes(exclude=[out2])
    # only the head's input (T x 40 floats) and the packed bits grow with T
    assert sizes[32] < 4 * sizes[8]


def test_state_dict_unchanged_and_uninstall():
    model = _net(LIF)
    keys = list(model.state_dict())
    x = torch.rand(4, 3, 2, 9, 9)
    plan = edgesnn.optimize_memory(model, x)
    assert isinstance(model, MemoryOptimizedSequential) and list(model.state_dict()) == keys
    assert len(plan.blocks) == 3 and "predicted peak" in str(plan)
    model.eval()
    with torch.no_grad():
        y1 = model(x)
    uninstall(model)
    assert type(model) is nn.Sequential
    with torch.no_grad():
        assert torch.equal(model(x), y1)


def test_edgesnn_classifier_and_budget():
    model = build_model("convnet", (2, 16, 16), 4, 16, neuron="lif", channels=(8, 8))
    x = torch.rand(16, 2, 16, 16)
    generous = edgesnn.optimize_memory(copy.deepcopy(model), x, budget=2**30)
    assert all(b.chunk == 16 for b in generous.blocks)  # everything fits: one chunk per block (fastest)
    budget = generous.peak_bytes  # the planner keeps 20% headroom under a budget: it must chunk
    tight = edgesnn.optimize_memory(model, x, budget=budget)
    assert tight.peak_bytes <= 0.8 * budget and any(b.chunk < 16 for b in tight.blocks)
    out = model(x)
    out.sum().backward()
    with pytest.raises(PlanningError, match="budget"):
        edgesnn.optimize_memory(build_model("convnet", (2, 8, 8), 4, 6, channels=(4, 6)), torch.rand(5, 2, 8, 8),
                                budget=1000)


def test_spikingjelly_layers_are_rewritten():
    sj = pytest.importorskip("spikingjelly.activation_based.layer")
    torch.manual_seed(0)
    base = nn.Sequential(
        sj.Conv2d(2, 4, 3, padding=1, bias=False, step_mode="m"), sj.BatchNorm2d(4, step_mode="m"), LIF(),
        sj.MaxPool2d(2, step_mode="m"),
        sj.Conv2d(4, 6, 3, padding=1, bias=False, step_mode="m"), sj.BatchNorm2d(6, step_mode="m"), LIF(),
        sj.Flatten(step_mode="m"), sj.Linear(6 * 4 * 4, 3, step_mode="m"),
    ).double()
    opt = copy.deepcopy(base)
    x0 = torch.rand(2, 2, 8, 8, dtype=torch.float64) * 3
    x = x0.unsqueeze(0).expand(5, *x0.shape)
    y = torch.tensor([0, 2])
    ref = _step(base, x, y)
    plan = edgesnn.optimize_memory(opt, x, chunk=2)
    assert len(plan.blocks) == 2
    _assert_close(ref, _step(opt, x, y), 1e-10)


def test_bad_arguments():
    with pytest.raises(ValueError, match="no nn.Sequential"):
        edgesnn.optimize_memory(nn.Sequential(nn.Linear(2, 2)), torch.rand(3, 2))
    with pytest.raises(ValueError, match="chunk"):
        edgesnn.optimize_memory(_net(LIF), torch.rand(4, 3, 2, 9, 9), chunk=0)
    with pytest.raises(ValueError, match="budget"):
        edgesnn.optimize_memory(_net(LIF), torch.rand(4, 3, 2, 9, 9), budget=-5)


def test_stateful_nodes_are_left_alone():
    model = nn.Sequential(SeqToANN(nn.Linear(4, 6)), LIF(stateful=True), SeqToANN(nn.Linear(6, 6)), LIF())
    plan = edgesnn.optimize_memory(model, torch.rand(3, 2, 4))
    assert len(plan.blocks) == 1 and model._memopt_blocks[0].start == 2


def test_empty_batch_runs_forward_and_backward():
    torch.manual_seed(0)
    opt = _net(LIF)
    edgesnn.optimize_memory(opt, torch.rand(3, 2, 2, 9, 9), chunk=2)
    x = torch.rand(3, 0, 2, 9, 9)
    out = opt(x)
    assert out.shape == (3, 0, 5)
    out.sum().backward()
    assert all(p.grad is not None and not p.grad.any() for p in opt.parameters())


def test_planner_counts_the_full_size_output_of_an_unfused_pool():
    """A LIF before a 2x2 max-pool runs fused (no full-size spikes); before an average pool the
    node's full-size output exists beside the pooled one (its backward runs the LIF kernel on a
    gradient made without the spikes); a RevLIF and its pool run under autograd, with more."""
    from edgesnn.kernels.dispatch import numba_available
    from edgesnn.planner.network_model import block_shape

    if not numba_available():
        pytest.skip("the fused kernel needs numba")
    shapes = {}
    for node, pool in ((LIF, "max"), (LIF, "avg"), (RevLIF, "avg")):
        torch.manual_seed(0)
        net = _net(node, pool)
        plan = edgesnn.optimize_memory(net, torch.rand(4, 3, 2, 9, 9), chunk=2)
        blocks = next(m for m in net.modules() if isinstance(m, MemoryOptimizedSequential))._memopt_blocks
        bs = [block_shape(b, i) for i, b in enumerate(blocks)]
        shapes[node.__name__, pool] = ([s.unfused_pool for s in bs], [s.pool_autograd for s in bs],
                                       [s.node_autograd for s in bs], plan.peak_bytes)
    assert shapes["LIF", "max"][:3] == ([False] * 3, [False] * 3, [False] * 3)
    assert shapes["LIF", "avg"][:3] == ([True, True, False], [False] * 3, [False] * 3)
    assert shapes["RevLIF", "avg"][:3] == ([True, True, False], [True, True, False], [True] * 3)
    assert shapes["LIF", "avg"][3] > shapes["LIF", "max"][3]
    assert shapes["RevLIF", "avg"][3] > shapes["LIF", "avg"][3]  # a node under autograd holds more


def test_budget_and_repeat_calls_are_checked():
    """A forced chunk with a budget, a second call on a rewritten model and budgets that are not a
    positive whole number of bytes are one-line errors; a budget too small names the smallest one
    the planner accepts (its least peak plus the 20% headroom), and that one is accepted."""
    x = torch.rand(5, 2, 8, 8)

    def model():
        return build_model("convnet", (2, 8, 8), 4, 6, channels=(4, 6))

    with pytest.raises(ValueError, match="budget, chunk: give one"):
        edgesnn.optimize_memory(model(), x, budget="1KiB", chunk=1)
    for bad in (True, float("nan"), float("inf"), 1.5, 0, -3, "lots"):
        with pytest.raises(ValueError, match="^budget: expected"):
            edgesnn.optimize_memory(model(), x, budget=bad)
    m = model()
    edgesnn.optimize_memory(m, x)
    with pytest.raises(ValueError, match="already rewritten by optimize_memory"):
        edgesnn.optimize_memory(m, x)
    with pytest.raises(PlanningError, match=r"smallest budget accepted is [0-9.]+ [KM]iB \((\d+) bytes\)") as err:
        edgesnn.optimize_memory(model(), x, budget=1000)
    smallest = int(re.search(r"smallest budget accepted is [0-9.]+ [KM]iB \((\d+) bytes\)", str(err.value)).group(1))
    edgesnn.optimize_memory(model(), x, budget=smallest)  # the figure it names is accepted
