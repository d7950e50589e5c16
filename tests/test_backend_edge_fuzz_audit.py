"""Differential fuzz of the neuron backends at numerical edges: ``reference`` (plain autograd), ``torch``
(hand-written backward) and ``numba`` (fused kernels) on the same LIF / RevLIF cases must give the
same forward bits (spikes, outputs, final state; the sign of a zero included), gradients within 1e-5
of the gradient's scale, and the same error class. A seeded sample of the audit's fuzz (parameter
extremes the constructors accept, inputs at +-1e30 / on the threshold / -0.0 / subnormal / at the
exact mode's +-64 clamp, odd and strided layouts, stride-0 gradients, stateful chunks), then the
minimal cases of the defects it found."""

from __future__ import annotations

import dataclasses
import math
import random
import warnings
from typing import Callable, Dict, Optional, Tuple

import pytest
import torch

from edgesnn.functional.checks import NonFiniteInputError
from edgesnn.functional.grid import straight_through
from edgesnn.functional.lif import LIFParams
from edgesnn.functional.revlif import EXACT_ALPHAS, RevLIFParams
from edgesnn.functional.surrogate import ATan, Sigmoid
from edgesnn.kernels import dispatch
from edgesnn.nn import LIF, ParametricLIF, RevLIF

pytest.importorskip("numba")

BACKENDS = ("reference", "torch", "numba")
#: tau just above 1 is left to the torch-vs-numba comparison: the oracle's float32 ``g - g / tau`` (its
#: autograd of the charge) cancels there and is itself far from the float64 gradient (the audit measured
#: 1e-2 relative where torch and numba were within 1e-7 of float64).
TAUS = (1.0 + 2.0 ** -20, 1.01, 1.5, 2.0, 3.7, 1e4, 1e30, 3e38)
ORACLE_TAU = 1.4
SPECIALS = (1e30, -1e30, 0.0, -0.0, 1e-40, -1e-45, 64.0, -64.0, 64.00001, -64.00001, 65.0, -65.0, 2.0 ** -17,
            3 * 2.0 ** -17, 1e38, -1e38)


def _lif_params(r: random.Random, exact: bool = False) -> LIFParams:
    tau = r.choice(TAUS)
    v_th = r.choice((1.0, 0.5, 1e-6, 0.0, -0.5, 3.0, 1e-38) + (() if exact else (1e20, -1e20)))
    v_reset = None
    if r.random() < 0.6:
        scale = max(1.0, abs(v_th))  # (v_th - 5 is v_th itself at 1e20)
        v_reset = r.choice((v_th - 0.5 * scale, v_th - 5.0 * scale, -0.0 if v_th > 0 else v_th - 2.0 * scale))
    sg = (Sigmoid if r.random() < 0.5 else ATan)(r.choice((1e-3, 0.5, 4.0, 1e3, 1e6)))
    return LIFParams(tau, v_th, v_reset, r.random() < 0.6, r.random() < 0.4, sg)


def _rev_params(r: random.Random) -> RevLIFParams:
    while True:  # draw until the constructor accepts (exact mode refuses parameters without a state bound)
        exact = r.random() < 0.6
        lif = _lif_params(r, exact=True)
        try:
            if exact:
                return RevLIFParams(lif, r.choice((2, 3, 4)), r.choice(EXACT_ALPHAS), 0.5, r.choice((0.5, 0.25, 0.01, 1.0)))
            return RevLIFParams(lif, r.choice((2, 3, 4)), r.choice((1.0, 0.125, -0.7, 2.0)), r.choice((0.5, 1.0, -0.5)),
                                r.choice((0.5, 1.0, 0.1)), "float")
        except ValueError:
            continue


