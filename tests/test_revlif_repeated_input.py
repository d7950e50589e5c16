"""A RevLIF input repeated over time (``x.unsqueeze(0).expand(T, ...)``, stride 0 on dim 0: the direct
encoding of a static image) runs the Numba kernel as it is: the kernel reads its one step at every
step, with no ``[T, B, ...]`` copy, and outputs, states and gradients are bit for bit those of the
same values given contiguous (the old path), in exact and float mode, with and without ``v0``.

Before, ``dispatch._revlif_kernel`` made every input contiguous. The RevLIF op saves no input (its
output, final state and bits or counts only), so that copy was never kept until the backward, but
each forward allocated and filled ``T`` copies of the step (``T x B x N x 4`` bytes at the layer's
peak; under ``no_grad`` the whole transient beside the output).
"""

from __future__ import annotations

import os

import pytest
import torch

from _rss_measure import measured_and_predicted  # tests/ helper (pytest puts tests/ on sys.path)
from edgesnn.functional.revlif import RevLIFParams
from edgesnn.kernels import dispatch
from edgesnn.memory import SavedTensorCounter

pytestmark = pytest.mark.skipif(not dispatch.numba_available(), reason="needs the Numba kernels")

FLOAT = dict(alpha=0.9, beta=0.8, gamma=1.0)  # float mode reconstructs within tolerance over these T


def _params(mode: str, groups: int) -> RevLIFParams:
    return RevLIFParams(groups=groups, mode=mode, **({} if mode == "exact" else FLOAT))


def _run(values, v0_values, T, p, expanded, backend="numba", view=lambda a: a):
    """``(y, v_T, grad of the leaf, grad of v0, saved bytes)`` of RevLIF on ``view(leaf)`` repeated ``T``
    times, as an expanded view or as a contiguous copy; the loss weighs every step differently."""
    leaf = values.clone().requires_grad_()
    v0 = None if v0_values is None else v0_values.clone().requires_grad_()
    x0 = view(leaf)
    x = x0.unsqueeze(0).expand(T, *x0.shape)
    with SavedTensorCounter() as counter:
        y, v_T = dispatch.revlif_multistep(x if expanded else x.contiguous(), p, v0, backend)
    saved = counter.bytes(exclude=[leaf] + ([] if v0 is None else [v0]))
    counter._keep.clear()
    w = torch.linspace(-1.0, 1.0, y.numel()).view(y.shape)
    ((y * w).sum() + (v_T * 0.25).sum()).backward()
    assert torch.equal(leaf.detach(), values)  # the input is not written
    return y.detach(), v_T.detach(), leaf.grad, None if v0 is None else v0.grad, saved


@pytest.mark.parametrize("given_v0", [False, True])
@pytest.mark.parametrize("groups", [2, 4])
@pytest.mark.parametrize("mode", ["exact", "float"])
def test_expanded_input_matches_contiguous_bit_for_bit(mode, groups, given_v0):
    T, B, C, H = (6, 3, 8, 5)
    g = torch.Generator().manual_seed(groups * 10 + given_v0)
    x0 = torch.randn(B, C, H, generator=g) * 1.5
    v0 = torch.rand(B, C, H, generator=g) * 0.5 if given_v0 else None
    p = _params(mode, groups)
    y, v_T, gx, gv, saved = _run(x0, v0, T, p, True)
    y_c, v_T_c, gx_c, gv_c, saved_c = _run(x0, v0, T, p, False)
    assert torch.equal(y, y_c) and torch.equal(v_T, v_T_c) and torch.equal(gx, gx_c)
    assert (gv is None and gv_c is None) or torch.equal(gv, gv_c)
    assert saved == saved_c  # the op keeps its output, v_T and bits / counts, never its input
    y_r, v_T_r, gx_r, gv_r, _ = _run(x0, v0, T, p, True, backend="reference")
    assert torch.equal(y, y_r) and torch.equal(v_T, v_T_r)  # outputs and state as the reference
    torch.testing.assert_close(gx, gx_r, rtol=1e-5, atol=1e-5)  # the input gradient, summed over T
    if given_v0:
        torch.testing.assert_close(gv, gv_r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["exact", "float"])
