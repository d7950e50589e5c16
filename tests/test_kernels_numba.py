"""Fused Numba kernels against the PyTorch reference: spikes/outputs/states bit for bit,
gradients within 1e-5 relative; dispatch, custom ops under torch.compile, threads (warmup: test_warmup.py)."""

from __future__ import annotations

import warnings

import pytest
import torch

from edgesnn.functional.lif import LIFParams, lif_multistep_reference
from edgesnn.functional.revlif import ReconstructionError, RevLIFParams, to_groups
from edgesnn.functional.revlif_autograd import torch_backward, torch_forward
from edgesnn.functional.surrogate import ATan, Sigmoid
from edgesnn.kernels import dispatch, get_num_threads, set_num_threads
from edgesnn.nn.neurons import LIF, RevLIF

pytest.importorskip("numba")  # a hard dependency; should it be missing, say so with a skip
from edgesnn.kernels import numba_cpu  # noqa: E402  (edgesnn's own kernels: a broken import fails)

LIF_CONFIGS = [
    dict(),
    dict(v_reset=None),
    dict(surrogate=ATan(), detach_reset=True),
    dict(v_reset=None, surrogate=ATan(), detach_reset=True, decay_input=False),
    dict(tau=3.0, v_reset=-0.25, v_threshold=0.75, decay_input=False, surrogate=Sigmoid(2.5)),
    dict(tau=1.7, v_reset=None, v_threshold=0.6),
    dict(surrogate=ATan()),  # ATan without detach_reset: the reset's gradient flows through the spike
    dict(v_reset=None, surrogate=ATan(), decay_input=False),
]


def _rel_close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> None:
    """``max|a - b| <= rtol * max|b|`` (relative to the gradient's scale), compared in float64."""
    assert a.shape == b.shape
    a64, b64 = a.double(), b.double()
    scale = max(float(b64.abs().max()), 1e-30)
    err = float((a64 - b64).abs().max())
    assert err <= rtol * scale, f"max abs error {err:.3g} > {rtol} * {scale:.3g}"


def _weights(t: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t.shape, generator=g)


def _run_lif(backend, x, p, v0):
    x = x.detach().clone().requires_grad_()
    v0 = None if v0 is None else v0.detach().clone().requires_grad_()
    s, vT = dispatch.lif_multistep(x, p, v0, backend)
    # a loss on the spikes AND the final state exercises both backward inputs
    (s * _weights(s, 1)).sum().add((vT * _weights(vT, 2)).sum()).backward()
    return s.detach(), vT.detach(), x.grad, None if v0 is None else v0.grad


@pytest.mark.parametrize("T", [1, 4, 8, 64])
@pytest.mark.parametrize("cfg", range(len(LIF_CONFIGS)))
def test_lif_numba_matches_reference(T, cfg):
    p = LIFParams(**LIF_CONFIGS[cfg])
    g = torch.Generator().manual_seed(100 * T + cfg)
    x = torch.randn(T, 3, 5, 7, generator=g) * 1.5 + 0.4  # odd sizes
    v0 = torch.randn(3, 5, 7, generator=g) * 0.3 if cfg % 2 else None
    ref = _run_lif("reference", x, p, v0)
    out = _run_lif("numba", x, p, v0)
    assert out[0].unique().tolist() in ([0.0, 1.0], [0.0], [1.0])
    assert torch.equal(out[0], ref[0]), "spikes differ"
    assert torch.equal(out[1], ref[1]), "final state differs"
    assert float(out[0].sum()) > 0  # the test actually fires
    _rel_close(out[2], ref[2])
    if v0 is not None:
        _rel_close(out[3], ref[3])


def test_lif_numba_noncontiguous_and_large_blocks():
    p = LIFParams(v_reset=None, surrogate=ATan())
    g = torch.Generator().manual_seed(7)
    base = torch.randn(8, 37, 2, 1500, generator=g) * 1.5 + 0.3
    x = base.transpose(1, 3)[:, ::2]  # [8, 750, 2, 37], non-contiguous, 55500 neurons (several blocks)
    assert not x.is_contiguous()
    ref = _run_lif("reference", x, p, None)
    out = _run_lif("numba", x, p, None)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
    _rel_close(out[2], ref[2])