def _values(r: random.Random, g: torch.Generator, shape, lif: LIFParams) -> torch.Tensor:
    kind = r.choice(("randn", "randn", "big", "const", "special", "threshold"))
    centre = r.choice((0.0, 0.5, lif.v_threshold if abs(lif.v_threshold) < 1e6 else 0.0))
    x = torch.randn(shape, generator=g) * r.choice((0.1, 1.0, 3.0, 40.0)) + centre
    if kind == "const":
        return torch.full(shape, r.choice((0.0, -0.0, 1.0, lif.v_threshold, 64.0, -65.0, 1e-40)))
    if kind == "big":
        x = x * 1e30
    if kind in ("special", "threshold", "big"):
        flat = x.view(-1)
        on_threshold = (lif.v_threshold - lif.charge_reset) * (lif.tau if lif.decay_input else 1.0) + lif.charge_reset
        for _ in range(max(1, flat.numel() // 4)):
            i = r.randrange(flat.numel())
            if kind == "threshold" and math.isfinite(on_threshold) and abs(on_threshold) < 3e38:
                flat[i] = on_threshold  # h lands on (or next to) v_th at the first step
            else:
                flat[i] = r.choice(SPECIALS)
    return x


def _layout(r: random.Random, x: torch.Tensor) -> Tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """A leaf and the function making the layer input from it: ``x``'s values, laid out otherwise
    (or, for the stride-0 kinds, ``x``'s first step / first sample repeated)."""
    kind = r.choice(("contiguous", "transposed", "expand_T", "expand_B", "strided", "channels_last"))
    if kind == "transposed":
        perm = list(range(x.dim()))[::-1]
        inv = [perm.index(i) for i in range(x.dim())]
        return x.permute(perm).contiguous(), lambda leaf: leaf.permute(inv)
    if kind == "expand_T":
        return x[:1].clone(), lambda leaf: leaf.expand(x.shape)
    if kind == "expand_B":
        return x[:, :1].clone(), lambda leaf: leaf.expand(x.shape)
    if kind == "strided":
        big = torch.zeros((2 * x.shape[0],) + tuple(x.shape[1:]))
        big[::2] = x
        return big, lambda leaf: leaf[::2]
    if kind == "channels_last" and x.dim() == 5:
        return x.contiguous(memory_format=torch.channels_last_3d), lambda leaf: leaf
    return x.contiguous(), lambda leaf: leaf


def _grads(r: random.Random, g: torch.Generator, out: torch.Tensor):
    """The gradient fed to the output: ``None`` (a sum loss), random, with zeros, stride 0 over T, all zero, huge."""
    kind = r.choice(("sum", "randn", "zeros", "expand_T", "all_zero", "huge"))
    if kind == "sum":
        return None
    if kind == "expand_T":
        return torch.randn(out.shape[1:], generator=g).expand(out.shape)
    if kind == "all_zero":
        return torch.zeros(out.shape)
    gy = torch.randn(out.shape, generator=g)
    if kind == "zeros":
        return gy * (torch.rand(out.shape, generator=g) < 0.5)
    return gy * 1e30 if kind == "huge" else gy


def _run(fn, backend: str, leaf, make, p, v0, seed: int, vt_grad: bool) -> Dict[str, object]:
    x = leaf.clone(memory_format=torch.preserve_format).requires_grad_()
    v = None if v0 is None else v0.clone().requires_grad_()
    try:
        out, vT = fn(make(x), p, v, backend)
        r, g = random.Random(seed), torch.Generator().manual_seed(seed)
        gy = _grads(r, g, out)
        outs, gys = [out], [out.new_ones(()).expand(out.shape) if gy is None else gy]
        if vt_grad:
            outs.append(vT)
            gys.append(torch.randn(vT.shape, generator=g))
        torch.autograd.backward(outs, gys)
        return dict(out=out.detach(), vT=vT.detach(), gx=x.grad, gv0=None if v is None else v.grad)
    except Exception as e:  # noqa: BLE001  (the class is compared across backends)
        return dict(err=type(e).__name__, msg=str(e))


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, the same signed zeros, NaN where the other has NaN."""
    na, nb = torch.isnan(a), torch.isnan(b)
    a, b = a.masked_fill(na, 0.0), b.masked_fill(nb, 0.0)
    return torch.equal(na, nb) and torch.equal(a, b) and torch.equal(a.signbit(), b.signbit())


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> bool:
    """``max |a - b| <= rtol * max |b|`` in float64 (the kernels tests' measure)."""
    if b.numel() == 0:
        return True
    return float((a.double() - b.double()).abs().max()) <= rtol * float(b.double().abs().max())


def _finite(t: Optional[torch.Tensor]) -> bool:
    return t is None or bool(torch.isfinite(t).all())


def _case(seed: int):
    r, g = random.Random(seed), torch.Generator().manual_seed(seed)
    if r.random() < 0.6:
        p, fn = _lif_params(r), dispatch.lif_multistep
        lif, C = p, r.choice((1, 3, 5, 7, 17))
        T = r.choice((1, 2, 3, 5, 9, 17))
    else:
        p, fn = _rev_params(r), dispatch.revlif_multistep
        lif, C = p.lif, p.groups * r.choice((1, 3))
        T = r.choice((1, 2, 3, 5, 9, 17) if p.exact else (1, 2, 3))  # float mode: within its horizon
    B = r.choice((1, 1, 2, 3))
    shape = (T, B, C) if r.random() < 0.6 else (T, B, C, r.choice((1, 3)), r.choice((1, 2)))
    if len(shape) == 3 and r.random() < 0.2:
        shape = (T, B, C * 257)  # more neurons than a kernel block, not a multiple of it
    leaf, make = _layout(r, _values(r, g, shape, lif))
    v0 = _values(r, g, shape[1:], lif) if r.random() < 0.35 else None
    if v0 is not None and isinstance(p, RevLIFParams) and p.exact:
        v0 = v0.clamp(-30.0, 30.0)  # a caller's state within the exact mode's bound
    vt_grad = r.random() < 0.5
    return {b: _run(fn, b, leaf, make, p, v0, seed, vt_grad) for b in BACKENDS}, lif


def _check(seed: int) -> None:
    res, lif = _case(seed)
    ref, where = res["reference"], f"seed {seed}"
    errs = {b: res[b].get("err") for b in BACKENDS}
    ref_nonfinite = "err" not in ref and not (_finite(ref["gx"]) and _finite(ref["gv0"]))
    if errs["reference"] is None and errs["torch"] == errs["numba"] and errs["torch"] in (
            "ReconstructionError", "NonFiniteGradientError"):
        # float mode's verified inverse; the reference returns non-finite gradients where the others raise
        assert errs["torch"] == "ReconstructionError" or ref_nonfinite, (where, res["torch"]["msg"])
        return
    assert errs["torch"] == errs["numba"] == errs["reference"], (where, errs, [res[b].get("msg") for b in BACKENDS])
    if errs["reference"] is not None:
        return
    for b in ("torch", "numba"):
        for k in ("out", "vT"):
            assert _same_bits(res[b][k], ref[k]), (where, b, k)
    for k in ("gx", "gv0"):
        t, n = res["torch"][k], res["numba"][k]
        assert (t is None) == (n is None) == (ref[k] is None), (where, k)
        if t is None:
            continue
        if ref_nonfinite:  # the oracle's autograd overflowed (grad * h before the zero surrogate): torch vs numba
            assert _finite(t) and _finite(n) and _close(n, t), (where, k)
        elif lif.tau < ORACLE_TAU:
            assert _finite(t) and _close(n, t), (where, k)
        else:
            for b, got in (("torch", t), ("numba", n)):
                assert _finite(got) and _close(got, ref[k]), (where, b, k, float((got - ref[k]).abs().max()))


@pytest.mark.parametrize("chunk", range(8))
def test_backends_agree_on_a_seeded_edge_sample(chunk):
    """Functional forms, 20 cases per chunk (160 in all)."""
    for seed in range(20 * chunk, 20 * chunk + 20):
        _check(seed)


def _node(p, backend: str, **kw):
    if isinstance(p, LIFParams):
        return LIF(p.tau, p.v_threshold, p.v_reset, p.decay_input, p.surrogate, p.detach_reset, backend, **kw)
    q = p.lif
    return RevLIF(q.tau, q.v_threshold, q.v_reset, q.decay_input, q.surrogate, q.detach_reset, p.groups, p.alpha,
                  p.beta, p.gamma, p.mode, backend, **kw)


def _chunked(p, backend: str, chunks, single_step: bool, gy: torch.Tensor, gv: torch.Tensor):
    node = _node(p, backend, step_mode="s" if single_step else "m", stateful=True)
    leaves = [c.clone().requires_grad_() for c in chunks]
    outs = [node(leaf[t]).unsqueeze(0) for leaf in leaves for t in range(leaf.shape[0])] if single_step else \
        [node(leaf) for leaf in leaves]
    out = torch.cat(outs)
    ((out * gy).sum() + (node.v * gv).sum()).backward()
    return out.detach(), node.v.detach(), torch.cat([leaf.grad for leaf in leaves])


@pytest.mark.parametrize("seed", range(12))
def test_stateful_chunks_and_single_steps_agree_across_backends(seed):
    """A stateful node fed in chunks (or one step per call) gives every backend the same bits, and the
    numba node the same bits and gradients as one whole call."""
    r, g = random.Random(1000 + seed), torch.Generator().manual_seed(1000 + seed)
    p = _lif_params(r) if seed % 2 else _rev_params(r)
    while isinstance(p, RevLIFParams) and not p.exact:  # float mode's horizon applies per call: not chunk-invariant
        p = _rev_params(r)
    if isinstance(p, LIFParams) and p.tau < ORACLE_TAU:  # (see ORACLE_TAU)
        p = dataclasses.replace(p, tau=2.0)
    elif isinstance(p, RevLIFParams) and p.lif.tau < ORACLE_TAU:
        p = dataclasses.replace(p, lif=dataclasses.replace(p.lif, tau=2.0))
    lif = p if isinstance(p, LIFParams) else p.lif
    C = p.groups * 3 if isinstance(p, RevLIFParams) else 5
    x = _values(r, g, (7, 2, C), lif)
    chunks = list(torch.tensor_split(x, [2, 3]))
    gy, gv = torch.randn(x.shape, generator=g), torch.randn(x.shape[1:], generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the 4-D input warning does not apply here; keep the run quiet
        runs = {b: _chunked(p, b, chunks, seed % 3 == 0, gy, gv) for b in BACKENDS}
        whole = _chunked(p, "numba", [x], False, gy, gv)
    ref = runs["reference"]
    for b in ("torch", "numba"):
        assert _same_bits(runs[b][0], ref[0]) and _same_bits(runs[b][1], ref[1]), (seed, b)
        if _finite(ref[2]):
            assert _close(runs[b][2], ref[2]), (seed, b)
    assert _same_bits(whole[0], runs["numba"][0]) and _same_bits(whole[1], runs["numba"][1])
    assert _close(runs["numba"][2], whole[2])


# ----------------------------------------------------------------------------- defects found (minimal cases)


def _input_grad(node_fn, x: torch.Tensor, backend: str) -> torch.Tensor:
    x = x.clone().requires_grad_()
    node_fn(backend)(x).sum().backward()
    return x.grad


def test_kernel_sigmoid_surrogate_follows_torch_up_to_its_flat_range():
    """For 80 < |alpha (h - v_th)| <= 88 the kernels' Sigmoid surrogate was the constant alpha * 7.2e-35
    (their exp clamped its argument at 80, the cut to 0 came at 88): up to 3000x PyTorch's value. At
    alpha u = 85 (one neuron, one step) numba's input gradient was 7.2e-35 against 4.9e-37."""
    for z in (79.5, 81.0, 85.0, 86.9):
        x = torch.full((1, 1, 1), 1.0 + z / 4.0)  # decay_input=False from v = 0: h - v_th = z / alpha

        def node(backend):
            return LIF(decay_input=False, surrogate=Sigmoid(4.0), backend=backend)

        want, got = _input_grad(node, x, "torch"), _input_grad(node, x, "numba")
        assert float(want) > 0 and torch.allclose(got, want, rtol=1e-5, atol=0), (z, got, want)
    # beyond the kernels' exp range they return 0 (PyTorch's float32 value is below alpha * 1.7e-38 there)
    x = torch.full((1, 1, 1), 1.0 + 87.5 / 4.0)
    assert float(_input_grad(lambda b: LIF(decay_input=False, backend=b), x, "numba")) == 0.0


def test_exact_mode_keeps_the_sign_of_a_zero_state_on_every_backend():
    """v_reset = -1e-6 lies on the exact grid as -0.0, and a step below threshold keeps the state at
    -0.0 + to_grid(gamma u) = -0.0: the kernels kept it, the reference and torch backends returned +0.0
    (their straight-through step added +0.0), so the forward bits differed."""
    x = torch.zeros(1, 1, 2)
    states = {}
    for b in BACKENDS:
        node = RevLIF(v_reset=-1e-6, backend=b, stateful=True)
        node(x)
        states[b] = node.v
    assert bool(states["numba"].signbit().all())
    for b in ("reference", "torch"):
        assert _same_bits(states[b], states["numba"]), (b, states[b])


def test_straight_through_keeps_the_exact_value_bit_for_bit():
    smooth = torch.tensor([0.3, -0.2, 5.0], requires_grad=True)
    exact = torch.tensor([-0.0, 0.0, -0.0])
    out = straight_through(exact, smooth)
    assert torch.equal(out.signbit(), exact.signbit())
    out.sum().backward()
    assert torch.equal(smooth.grad, torch.ones(3))


def test_check_finite_flag_raises_the_same_class_as_the_backends():
    """``check_finite=True`` raised a plain ValueError where every backend raises NonFiniteInputError
    (a ValueError subclass), so ``except NonFiniteInputError`` missed it."""
    x = torch.randn(3, 2, 4)
    x[1, 0, 2] = float("nan")
    for cls in (LIF, RevLIF, ParametricLIF):
        for check in (False, True):
            with pytest.raises(NonFiniteInputError):
                cls(check_finite=check)(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_parametric_lif_gradient_of_w_is_finite_for_any_tau(dtype):
    """ParametricLIF(init_tau=1e30) had a NaN / Inf w.grad in float32 (and init_tau=300 in float16):
    charging with x / tau, the backward of tau = 1 / sigmoid(w) goes through tau ** 2. It now
    multiplies sigmoid(w) in, as SpikingJelly does: finite, and equal to SpikingJelly's."""
    x = torch.randn(6, 2, 5) * 2 + 0.5
    w_out = torch.linspace(-1, 1, x.numel()).view(x.shape)
    for tau in (300.0, 1e5, 1e30, 3e38):
        node = ParametricLIF(init_tau=tau).to(dtype)
        (node(x.to(dtype)) * w_out.to(dtype)).sum().backward()
        assert math.isfinite(float(node.w.grad)), (tau, dtype)
    node = ParametricLIF()
    node.tau = 1e20
    assert node.tau == pytest.approx(1e20, rel=1e-5)  # (w is a float32)


def test_fresh_state_gradient_overflow_is_not_an_error_for_the_input_gradient():
    """Float mode with |beta| > 1: the state gradient grows |beta| per step back. With a fresh state
    (no v0 given) torch and reference return the input gradient; numba raised NonFiniteGradientError
    for 'the gradient of the initial state v0'."""
    p = RevLIFParams(LIFParams(detach_reset=True), groups=2, alpha=1.0, beta=2.0, gamma=1.0, mode="float")
    x = torch.full((1, 1, 2), 5.0)
    grads = {}
    for b in BACKENDS:
        xr = x.clone().requires_grad_()
        y, vT = dispatch.revlif_multistep(xr, p, None, b)
        torch.autograd.backward([y, vT], [torch.ones_like(y), torch.full_like(vT, 2e38)])
        grads[b] = xr.grad
    assert torch.equal(grads["torch"], grads["reference"]) and torch.allclose(grads["numba"], grads["torch"])
