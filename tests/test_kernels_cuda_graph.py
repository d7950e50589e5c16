"""The numba-cuda kernels inside a CUDA graph: capture one training step of a spiking layer, replay
it, and get what an eager step gives. Needs a GPU (skipped otherwise, and under the simulator)."""

import os

import pytest
import torch

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("NUMBA_ENABLE_CUDASIM") == "1",
    reason="needs a CUDA device (CUDA graphs have no simulator)",
)


@pytest.mark.parametrize("node_name", ["LIF", "RevLIF"])
def test_capture_and_replay_one_step(node_name):
    pytest.importorskip("numba.cuda")
    from edgesnn.nn.neurons import LIF, RevLIF

    torch.manual_seed(0)
    dev = torch.device("cuda")
    lin = torch.nn.Linear(256, 256).to(dev)
    node = (LIF if node_name == "LIF" else RevLIF)(backend="cuda")
    static_x = torch.randn(8, 4, 256, device=dev)

    def step():
        y = node(lin(static_x))
        loss = y.float().mean() + y.sum() * 1e-3
        loss.backward()
        return loss

    # eager reference (also compiles the kernels: nothing compiles inside the capture)
    lin.zero_grad(set_to_none=True)
    ref_loss = step().detach().clone()
    ref_grad = lin.weight.grad.detach().clone()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm-up on the capture's stream, as torch.cuda.graphs asks
            lin.zero_grad(set_to_none=False)
            step()
    torch.cuda.current_stream().wait_stream(side)

    g = torch.cuda.CUDAGraph()
    lin.zero_grad(set_to_none=False)
    with torch.cuda.graph(g):
        static_loss = step()
    for _ in range(3):
        lin.weight.grad.zero_()
        lin.bias.grad.zero_()
        g.replay()
    torch.cuda.synchronize()
    assert torch.allclose(static_loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert torch.allclose(lin.weight.grad, ref_grad, rtol=1e-4, atol=1e-6)

    # new data through the same graph: the replay reads the static input
    static_x.copy_(torch.randn_like(static_x))
    lin.weight.grad.zero_()
    lin.bias.grad.zero_()
    g.replay()
    torch.cuda.synchronize()
    lin2_grad = lin.weight.grad.detach().clone()
    lin.zero_grad(set_to_none=True)
    eager = step()
    assert torch.allclose(static_loss, eager.detach(), rtol=1e-5, atol=1e-6)
    assert torch.allclose(lin2_grad, lin.weight.grad, rtol=1e-4, atol=1e-6)
