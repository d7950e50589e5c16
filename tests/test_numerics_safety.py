"""Never a silently wrong gradient: exact-mode state bound and verification, non-finite inputs and
gradients, kernel choice by surrogate type, empty batches (issue "Never a silently wrong gradient or
a lost model", numerics part; its import-order check is tests/test_import_order.py)."""

from __future__ import annotations

import pytest
import torch

from edgesnn.functional import revlif_autograd as rev_ag
from edgesnn.functional.checks import NonFiniteGradientError, NonFiniteInputError
from edgesnn.functional.grid import STATE_LIMIT, quantize_input, to_grid
from edgesnn.functional.lif import LIFParams
from edgesnn.functional.revlif import (
    ReconstructionError,
    RevLIFParams,
    exact_state_bounds,
    revlif_initial_state,
    revlif_step,
    to_groups,
)
from edgesnn.functional.surrogate import ATan, Sigmoid
from edgesnn.kernels import dispatch

KERNEL_BACKENDS = ["torch", "numba"]
ALL_BACKENDS = ["reference", "torch", "numba"]


def _revlif_grads(x, p, v0, backend, grad_y=None):
    x = x.detach().clone().requires_grad_()
    v0 = None if v0 is None else v0.detach().clone().requires_grad_()
    y, vT = dispatch.revlif_multistep(x, p, v0, backend)
    gy = torch.linspace(-1, 1, y.numel()).reshape(y.shape) if grad_y is None else grad_y
    torch.autograd.backward([y, vT], [gy, torch.ones_like(vT) * 0.1])
    return y.detach(), vT.detach(), x.grad, None if v0 is None else v0.grad


# ----------------------------------------------------------------------------- 1. exact-mode bound


def test_exact_mode_rejects_parameters_without_a_state_bound():
    # the parameters: |v_T| reached ~1400 with +-64 inputs, outside the exact float32 range
    lif = LIFParams(tau=1.99, v_threshold=16, v_reset=None)
    with pytest.raises(ValueError, match=r"gamma: .*\|v\| <= 255.*expected gamma in \(0, 0\.8"):
        RevLIFParams(lif, gamma=1.0)
    with pytest.raises(ValueError, match="gamma"):
        RevLIFParams(LIFParams(tau=2.5, decay_input=False), gamma=0.75)
    RevLIFParams(lif, mode="float", gamma=1.0, beta=0.5)  # float mode verifies instead
    # the suggested gamma is accepted
    least, limit = exact_state_bounds(RevLIFParams(lif, gamma=0.8722))
    assert max(least) <= STATE_LIMIT and all(a <= b <= STATE_LIMIT for a, b in zip(least, limit))


def _max_state(x, p, v0=None):
    """Max |v| per group over every step of the exact forward (grouped layout)."""
    xg = quantize_input(to_groups(x, p.groups))
    v = revlif_initial_state(xg[0], p) if v0 is None else to_grid(to_groups(v0, p.groups, 1))
    worst = v.abs().amax(dim=(0, 2))
    for t in range(xg.shape[0]):
        _, v, _ = revlif_step(xg[t], v, p)
        worst = torch.maximum(worst, v.abs().amax(dim=(0, 2)))
    return worst