def test_expanded_input_layouts(mode):
    """A step that is itself strided or transposed (then grouping it copies, as before), a scalar
    expanded everywhere, a long sequence (units of 256 neurons, more than one byte of bits) and an
    empty batch."""
    cases = [  # (leaf values, the step [B, C, ...] as a view of the leaf, T)
        (torch.randn(6, 3, 4), lambda a: a.transpose(0, 1), 5),
        (torch.randn(3, 8, 7), lambda a: a[:, ::2], 4),
        (torch.tensor(0.7), lambda a: a.expand(2, 4, 3), 5),
        (torch.randn(2, 4, 300), lambda a: a, 40 if mode == "exact" else 6),
        (torch.randn(0, 4, 2), lambda a: a, 3),
    ]
    p = _params(mode, 2)
    for values, view, T in cases:
        y, v_T, gx, _, _ = _run(values, None, T, p, True, view=view)
        y_c, v_T_c, gx_c, _, _ = _run(values, None, T, p, False, view=view)
        assert torch.equal(y, y_c) and torch.equal(v_T, v_T_c) and torch.equal(gx, gx_c), tuple(values.shape)
        assert y.is_contiguous() and y.shape == (T, *view(values).shape)


@pytest.mark.parametrize("grad", [True, False])
def test_kernel_reads_the_callers_step(monkeypatch, grad):
    """The forward kernel gets the caller's memory (stride 0 along T), not a ``[T, B, ...]`` copy,
    whether or not the input needs a gradient; a contiguous input is passed as it is."""
    from edgesnn.kernels import numba_revlif

    seen = []
    real = numba_revlif.revlif_forward

    def spy(xg, v0, p, **kw):
        seen.append((xg.data_ptr(), xg.stride(0), tuple(xg.shape)))
        return real(xg, v0, p, **kw)

    monkeypatch.setattr(numba_revlif, "revlif_forward", spy)
    T, B, N = 7, 2, 64
    x0 = torch.randn(B, N, requires_grad=grad)
    y, _ = dispatch.revlif_multistep(x0.unsqueeze(0).expand(T, B, N), _params("exact", 2), None, "numba")
    assert seen == [(x0.data_ptr(), 0, (T, B, 2, N // 2))]
    if grad:
        y.sum().backward()
        assert x0.grad.shape == (B, N)
    xc = torch.randn(T, B, N)
    dispatch.revlif_multistep(xc, _params("exact", 2), None, "numba")
    assert seen[-1][0] == xc.data_ptr()


_NO_GRAD_PEAK = """
import json, os, sys
import torch
torch.set_num_threads(1)
from edgesnn.planner.runtime import lean_allocator
if not lean_allocator():
    print(json.dumps(None)); sys.exit()
from edgesnn.memory import peak_rss_bytes, reset_peak_rss
from edgesnn.nn import RevLIF
T, B, N = 16, 8, 16384
node = RevLIF(backend="numba")
x0 = torch.rand(B, N)
with torch.no_grad():
    node(x0.unsqueeze(0).expand(T, B, N))  # warm up: kernel loaded, its output buffer pooled
    reset_peak_rss(); base = peak_rss_bytes()
    y = node(x0.unsqueeze(0).expand(T, B, N))
print(json.dumps([peak_rss_bytes() - base, T * B * N * 4]))
"""


def test_no_copy_in_the_forward_peak_rss():
    """Peak RSS of a ``no_grad`` forward on a repeated ``[16, 8, 16384]`` input (8 MiB over T), the
    output served by the warm buffer pool, in a fresh process: below half the ``[T, B, N]`` bytes
    (measured: 1.2 MiB; before, with the copy: 9.2 MiB)."""
    peak, dense = measured_and_predicted(_NO_GRAD_PEAK, env={**os.environ, "NUMBA_NUM_THREADS": "1"})
    assert peak < dense / 2, (peak, dense)
