"""Compiled / traced nodes against eager (audit of the custom-op paths under torch.compile and
torch.jit.trace). Kept small: one ``aot_eager`` compile per case."""

import warnings

import pytest
import torch

from edgesnn.nn import LIF, ParametricLIF, RevLIF


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each node configuration is its own compiled entry of the shared ``forward`` code object:
    reset around each test so that later tests' ``fullgraph=True`` compiles stay under dynamo's
    recompile limit (8)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("cls", [LIF, RevLIF, ParametricLIF])
def test_compiled_training_from_a_state_carried_out_of_inference_mode(cls):
    """A stateful node run under ``inference_mode`` holds an inference tensor; eager calls copy it
    before autograd saves it. A compiled call did not (dynamo cannot trace ``is_inference()``):
    the numba LIF op saves ``v0``, so the compiled training step raised "Inference tensors cannot
    be saved for backward"."""
    torch.manual_seed(0)
    kw = {} if cls is ParametricLIF else {"backend": "numba"}
    node, ref = cls(stateful=True, **kw), cls(stateful=True, **kw)
    x = torch.randn(4, 2, 8) + 0.5
    with torch.inference_mode():
        node(x)
        ref(x)
    compiled = torch.compile(node, fullgraph=True, backend="aot_eager")
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = compiled(xc)
    out.sum().backward()
    expected = ref(xe)
    expected.sum().backward()
    assert torch.equal(out, expected) and torch.equal(node.v, ref.v)
    assert torch.equal(xc.grad, xe.grad)


def test_compiled_gradient_flows_through_a_carried_state():
    """Two compiled calls in one graph: the carried state's copy passes the gradient through."""
    torch.manual_seed(1)
    node, ref = LIF(backend="numba", stateful=True), LIF(backend="numba", stateful=True)
    compiled = torch.compile(node, fullgraph=True, backend="aot_eager")
    xs = [torch.randn(3, 2, 6) + 0.8 for _ in range(2)]
    xc = [x.clone().requires_grad_() for x in xs]
    xe = [x.clone().requires_grad_() for x in xs]
    (compiled(xc[0]).sum() + 2 * compiled(xc[1]).sum()).backward()
    (ref(xe[0]).sum() + 2 * ref(xe[1]).sum()).backward()
    for a, b in zip(xc, xe):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    assert float(xc[0].grad.abs().sum()) > 0


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_traced_nodes_replay_other_batch_and_length(backend):
    """torch.jit.trace of LIF / RevLIF (custom ops or torch ops) replays another batch size and T."""
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), LIF(backend=backend, v_reset=None),
                                torch.nn.Linear(8, 8), RevLIF(backend=backend, groups=4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, torch.randn(5, 3, 6), check_trace=False)
    x = torch.randn(9, 2, 6) + 0.5
    xt, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = traced(xt)
    out.sum().backward()
    expected = model(xe)
    expected.sum().backward()
    assert torch.equal(out, expected)
    assert torch.allclose(xt.grad, xe.grad, rtol=1e-5, atol=1e-6)