def test_lif_numba_no_grad_and_inference():
    p = LIFParams()
    x = torch.randn(4, 2, 9) + 0.5
    with torch.no_grad():
        s, vT = dispatch.lif_multistep(x, p, None, "numba")
    sr, vr = lif_multistep_reference(x, p)
    assert torch.equal(s, sr) and torch.equal(vT, vr)


REV_CONFIGS = [
    (dict(), 2),
    (dict(v_reset=None), 3),
    (dict(surrogate=ATan(), detach_reset=True), 4),
    (dict(tau=4.0, decay_input=False, v_reset=-0.5), 2),
    (dict(surrogate=ATan()), 2),  # ATan without detach_reset
    (dict(v_reset=None, surrogate=ATan(), decay_input=False), 3),
]


def _run_rev(backend, x, p, v0):
    x = x.detach().clone().requires_grad_()
    v0 = None if v0 is None else v0.detach().clone().requires_grad_()
    y, vT = dispatch.revlif_multistep(x, p, v0, backend)
    (y * _weights(y, 3)).sum().add((vT * _weights(vT, 4)).sum()).backward()
    return y.detach(), vT.detach(), x.grad, None if v0 is None else v0.grad


@pytest.mark.parametrize("T", [1, 4, 8, 64])
@pytest.mark.parametrize("cfg", range(len(REV_CONFIGS)))
def test_revlif_exact_numba_matches_reference(T, cfg):
    lif_kw, groups = REV_CONFIGS[cfg]
    p = RevLIFParams(lif=LIFParams(**lif_kw), groups=groups)
    g = torch.Generator().manual_seed(1000 + 10 * T + cfg)
    x = torch.randn(T, 3, groups * 5, 3, generator=g) * 1.5 + 0.5  # [T, B, C, W], M = 15 (odd)
    v0 = torch.randn(3, groups * 5, 3, generator=g) * 0.5 if cfg % 2 else None
    ref = _run_rev("reference", x, p, v0)
    out = _run_rev("numba", x, p, v0)
    assert torch.equal(out[0], ref[0]), "outputs y differ"
    assert torch.equal(out[1], ref[1]), "final state differs"
    _rel_close(out[2], ref[2])
    if v0 is not None:
        _rel_close(out[3], ref[3])


@pytest.mark.parametrize("sum_loss", [True, False])
@pytest.mark.parametrize("T, M", [(9, 2085), (33, 600)])
def test_revlif_numba_several_blocks_and_partial_last_block(sum_loss, T, M):
    """M spans several parallel blocks (the last one partial) and T crosses a packed byte: the
    kernels (which prefetch the next step's rows of each block) still match the reference, with
    the gradient of ``y.sum()`` (the same at every step) and with a full per-step gradient; for a
    short sequence (the LIF blocks) and a long one (the small long-sequence blocks)."""
    from edgesnn.kernels.numba_prefetch import SHORT_ROW_BYTES
    from edgesnn.kernels.numba_revlif import revlif_block_size

    p = RevLIFParams(groups=2)
    blk = revlif_block_size(M, T)
    assert M > 2 * blk and M % blk and 4 * blk <= SHORT_ROW_BYTES  # 3 blocks, short rows: prefetched
    g = torch.Generator().manual_seed(5)
    x = torch.randn(T, 2, 2 * M, generator=g) * 1.5 + 0.5
    outs = []
    for backend in ("reference", "numba"):
        xr = x.clone().requires_grad_()
        y, vT = dispatch.revlif_multistep(xr, p, None, backend)
        (y.sum() if sum_loss else (y * _weights(y, 6)).sum()).backward()
        outs.append((y.detach(), vT.detach(), xr.grad))
    (ry, rv, rg), (ny, nv, ng) = outs
    assert torch.equal(ny, ry) and torch.equal(nv, rv)
    _rel_close(ng, rg)


