"""ParametricLIF charges as SpikingJelly's ParametricLIFNode does, with ``sigmoid(w)`` multiplied in
(``edgesnn.functional.lif.plif_charge``): the same float32 roundings, so the same spikes where a
potential lands exactly on the threshold, and a ``w`` gradient that never goes through ``tau ** 2``."""

from __future__ import annotations

import pytest
import torch

from edgesnn.functional.lif import plif_charge
from edgesnn.nn import ParametricLIF

#: A 1-neuron input on which SpikingJelly's charge reaches exactly 1.0 at t = 2 (init_tau 5.3,
#: decay_input=False); dividing by tau = 1 / sigmoid(w) gave 0.99999994 there: no spike.
TIE = [float.fromhex(h) for h in ("0x1.1a12de0000000p+0", "0x1.7d20ac0000000p-1", "0x1.9591040000000p-2")]


def _spikingjelly_formula(x_seq: torch.Tensor, w: torch.Tensor, decay_input: bool, v_th: float = 1.0) -> torch.Tensor:
    """SpikingJelly 2.0's reference PLIF loop (``_ops/plif/reference.py``), hard reset to 0, written out."""
    q = w.sigmoid()
    v = torch.zeros_like(x_seq[0])
    out = []
    for x in x_seq:
        h = v + (x - (v - 0.0)) * q if decay_input else v - (v - 0.0) * q + x
        s = (h - v_th >= 0).to(x.dtype)
        v = s * 0.0 + (1.0 - s) * h
        out.append(s)
    return torch.stack(out)


def test_a_potential_exactly_at_the_threshold_spikes_as_in_spikingjelly():
    x = torch.tensor(TIE).view(3, 1, 1)
    node = ParametricLIF(init_tau=5.3, decay_input=False)
    with torch.no_grad():
        got = node(x)
    want = _spikingjelly_formula(x, node.w.detach(), decay_input=False)
    assert want.flatten().tolist() == [1.0, 0.0, 1.0]
    assert torch.equal(got, want)


@pytest.mark.parametrize("decay_input", [True, False])
def test_plif_charge_is_the_spikingjelly_formula_bit_for_bit(decay_input):
    torch.manual_seed(0)
    node = ParametricLIF(init_tau=3.7, decay_input=decay_input, v_reset=None)
    x, v = torch.randn(4096) * 2, torch.randn(4096)
    q = node.w.detach().sigmoid()
    want = v + (x - v) * q if decay_input else v - v * q + x
    assert torch.equal(plif_charge(x, v, q, node._fixed), want)


def test_spikes_and_w_gradient_match_spikingjelly_in_float32_and_float16():
    sjn = pytest.importorskip("spikingjelly.activation_based.neuron")
    torch.manual_seed(1)
    x = torch.randn(16, 16, 512) * 2
    g = torch.randn(16, 16, 512)
    for tau, dtype in ((3.7, torch.float32), (300.0, torch.float16)):
        ours = ParametricLIF(init_tau=tau, step_mode="m").to(dtype)
        theirs = sjn.ParametricLIFNode(init_tau=tau, step_mode="m").to(dtype)
        ours.load_state_dict(theirs.state_dict())
        ys = [m(x.to(dtype)) for m in (ours, theirs)]
        for y in ys:
            (y * g.to(dtype)).sum().backward()
        if dtype == torch.float32:
            assert torch.equal(ys[0], ys[1])
        assert torch.isfinite(ours.w.grad), (tau, dtype)  # through tau ** 2: Inf in float16 from tau ~ 256
        assert float(ours.w.grad) == pytest.approx(float(theirs.w.grad), rel=1e-2, abs=1e-3), (tau, dtype)


@pytest.mark.parametrize("param_dtype", [torch.float16, torch.bfloat16])
def test_half_precision_parameters_on_a_float32_input_spike_as_spikingjelly(param_dtype):
    """SpikingJelly's op for a float32 input takes sigmoid(w) from w in float32, unrounded; rounded to
    w's dtype it differed in 69 of 262144 spikes (bfloat16, init_tau 3)."""
    sjn = pytest.importorskip("spikingjelly.activation_based.neuron")
    torch.manual_seed(0)
    x = torch.randn(16, 64, 256) + 0.6
    ours = ParametricLIF(init_tau=3.0, step_mode="m").to(param_dtype)
    theirs = sjn.ParametricLIFNode(init_tau=3.0, step_mode="m").to(param_dtype)
    ours.load_state_dict(theirs.state_dict())
    xs = [x.clone().requires_grad_() for _ in range(2)]
    ys = [m(xi) for m, xi in zip((ours, theirs), xs)]
    assert torch.equal(ys[0], ys[1])
    for y in ys:
        y.sum().backward()
    assert torch.allclose(xs[0].grad, xs[1].grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("module_dtype", [torch.float32, torch.float16])
def test_float16_input_gives_finite_parameter_gradients_summed_in_float32(module_dtype):
    """On a float16 input the T steps' gradients of ``sigmoid(w)`` (``w``'s gradient before
    sigmoid's derivative, ~4x it) used to be summed in float16 and overflowed to inf here, where
    ``w``'s own gradient (~1.8e4) fits float16; SpikingJelly's node gives it finite. The spikes stay
    SpikingJelly's formula in the module's dtype, bit for bit."""
    torch.manual_seed(0)
    x = (torch.randn(16, 8, 2000) * 1.5).half()
    node = ParametricLIF(step_mode="m").to(module_dtype)
    y = node(x)
    assert y.dtype == torch.float16
    assert torch.equal(y, _spikingjelly_formula(x, node.w.detach(), decay_input=True))
    y.sum().backward()
    wide = ParametricLIF(step_mode="m")
    wide(x.float()).sum().backward()
    assert node.w.grad.dtype == module_dtype and torch.isfinite(node.w.grad)
    assert float(node.w.grad) == pytest.approx(float(wide.w.grad), rel=1e-2)


def test_float16_learnable_threshold_gradient_matches_float32():
    torch.manual_seed(0)
    x = (torch.randn(16, 8, 2000) * 1.5).half()
    grads = []
    for xi in (x, x.float()):
        node = ParametricLIF(step_mode="m", learn_threshold=True, v_reset=None)
        node(xi).sum().backward()
        grads.append((float(node.w.grad), float(node.v_threshold.grad)))
    for half, full in zip(*grads):
        assert half == pytest.approx(full, rel=1e-2)
