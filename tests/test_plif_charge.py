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