@pytest.mark.parametrize("mode", ["exact", "float"])
def test_revlif_numba_large_units_compute_the_surrogate_inline(mode):
    """A long row on a short sequence: units of several thousand neurons, above the size up to
    which the backward computes the surrogate derivative in a loop of its own, so the other VJP
    loops run (the last unit partial); outputs bit for bit, gradients as the reference's."""
    from edgesnn.kernels.numba_revlif import SPLIT_SURROGATE_UNITS, revlif_block_size

    T = 3
    M = 4 * get_num_threads()["numba"] * (SPLIT_SURROGATE_UNITS + 1000) + 1000  # units ~2000 (block_size)
    blk = revlif_block_size(M, T)
    assert blk > SPLIT_SURROGATE_UNITS and M % blk
    g = torch.Generator().manual_seed(11)
    x = torch.randn(T, 1, 2 * M, generator=g) * 1.5 + 0.5
    p = RevLIFParams(groups=2, mode=mode)
    outs = []
    for backend in ("reference", "numba"):
        xr = x.clone().requires_grad_()
        y, vT = dispatch.revlif_multistep(xr, p, None, backend)
        (y * _weights(y, 3)).sum().backward()
        outs.append((y.detach(), vT.detach(), xr.grad))
    (ry, rv, rg), (ny, nv, ng) = outs
    if mode == "exact":
        assert torch.equal(ny, ry) and torch.equal(nv, rv)
    _rel_close(ng, rg)


@pytest.mark.parametrize("T", [1, 4, 8])
@pytest.mark.parametrize("groups", [2, 3])
def test_revlif_float_numba_matches_reference(T, groups):
    p = RevLIFParams(lif=LIFParams(v_reset=None), groups=groups, alpha=1.5, beta=0.75, gamma=0.75, mode="float")
    _float_numba_matches_reference(p, T, seed=77 + T + groups)


