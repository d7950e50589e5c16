"""revlif_step_backward / revlif_step_inverse build their outputs by stacking per-group results:
bit-identical to the earlier slice-assignment formula, and no indexed writes when traced (each
exported as a ScatterND in the onnx-step graph)."""

import warnings

import pytest
import torch

from edgesnn.functional.grid import quantize_input, to_grid, unhalve_on_grid
from edgesnn.functional.lif import lif_charge, lif_fire_reset_values, lif_step_vjp
from edgesnn.functional.revlif import RevLIFParams, revlif_step, revlif_step_backward, revlif_step_inverse

PARAMS = {"exact": dict(alpha=0.125, beta=0.5, gamma=0.25), "float": dict(alpha=0.7, beta=0.9, gamma=0.6)}


def _slice_assignment_reference(y, v_new, bits, grad_y, grad_v_new, p):
    """The earlier formula: outputs filled by ``out[:, i] = ...`` (the bits the stacked form must keep)."""
    n = p.groups
    x, v, grad_x, grad_v = (torch.empty_like(t) for t in (y, v_new, grad_y, grad_v_new))
    gy = [grad_y[:, i] for i in range(n)]
    gv = [grad_v_new[:, i] for i in range(n)]
    for i in range(n - 1, -1, -1):
        a, w = (y[:, i - 1], v_new[:, i - 1]) if i > 0 else (x[:, n - 1], v[:, n - 1])
        h = lif_charge(a, w, p.lif)
        s, u = lif_fire_reset_values(h, p.lif)
        x[:, i] = (y[:, i] - s) / p.alpha
        if p.exact:
            v[:, i] = unhalve_on_grid(v_new[:, i] - to_grid(p.gamma * u), bits[:, i])
        else:
            v[:, i] = (v_new[:, i] - p.gamma * u) / p.beta
        ga, gw = lif_step_vjp(h, gy[i], p.gamma * gv[i], p.lif)
        grad_x[:, i] = p.alpha * gy[i]
        grad_v[:, i] = p.beta * gv[i]
        if i > 0:
            gy[i - 1] = gy[i - 1] + ga
            gv[i - 1] = gv[i - 1] + gw
        else:
            grad_x[:, n - 1] += ga
            grad_v[:, n - 1] += gw
    return x, v, grad_x, grad_v


def _step_inputs(groups, mode, dtype, arbitrary_y, seed):
    p = RevLIFParams(groups=groups, mode=mode, **PARAMS[mode])
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, groups, 37, generator=g, dtype=dtype) * 3
    v = torch.randn(5, groups, 37, generator=g, dtype=dtype) * 0.5
    if p.exact:
        x, v = quantize_input(x), to_grid(v)
    y, v_new, bits = revlif_step(x, v, p)
    if arbitrary_y:  # any input, not only a forward's (and a signed zero)
        y = torch.randn(y.shape, generator=g, dtype=dtype)
        y[0, 0, 0] = -0.0
    grad_y = torch.randn(y.shape, generator=g, dtype=dtype)
    grad_v = torch.randn(y.shape, generator=g, dtype=dtype)
    return p, y, v_new, bits, grad_y, grad_v


def _same_bits(a, b):
    iv = torch.int32 if a.dtype == torch.float32 else torch.int64
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.contiguous().view(iv), b.contiguous().view(iv))


@pytest.mark.parametrize("groups", [2, 3, 4])
@pytest.mark.parametrize("mode", ["exact", "float"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("arbitrary_y", [False, True])
def test_stacked_backward_matches_slice_assignment_bit_for_bit(groups, mode, dtype, arbitrary_y):
    p, y, v_new, bits, grad_y, grad_v = _step_inputs(groups, mode, dtype, arbitrary_y, seed=groups)
    with torch.no_grad():
        ref = _slice_assignment_reference(y, v_new, bits, grad_y, grad_v, p)
    got = revlif_step_backward(y, v_new, bits, grad_y, grad_v, p)
    inv = revlif_step_inverse(y, v_new, bits, p)
    for name, r, o in zip(("x", "v", "grad_x", "grad_v", "inverse x", "inverse v"), ref + ref[:2], got + inv):
        assert _same_bits(r, o), name


@pytest.mark.parametrize("groups", [2, 4])
@pytest.mark.parametrize("mode", ["exact", "float"])
def test_traced_backward_has_no_indexed_writes(groups, mode):
    p, y, v_new, bits, grad_y, grad_v = _step_inputs(groups, mode, torch.float32, False, seed=0)
    b = bits if bits is not None else torch.zeros(0)
    fn = lambda y_, vn, bb, gy, gv: revlif_step_backward(y_, vn, bb if p.exact else None, gy, gv, p)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the shape checks' Python ifs
        traced = torch.jit.trace(fn, (y, v_new, b, grad_y, grad_v), check_trace=False)
    kinds = [node.kind() for node in traced.graph.nodes()]
    assert not [k for k in kinds if k in ("aten::copy_", "aten::index_put_", "aten::slice_scatter", "aten::add_")], kinds

