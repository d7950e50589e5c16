"""``optimize_memory`` on a model whose first layers come before any trainable parameter.

A spiking node fed the model input (``model[0]``, or after a max-pool or a flatten) records no
autograd graph when the input needs no gradient: its block runs as plain modules, keeps nothing and
has no backward, and the first block with parameters makes no input gradient. The planner used to
charge the node's block a saved input, checkpoints, a backward phase and input gradients (step peaks
predicted 28-32% above the measured ones, conv net T = 4 and 16, Numba), and its shape trace passed
an input repeated over T (a stride-0 view) through the node, so the next block was planned as
reading a repeated input, where it reads the node's new spikes at every step (23-77% below).
Gradients equal the plain model's, the input's included when it needs one.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import edgesnn
from edgesnn.kernels.dispatch import numba_available
from edgesnn.nn import LIF, RevLIF, SeqToANN
from edgesnn.planner.network_model import block_shape, predict_peak

from _rss_measure import measured_and_predicted, step_peak_script

T, B = 5, 3
PRE = {  # parameter-free layers before the first node, and the sample shape
    "none": (lambda: [], (2, 4, 4)),
    "maxpool": (lambda: [SeqToANN(nn.MaxPool2d(2))], (2, 8, 8)),
}


def _net(pre: str, node: type, backend: str, dtype: torch.dtype) -> nn.Sequential:
    """A node on the input (after ``pre``), then conv/BatchNorm/node/max-pool and conv/BatchNorm/node blocks."""
    torch.manual_seed(1)
    n = lambda: node(backend=backend)  # noqa: E731
    net = nn.Sequential(*PRE[pre][0](), n(), SeqToANN(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)), n(),
                        SeqToANN(nn.MaxPool2d(2)), SeqToANN(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)), n(),
                        SeqToANN(nn.Flatten(), nn.Linear(16, 3)))
    return net.to(dtype)


def _mlp(backend: str, dtype: torch.dtype) -> nn.Sequential:
    """Flatten, then a node on the input, then Linear/node layers."""
    torch.manual_seed(1)
    return nn.Sequential(SeqToANN(nn.Flatten()), LIF(backend=backend), SeqToANN(nn.Linear(32, 16)),
                         LIF(backend=backend), SeqToANN(nn.Linear(16, 3))).to(dtype)


def _input(shape, dtype, repeated: bool, grad: bool):
    """``(leaf, [T, B, ...] input)``: the leaf is what gets the input's gradient (the batch before the
    expand for a repeated input)."""
    torch.manual_seed(0)
    leaf = (torch.rand(B, *shape, dtype=dtype) if repeated else torch.rand(T, B, *shape, dtype=dtype)) * 3
    leaf.requires_grad_(grad)
    return leaf, (leaf.unsqueeze(0).expand(T, *leaf.shape) if repeated else leaf)


def _grads(model: nn.Module, shape, dtype, repeated: bool, grad: bool):
    leaf, x = _input(shape, dtype, repeated, grad)
    w = torch.linspace(-1, 1, 3 * B * T, dtype=dtype).view(T, B, 3)
    loss = (model(x) * w).sum()
    loss.backward()
    return [loss.detach()] + [p.grad for p in model.parameters()] + ([leaf.grad] if grad else [])


# (backend, dtype, rtol, atol, model): float64 on the torch backend; the Numba kernels run float32
F64 = ("torch", torch.float64, 1e-10, 1e-12)
F32 = ("numba", torch.float32, 1e-5, 1e-6)
CASES = [F64 + (m,) for m in ("none-lif", "none-revlif", "maxpool-lif", "flatten-mlp")]
CASES += [F32 + (m,) for m in ("none-lif", "maxpool-lif", "flatten-mlp")] if numba_available() else []


@pytest.mark.parametrize("backend,dtype,rtol,atol,model", CASES)
@pytest.mark.parametrize("repeated", [False, True])
@pytest.mark.parametrize("grad", [False, True])
def test_gradients_equal_the_plain_models(backend, dtype, rtol, atol, model, repeated, grad):
    """Loss, parameter gradients and (when it needs one) the input's gradient, chunked (K = 2) and
    with the planner's chunks."""
    pre, kind = model.split("-")
    make = (lambda: _mlp(backend, dtype)) if kind == "mlp" else (lambda: _net(pre, LIF if kind == "lif" else RevLIF,
                                                                                backend, dtype))
    shape = (2, 4, 4) if kind == "mlp" else PRE[pre][1]
    base = make()
    ref = _grads(base, shape, dtype, repeated, grad)
    for chunk in (2, None):
        opt = copy.deepcopy(make())
        edgesnn.optimize_memory(opt, _input(shape, dtype, repeated, False)[1], chunk=chunk)
        got = _grads(opt, shape, dtype, repeated, grad)
        for a, b in zip(ref, got):
            assert torch.allclose(a, b, rtol=rtol, atol=atol), (chunk, (a - b).abs().max())


def test_the_input_node_runs_plain_and_keeps_nothing():
    """Block 0 (the node on the input) is ``plain``: no saved bytes and no backward phase; block 1
    writes no input gradient. An input that needs a gradient, or a trainable stem before the
    container, makes block 0 recorded again."""
    net = _net("none", LIF, "torch", torch.float64)
    _, x = _input((2, 4, 4), torch.float64, False, False)
    plan = edgesnn.optimize_memory(net, x, chunk=2)
    blocks = net._memopt_blocks
    shapes = [block_shape(b, i) for i, b in enumerate(blocks)]
    assert [b.strategy for b in plan.blocks] == ["plain", "chunked", "chunked"] and plan.blocks[0].saved_bytes == 0
    assert [(s.records, s.input_grad) for s in shapes] == [(False, False), (True, False), (True, True)]
    phases: dict = {}
    predict_peak(shapes, [b.chunk for b in blocks], breakdown=phases)
    assert "backward block0" not in phases and "forward block0" in phases

    _, xg = _input((2, 4, 4), torch.float64, False, True)
    plan = edgesnn.optimize_memory(_net("none", LIF, "torch", torch.float64), xg, chunk=2)
    assert plan.blocks[0].strategy == "chunked"
    stem = nn.Sequential(nn.Conv2d(2, 2, 1).double())
    model = nn.Sequential(SeqToANN(stem), _net("none", LIF, "torch", torch.float64))
    assert edgesnn.optimize_memory(model, x, chunk=2).blocks[0].strategy == "chunked"