def _float_numba_matches_reference(p: RevLIFParams, T: int, seed: int) -> None:
    """Float-mode RevLIF on ``[T, 2, groups * 7]``: numba's outputs equal the reference's bit for
    bit, the gradients within float rounding."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, 2, p.groups * 7, generator=g) + 0.5
    v0 = torch.randn(2, p.groups * 7, generator=g) * 0.3
    ref = _run_rev("reference", x, p, v0)
    out = _run_rev("numba", x, p, v0)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
    _rel_close(out[2], ref[2])
    _rel_close(out[3], ref[3])


# float mode over the reset kinds (soft; hard to 0 and to -0.3), both surrogates, detach_reset,
# decay_input and 2-4 groups: 9 rows in which every pair of values of any two of these occurs
_FLOAT_CONFIGS = [
    (0.0, Sigmoid(), True, True, 2), (0.0, ATan(), False, False, 3), (0.0, ATan(), True, True, 4),
    (None, Sigmoid(), False, True, 2), (None, ATan(), True, False, 3), (None, ATan(), True, True, 4),
    (-0.3, ATan(), True, False, 2), (-0.3, Sigmoid(), False, True, 3), (-0.3, Sigmoid(), False, False, 4),
]


@pytest.mark.parametrize("v_reset, surrogate, detach_reset, decay_input, groups", _FLOAT_CONFIGS)
def test_revlif_float_numba_matches_reference_configs(v_reset, surrogate, detach_reset, decay_input, groups):
    lif = LIFParams(v_reset=v_reset, surrogate=surrogate, detach_reset=detach_reset, decay_input=decay_input)
    p = RevLIFParams(lif=lif, groups=groups, alpha=1.5, beta=0.75, gamma=0.5, mode="float")
    _float_numba_matches_reference(p, 6, seed=7 + groups)


@pytest.mark.parametrize("mode", ["exact", "float"])
def test_revlif_kernel_contract_bits_and_reconstruction(mode):
    """The raw kernels against the torch reference kernels: packed bits, counts, v0_rec."""
    p = RevLIFParams(groups=3, mode=mode, **({} if mode == "exact" else {"beta": 0.75}))
    g = torch.Generator().manual_seed(5)
    T = 13  # bits straddle two bytes
    xg = to_groups(torch.randn(T, 2, 3 * 11, generator=g) * 2 + 0.5, 3)
    v0 = torch.zeros(2, 3, 11)
    a = numba_cpu.revlif_forward(xg, v0, p)
    b = torch_forward(xg, v0, p)
    for u, w in zip(a, b):
        assert (u is None) == (w is None)
        if u is not None:
            assert u.dtype == w.dtype and torch.equal(u, w)
    if mode == "exact":
        assert a[2].shape == (2, 2, 3, 11) and int(a[2].sum()) > 0
    gy, gv = torch.randn(a[0].shape, generator=g), torch.randn(a[1].shape, generator=g)
    c = numba_cpu.revlif_backward(a[0], a[1], a[2], gy, gv, p)
    d = torch_backward(b[0], b[1], b[2], gy, gv, p)
    if mode == "exact":
        assert torch.equal(c[2], v0), "exact inverse must recover v0 bit for bit"
    assert torch.equal(c[2], d[2])
    _rel_close(c[0], d[0])
    _rel_close(c[1], d[1])
    if mode == "float":
        assert torch.equal(c[3], d[3]) and torch.equal(c[3], a[3])


def test_revlif_float_reconstruction_failure_is_detected():
    """Float mode at large T loses the inverse; the numba backward must raise like the torch one."""
    p = RevLIFParams(groups=2, mode="float", beta=0.5)
    x = (torch.randn(64, 2, 8, generator=torch.Generator().manual_seed(3)) * 2 + 0.5).requires_grad_()
    for backend in ("torch", "numba"):
        y, _ = dispatch.revlif_multistep(x, p, None, backend)
        with pytest.raises(ReconstructionError):
            y.sum().backward()


def test_auto_backend_resolution_and_fallbacks():
    x32 = torch.zeros(2, 1, 4)
    assert dispatch.resolve_backend("auto", x32) == "numba"
    assert dispatch.resolve_backend("auto", x32.double()) == "torch"
    assert dispatch.resolve_backend("torch", x32) == "torch"
    with pytest.raises(ValueError):
        dispatch.resolve_backend("fast", x32)
    # float64 runs on torch under auto, and the explicit numba backend refuses it with a clear error
    x64 = torch.randn(4, 2, 6, dtype=torch.float64)
    s, _ = dispatch.lif_multistep(x64, LIFParams(), backend="auto")
    assert s.dtype == torch.float64
    with pytest.raises(TypeError, match="float32"):
        dispatch.lif_multistep(x64, LIFParams(), backend="numba")
    # the modules' default backend is auto -> numba on CPU float32, same values as the reference
    x = torch.randn(6, 2, 8) + 0.5
    assert torch.equal(LIF()(x), LIF(backend="reference")(x))
    assert torch.equal(RevLIF()(x), RevLIF(backend="reference")(x))


def test_torch_compile_fullgraph():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 12), LIF(backend="numba"), torch.nn.Linear(12, 12),
                                RevLIF(groups=2, backend="numba"))
    x = torch.randn(5, 3, 12)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref = model(x)
    ref.sum().backward()
    assert torch.equal(out, ref)
    for g, p in zip(grads, model.parameters()):
        _rel_close(g, p.grad)
    assert float(grads[0].abs().sum()) > 0  # the gradient reached the first layer


def test_jit_trace_records_the_custom_ops():
    """Eager calls run the kernels through a plain autograd.Function; a traced graph must still
    record the registered ops (a Function calling Numba cannot be traced), and replay them."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 12), LIF(backend="numba"), torch.nn.Linear(12, 12),
                                RevLIF(groups=2, backend="numba"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace is deprecated in recent torch
        traced = torch.jit.trace(model, torch.randn(5, 3, 12), check_trace=False)
    kinds = {n.kind() for n in traced.inlined_graph.nodes()}
    assert {"edgesnn::lif_fwd", "edgesnn::revlif_fwd"} <= kinds and "prim::PythonOp" not in kinds
    x = torch.randn(5, 3, 12)
    assert torch.equal(traced(x), model(x))


def test_threads_are_explicit():
    before = get_num_threads()
    try:
        set_num_threads(1)
        assert get_num_threads() == {"numba": 1, "torch": 1}
        x = torch.randn(8, 4, 3000) + 0.5
        s1, v1 = dispatch.lif_multistep(x, LIFParams(), backend="numba")
        set_num_threads(before["numba"])
        s2, v2 = dispatch.lif_multistep(x, LIFParams(), backend="numba")
        assert torch.equal(s1, s2) and torch.equal(v1, v2)
        with pytest.raises(ValueError):
            set_num_threads(0)
    finally:
        import numba

        numba.set_num_threads(before["numba"])
        torch.set_num_threads(before["torch"])