def _adversarial_inputs(T, C, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = 6
    x = torch.empty(T, n, C)
    x[:, 0] = -64.0
    x[:, 1] = 64.0
    x[:, 2] = torch.where(torch.rand(T, C, generator=g) < 0.5, -64.0, 64.0)
    x[:, 3] = torch.where((torch.arange(T) // 7 % 2 == 0)[:, None], -64.0, 64.0).expand(T, C)
    x[:, 4] = torch.randn(T, C, generator=g) * 200  # clamped to +-64
    x[:, 5] = -1e6  # clamped to -64
    return x


@pytest.mark.parametrize(
    "lif_kw,groups,alpha",
    [
        (dict(tau=1.99, v_threshold=16, v_reset=None), 2, 0.125),
        (dict(tau=2.5, decay_input=False), 2, 0.125),
        (dict(tau=4.0, decay_input=False, v_reset=-0.5), 2, 1.0),
        (dict(tau=1.5, v_threshold=-2.0, v_reset=None), 3, 0.5),
        (dict(tau=8.0, v_threshold=16, v_reset=-16), 4, 1.0),
    ],
)
def test_exact_state_bound_is_sound_at_the_largest_accepted_gamma(lif_kw, groups, alpha):
    lif = LIFParams(**lif_kw)
    lo, hi = 0.01, 1.0  # the largest accepted gamma: the worst case the validation lets through
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        try:
            RevLIFParams(lif, groups=groups, alpha=alpha, gamma=mid)
            lo = mid
        except ValueError:
            hi = mid
    p = RevLIFParams(lif, groups=groups, alpha=alpha, gamma=lo)
    least, limit = exact_state_bounds(p)
    x = _adversarial_inputs(400, groups * 3)
    worst = _max_state(x, p)
    assert all(float(w) <= b for w, b in zip(worst, least)), (worst, least)
    # a caller's v0 anywhere within the v0 limit keeps the state within that limit
    v0 = to_grid(torch.tensor(limit) - 1e-3).repeat_interleave(3).expand(6, groups * 3).clone()
    v0[::2] *= -1
    worst = _max_state(x, p, v0)
    assert all(float(w) <= b for w, b in zip(worst, limit)), (worst, limit)
    # and the inverse is bit-exact from there on every backend
    xs = x[:60]
    ref = _revlif_grads(xs, p, v0, "reference")
    for backend in KERNEL_BACKENDS:
        out = _revlif_grads(xs, p, v0, backend)
        assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
        assert torch.isfinite(out[2]).all() and torch.isfinite(out[3]).all()
        torch.testing.assert_close(out[2], ref[2], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out[3], ref[3], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_exact_mode_rejects_v0_outside_the_bound(backend):
    p = RevLIFParams(LIFParams(tau=2.5), gamma=0.75)  # v0 limit (255, ~240.7) per group
    _, limit = exact_state_bounds(p)
    x = torch.randn(4, 2, 6)
    v0 = torch.zeros(2, 6)
    v0[0, 4] = 250.0  # group 2
    with pytest.raises(ValueError, match=r"v0: .*channel group 2 of 2"):
        dispatch.revlif_multistep(x, p, v0, backend)
    v0[0, 4] = limit[1] - 1.0
    dispatch.revlif_multistep(x, p, v0, backend)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_streamed_chunks_stay_accepted_and_exact(backend):
    # a state carried across calls (streaming, chunked recompute) never leaves the v0 limit, so the
    # chunks are accepted, verified in backward, and equal one call over the whole sequence
    p = RevLIFParams(LIFParams(tau=2.5), gamma=0.75)
    x = _adversarial_inputs(96, 6, seed=5)
    y_full, v_full = dispatch.revlif_multistep(x, p, None, backend)
    xr = x.clone().requires_grad_()
    v, ys = None, []
    for chunk in xr.split(16):
        y, v = dispatch.revlif_multistep(chunk, p, v, backend)
        ys.append(y)
    assert torch.equal(torch.cat(ys).detach(), y_full) and torch.equal(v.detach(), v_full)
    (torch.cat(ys).sum() + v.sum()).backward()
    assert torch.isfinite(xr.grad).all()


class _Tampered:
    """A kernel pair whose backward reconstructs a slightly wrong initial state."""

    @staticmethod
    def wrap(backward):
        def bad(*args, **kw):
            gx, gv0, v0r, counts = backward(*args, **kw)
            v0r = v0r.clone()
            v0r.view(-1)[0] += 2.0 ** -16
            return gx, gv0, v0r, counts

        return bad


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("given_v0", [False, True])
def test_exact_mode_backward_always_verifies(backend, given_v0, monkeypatch):
    p = RevLIFParams(groups=2)
    x = torch.randn(9, 2, 6) * 3
    v0 = torch.randn(2, 6) if given_v0 else None
    if backend == "torch":
        kernels = rev_ag.RevLIFKernels("bad", rev_ag.torch_forward, _Tampered.wrap(rev_ag.torch_backward))
        run = lambda xx, vv: rev_ag.revlif_multistep(xx, p, vv, kernels)  # noqa: E731
    else:
        from edgesnn.kernels import numba_revlif

        monkeypatch.setattr(numba_revlif, "revlif_backward", _Tampered.wrap(numba_revlif.revlif_backward))
        run = lambda xx, vv: dispatch.revlif_multistep(xx, p, vv, "numba")  # noqa: E731
    xr = x.clone().requires_grad_()
    vr = None if v0 is None else v0.clone().requires_grad_()
    y, vT = run(xr, vr)
    with pytest.raises(ReconstructionError, match="exact mode"):
        (y.sum() + vT.sum()).backward()


# ----------------------------------------------------------------------------- 2. non-finite gradients


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_nonfinite_incoming_gradient_raises(backend):
    x = torch.randn(5, 2, 6, requires_grad=True)
    y, vT = dispatch.revlif_multistep(x, RevLIFParams(), None, backend)
    gy = torch.zeros_like(y)
    gy[2, 1, 3] = float("nan")
    with pytest.raises(NonFiniteGradientError, match=r"RevLIF backward: .*x_seq.*incoming gradient \(grad of y_seq\)"):
        y.backward(gy)
    assert x.grad is None
    x = torch.randn(5, 2, 6, requires_grad=True)
    s, vT = dispatch.lif_multistep(x, LIFParams(), None, backend)
    with pytest.raises(NonFiniteGradientError, match=r"LIF backward: .*grad of v_T"):
        vT.backward(torch.full_like(vT, float("inf")))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_gradient_overflow_inside_the_layer_raises(backend):
    # h lands exactly on the threshold, where ATan's surrogate gradient is alpha / 2 = 5e5:
    # times 1e38 it overflows float32 inside the backward
    p = LIFParams(tau=2.0, v_threshold=1.0, surrogate=ATan(1e6))
    x = torch.full((3, 2, 4), 2.0, requires_grad=True)
    s, _ = dispatch.lif_multistep(x, p, None, backend)
    with pytest.raises(NonFiniteGradientError, match="arose inside this layer"):
        s.backward(torch.full_like(s, 1e38))
    assert x.grad is None


# ----------------------------------------------------------------------------- 3. surrogate by type


class SteepSigmoid(Sigmoid):
    """A Sigmoid subclass with its own gradient (the kernels must not replace it)."""

    def grad(self, u):
        return 3.0 * super().grad(2.0 * u)


@pytest.mark.parametrize("kind", ["lif", "revlif"])
def test_surrogate_subclass_runs_its_own_grad(kind):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 2, 6, generator=g) * 1.5 + 0.5
    if kind == "lif":
        p, plain = LIFParams(surrogate=SteepSigmoid()), LIFParams()
        fn = dispatch.lif_multistep
    else:
        p, plain = RevLIFParams(LIFParams(surrogate=SteepSigmoid())), RevLIFParams()
        fn = dispatch.revlif_multistep
    assert dispatch.resolve_backend("auto", x, p) == "torch"

    def grad(params, backend):
        xr = x.clone().requires_grad_()
        out, vT = fn(xr, params, None, backend)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().add(vT.sum()).backward()
        return xr.grad

    auto, torch_g, ref = grad(p, "auto"), grad(p, "torch"), grad(p, "reference")
    assert torch.equal(auto, torch_g)
    torch.testing.assert_close(auto, ref, rtol=1e-5, atol=1e-6)
    assert float((auto - grad(plain, "auto")).abs().max()) > 1e-2  # the override matters
    with pytest.raises(TypeError, match=r"backend='numba'.*exactly the built-in Sigmoid or ATan.*SteepSigmoid"):
        fn(x, p, None, "numba")


# ----------------------------------------------------------------------------- 4. non-finite input


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_input_raises_on_every_backend(backend, bad):
    x = torch.randn(4, 2, 6)
    x[1, 0, 2] = bad
    with pytest.raises(NonFiniteInputError, match=r"^LIF: x_seq holds non-finite values"):
        dispatch.lif_multistep(x, LIFParams(), None, backend)
    for mode in ("exact", "float"):
        p = RevLIFParams(mode=mode, **({} if mode == "exact" else {"beta": 0.75}))
        with pytest.raises(NonFiniteInputError, match=r"^RevLIF: x_seq holds non-finite values"):
            dispatch.revlif_multistep(x, p, None, backend)
    v0 = torch.zeros(2, 6)
    v0[1, 1] = bad
    with pytest.raises(NonFiniteInputError, match=r"LIF: v0 holds non-finite"):
        dispatch.lif_multistep(torch.randn(4, 2, 6), LIFParams(), v0, backend)
    with pytest.raises(NonFiniteInputError, match=r"RevLIF: v0 holds non-finite"):
        dispatch.revlif_multistep(torch.randn(4, 2, 6), RevLIFParams(), v0, backend)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_input_of_a_parametric_lif_names_it(bad):
    from edgesnn.nn import ParametricLIF

    x = torch.randn(4, 2, 6)
    x[2, 1, 0] = bad
    with pytest.raises(NonFiniteInputError, match=r"^ParametricLIF: x_seq holds non-finite values"):
        ParametricLIF()(x)
    node = ParametricLIF(stateful=True)
    node.v = torch.zeros(2, 6).index_fill_(1, torch.tensor([3]), bad)
    with pytest.raises(NonFiniteInputError, match=r"^ParametricLIF: v0 holds non-finite values"):
        node(torch.randn(4, 2, 6))


# ----------------------------------------------------------------------------- 5. empty batch


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("mode", ["exact", "float"])
@pytest.mark.parametrize("given_v0", [False, True])
def test_empty_batch(backend, mode, given_v0):
    p = RevLIFParams(mode=mode, **({} if mode == "exact" else {"beta": 0.75}))
    x = torch.randn(5, 0, 4, 3, requires_grad=True)
    v0 = torch.zeros(0, 4, 3, requires_grad=True) if given_v0 else None
    y, vT = dispatch.revlif_multistep(x, p, v0, backend)
    assert y.shape == (5, 0, 4, 3) and vT.shape == (0, 4, 3)
    (y.sum() + vT.sum()).backward()
    assert x.grad.shape == x.shape
    if given_v0:
        assert v0.grad.shape == v0.shape
    x = torch.randn(5, 0, 4, requires_grad=True)
    s, vT = dispatch.lif_multistep(x, LIFParams(), None, backend)
    (s.sum() + vT.sum()).backward()
    assert s.shape == x.shape and x.grad.shape == x.shape


def test_parameter_types_and_ranges():
    """NumPy scalars are numbers; a string flag or a value beyond float32 is an error naming the
    parameter; the group error shows the whole input's shape on every backend."""
    import numpy as np

    from edgesnn.nn import LIF, RevLIF

    x = torch.randn(4, 2, 8)
    ref = LIF()(x)
    assert torch.equal(LIF(tau=np.float32(2.0), surrogate=Sigmoid(np.float32(4.0)))(x), ref)
    assert torch.equal(RevLIF(groups=np.int64(2))(x), RevLIF(groups=2)(x))
    assert LIFParams(decay_input=np.bool_(False), detach_reset=1).decay_input is False
    for kw, name in ((dict(decay_input="no"), "decay_input"), (dict(detach_reset=2), "detach_reset")):
        with pytest.raises(TypeError, match=f"^{name}: expected True or False"):
            LIFParams(**kw)
    for kw, name in ((dict(v_threshold=1e39), "v_threshold"), (dict(tau=np.bool_(True)), "tau"),
                     (dict(v_reset=-1e39), "v_reset")):
        with pytest.raises(ValueError, match=f"^{name}: expected a finite number"):
            LIFParams(**kw)
    for alpha in (1e39, 2e6, float("nan"), 0.0):
        with pytest.raises(ValueError, match=r"^surrogate alpha: expected a number in \(0, 1e\+06\]"):
            Sigmoid(alpha)
    with pytest.raises(TypeError, match="LIF: expected a torch.Tensor input, got list"):
        LIF()([[1.0]])
    for backend in KERNEL_BACKENDS:
        with pytest.raises(ValueError, match=r"groups: 4 does not divide .* shape \(8, 2, 6\)"):
            RevLIF(groups=4, backend=backend)(torch.randn(8, 2, 6))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_state_carried_out_of_inference_mode_trains(backend):
    from edgesnn.nn import LIF, RevLIF

    for cls in (LIF, RevLIF):
        node = cls(backend=backend, stateful=True)
        with torch.inference_mode():
            node(torch.randn(3, 2, 8))
        x = torch.randn(3, 2, 8, requires_grad=True)
        node(x).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("alpha", [4.0, 1e3])
def test_sigmoid_surrogate_is_flat_far_from_the_threshold_on_every_backend(alpha):
    """Far from the threshold (|alpha u| beyond the kernels' exp range) the Sigmoid surrogate is
    0 in PyTorch; the kernels must not leave a tiny value that a huge ``v_reset - h`` magnifies."""
    from edgesnn.nn import LIF

    for seq in ([1e36, 0.2], [0.3, 1e30, 1.3], [-1e36, 30.0, -30.0]):
        x = torch.tensor(seq).view(len(seq), 1, 1)
        grads = {}
        for backend in ("torch", "numba"):
            xi = x.clone().requires_grad_()
            LIF(decay_input=False, surrogate=Sigmoid(alpha), backend=backend)(xi).sum().backward()
            grads[backend] = xi.grad
        assert torch.allclose(grads["numba"], grads["torch"], rtol=1e-5, atol=1e-6), (seq, grads)


@pytest.mark.parametrize("backend", ["auto", "torch", "reference"])
def test_meta_tensors_run_forward_and_backward(backend):
    """Shapes-only runs (memory counting, fake tensors) have no values to check."""
    from edgesnn.nn import LIF, RevLIF

    for cls in (LIF, RevLIF):
        x = torch.randn(4, 2, 8, device="meta", requires_grad=True)
        y = cls(backend=backend)(x)
        y.sum().backward()
        assert y.shape == x.shape and y.device.type == "meta" and x.grad.shape == x.shape


def test_overflowed_distance_to_threshold_spikes_like_the_kernels():
    """``h - v_th`` past float32's range (h finite): the spike is 1, not inf - inf = NaN, and every
    backend agrees; float16 reaches this with inputs of 4e4."""
    from edgesnn.nn import LIF

    p = dict(v_threshold=-2e38, v_reset=-3e38, decay_input=False)
    x = torch.full((1, 1, 1), 3e38)
    outs = {b: LIF(backend=b, **p)(x) for b in ["reference", *KERNEL_BACKENDS]}
    for b, s in outs.items():
        assert torch.equal(s, torch.ones(1, 1, 1)), (b, s)
    # a state that overflows (float16 from inputs of 4e4; a soft-reset float32 state from 2e38): h = inf
    # spikes, then the state is NaN and the spikes would silently stop; every backend raises instead
    from edgesnn.functional.checks import NonFiniteInputError
    for b, x in [("torch", torch.full((5, 1, 1), 4e4, dtype=torch.float16)),
                 *[(b, torch.full((5, 1, 1), 2e38)) for b in ["reference", *KERNEL_BACKENDS]]]:
        with pytest.raises(NonFiniteInputError, match="membrane state overflowed"):
            LIF(backend=b, v_reset=None, decay_input=False)(x)


def test_sigmoid_surrogate_gradient_keeps_relative_precision_above_threshold():
    """``alpha sg (1 - sg)`` lost all digits once ``sg`` rounded to 1 (0 at u = 4.5, alpha = 4):
    the torch gradient is symmetric in u and within 1e-5 (relative) of the float64 formula."""
    u = torch.tensor([4.0, 4.5, 5.0, 10.0, -4.0, -4.5, -5.0, -10.0])
    got = Sigmoid(4.0).grad(u)
    z = 4.0 * u.double()
    want = 4.0 * torch.sigmoid(z) * torch.sigmoid(-z)
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=0)
    assert torch.equal(got[:4], got[4:])


def test_setting_a_stateless_node_state_is_refused():
    """A float state on a node that starts every call fresh was stored and ignored; setting the
    fresh value (SpikingJelly's reset) stays allowed."""
    from edgesnn.nn import LIF

    m = LIF()
    with pytest.raises(ValueError, match="^v: this LIF starts every call from a fresh state"):
        m.v = 0.5
    m.v = 0.0
    assert m.v == 0.0
    s = LIF(stateful=True)
    s.v = 0.5
    assert s.v == 0.5