@pytest.mark.parametrize("pre", ["none", "maxpool"])
def test_a_node_on_a_repeated_input_feeds_the_next_block_its_spikes(pre):
    """The trace's stand-in for a node emits a dense tensor, as the node does: only the block fed the
    input itself reads it as repeated over T (stride 0), the next block a new input at every step."""
    net = _net(pre, LIF, "torch", torch.float64)
    _, x = _input(PRE[pre][1], torch.float64, True, False)
    edgesnn.optimize_memory(net, x)
    assert [b.trace["in"][1] for b in net._memopt_blocks] == [True, False, False]


#: the node-first conv net of the step test (n: a node)
_CONV_NET = ("nn.Sequential(n(), SeqToANN(nn.Conv2d(4, 16, 3, padding=1), nn.BatchNorm2d(16)), n(), "
             "SeqToANN(nn.MaxPool2d(2)), SeqToANN(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)), n(), "
             "SeqToANN(nn.MaxPool2d(2)), SeqToANN(nn.Flatten(), nn.Linear(16 * 8 * 8, 10)))")


@pytest.mark.skipif(not numba_available(), reason="the step runs the Numba kernels")
@pytest.mark.parametrize("repeated", [False, True])
def test_step_peak_matches_measured_rss(repeated):
    """Peak RSS of a training step of the optimized node-first conv net (T 8, batch 32) above the
    process before it, against the plan's predicted peak: within 15%, the planner tests' tolerance
    (measured -3% both ways; before: +27% for an input new at every step, and -77% for a repeated
    one, whose second block was planned as reading a repeated input)."""
    measured, predicted = measured_and_predicted(step_peak_script(T=8, B=32, repeated=repeated, node="LIF", backend="numba",
                                                                     model=_CONV_NET))
    assert abs(predicted - measured) <= 0.15 * measured, (predicted, measured)


NODE_FIRST_BACKENDS = (["numba"] if numba_available() else []) + ["torch"]


@pytest.mark.parametrize("backend", NODE_FIRST_BACKENDS)
@pytest.mark.parametrize("node", [LIF, RevLIF], ids=["lif", "revlif"])
def test_the_input_node_reads_a_repeated_input_as_it_is(monkeypatch, node, backend):
    """The plain block of a node fed the model input hands the node the caller's repeated input (stride
    0 along T, the caller's memory), in training and in the streamed ``no_grad`` forward (before: its
    time merge copied it to ``[T, B, ...]``); outputs and gradients as without the optimization."""
    from edgesnn.memopt import block, sequential

    seen = []

    def spy(real):
        def run(node_, post, z, v0):
            seen.append((z.stride(0), z.data_ptr()))
            return real(node_, post, z, v0)
        return run

    monkeypatch.setattr(block, "run_node_post", spy(block.run_node_post))
    monkeypatch.setattr(sequential, "run_node_post", spy(sequential.run_node_post))
    torch.manual_seed(1)
    ref = nn.Sequential(node(backend=backend), SeqToANN(nn.Flatten(), nn.Linear(2 * 4 * 4, 3)))
    opt = copy.deepcopy(ref)
    leaf, x = _input((2, 4, 4), torch.float32, True, False)
    edgesnn.optimize_memory(opt, x)
    seen.clear()
    out = opt(x)
    assert seen[0] == (0, leaf.data_ptr())
    out.sum().backward()
    ref(x).sum().backward()
    assert torch.equal(out.detach(), ref(x).detach())
    for a, b in zip(opt.parameters(), ref.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    seen.clear()
    with torch.no_grad():
        assert torch.equal(opt(x), out.detach())
    assert seen and seen[0] == (0, leaf.data_ptr())




#: a node on the input before a linear head (n: the node)
_NODE_LINEAR = "nn.Sequential(n(), SeqToANN(nn.Flatten(), nn.Linear(4 * 32 * 32, 10)))"


@pytest.mark.parametrize("node,backend", [("LIF", "numba"), ("RevLIF", "torch")])
def test_node_first_step_peak_without_the_input_copy(node, backend):
    """A node on a repeated input (T 16, batch 64: 16 MiB dense) before a linear head: the step's peak
    RSS above the process before it is within 15% of the plan's. Measured: LIF on Numba 17.7 MiB
    (predicted 18.5), RevLIF on PyTorch's loop 48.8 (48.0); before, with the input copied to
    ``[T, B, ...]``, 33.8 (34.5) and 64.9 (54.4: -16%, the RevLIF loop's temporaries under-counted).
    The Numba step stays below 1.25x the dense input (its peak is the node's spikes, as large)."""
    if backend == "numba" and not numba_available():
        pytest.skip("needs the Numba kernels")
    measured, predicted = measured_and_predicted(step_peak_script(T=16, B=64, repeated=True, node=node, backend=backend,
                                                                     model=_NODE_LINEAR))
    assert abs(predicted - measured) <= 0.15 * measured, (predicted, measured)
    if backend == "numba":
        assert measured < 1.25 * 16 * 64 * 4 * 32 * 32 * 4, measured
