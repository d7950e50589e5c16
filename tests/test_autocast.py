"""The neurons inside ``torch.autocast``: they compute in float32 (as autocast's own precision-sensitive
ops do), so a bfloat16 input from the layer before gives the same spikes and gradients as that input
cast up by hand, on every CPU backend; outside autocast a half-precision RevLIF input is a one-line
error that says how to cast."""

import pytest
import torch
from torch import nn

from edgesnn.nn import LIF, RevLIF

BACKENDS = ["torch", "numba", "reference"]


def _net(node: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), node, nn.Linear(16, 5))


@pytest.mark.parametrize("make", [LIF, RevLIF], ids=["LIF", "RevLIF"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_node_runs_float32_inside_autocast(make, backend):
    x = torch.randn(6, 3, 12) * 2
    net = _net(make(backend=backend))
    seen = {}
    net[1].register_forward_hook(lambda m, i, o: seen.update(inp=i[0], out=o))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x)
    assert seen["inp"].dtype == torch.bfloat16  # what autocast's Linear produced
    assert seen["out"].dtype == torch.float32
    y.float().square().sum().backward()
    g_auto = net[0].weight.grad.clone()
    assert torch.isfinite(g_auto).all() and g_auto.abs().sum() > 0

    # the same bfloat16 values cast up by hand, no autocast: identical node output and input gradient
    ref = make(backend=backend)
    h = seen["inp"].detach().float().requires_grad_()
    out = ref(h)
    assert torch.equal(out, seen["out"].detach())
    h_auto = seen["inp"].detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_auto = make(backend=backend)(h_auto)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    (out_auto * w).sum().backward()
    assert h_auto.grad.dtype == torch.bfloat16
    assert torch.equal(h_auto.grad, h.grad.to(torch.bfloat16))


def test_stateful_single_step_node_keeps_a_float32_state_inside_autocast():
    node = RevLIF(step_mode="s", stateful=True)
    lin = nn.Linear(8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = [node(lin(torch.randn(2, 8))) for _ in range(4)]
    assert all(o.dtype == torch.float32 for o in outs)
    assert node.v.dtype == torch.float32
    torch.stack(outs).sum().backward()
    assert torch.isfinite(lin.weight.grad).all()


def test_float32_input_inside_autocast_is_unchanged():
    x = torch.randn(4, 2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = RevLIF()(x)
    assert torch.equal(y, RevLIF()(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_revlif_input_outside_autocast_is_one_line_with_the_cast(dtype):
    with pytest.raises(TypeError) as e:
        RevLIF()(torch.randn(4, 2, 8, dtype=dtype))
    msg = str(e.value)
    assert "\n" not in msg and "x_seq" in msg and ".float()" in msg and "autocast" in msg
