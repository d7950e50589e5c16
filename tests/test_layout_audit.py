"""Layout audit: a LIF input expanded over time (``x.unsqueeze(0).expand(T, ...)``, stride 0 on dim 0)
runs the Numba kernel as it is (with or without a gradient): autograd keeps the expanded view, not a
``[T, B, ...]`` copy, and spikes, states and gradients are bit for bit those of the same values
given contiguous.

Before, ``dispatch._lif_kernel`` made every input contiguous: for an expanded input autograd then
kept a ``[T, B, ...]`` copy (T times the input's bytes) until the backward, although the kernels
read such an input from its first step. The gradient layouts (``y.sum()``'s expanded ones, a strided slice, a
non-contiguous ``grad_outputs``, an output used twice) and stateful calls are covered too.
Every backend's output is contiguous, whatever the input's layout.
"""

from __future__ import annotations

import pytest
import torch

from edgesnn.functional.lif import LIFParams
from edgesnn.kernels import dispatch
from edgesnn.memory import SavedTensorCounter
from edgesnn.nn import LIF

pytestmark = pytest.mark.skipif(not dispatch.numba_available(), reason="needs the Numba kernels")


def _loss_sum(y: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    y.sum().backward()  # an expanded (stride 0) incoming gradient
    return x0.grad


def _loss_slice(y: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    y[::2].sum().backward()
    return x0.grad


def _loss_twice(y: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    ((y * 0.5).sum() + (y[:, :1] * 2.0).sum() + y.mean()).backward()  # the output used twice
    return x0.grad


def _grad_transposed(y: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    g = torch.linspace(-1.0, 1.0, y.numel()).view(y.shape[1], y.shape[0], *y.shape[2:]).transpose(0, 1)
    return torch.autograd.grad(y, x0, g)[0]  # non-contiguous grad_outputs


def _grad_step(y: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    g = torch.linspace(-1.0, 1.0, 2 * y.numel()).view(*y.shape[:-1], 2 * y.shape[-1])[..., ::2]
    return torch.autograd.grad(y, x0, g)[0]


GRADS = [_loss_sum, _loss_slice, _loss_twice, _grad_transposed, _grad_step]


def _run(x0_values: torch.Tensor, T: int, expanded: bool, grad, node: LIF, calls: int = 1):
    """``(y, grad of x0, saved bytes)`` of ``node`` on ``x0`` repeated over ``T`` steps, as an
    expanded view or as a contiguous copy (``calls`` calls of a stateful node, outputs concatenated)."""
    x0 = x0_values.clone().requires_grad_()
    outs = []
    with SavedTensorCounter() as counter:
        for _ in range(calls):
            x = x0.unsqueeze(0).expand(T, *x0.shape)
            outs.append(node(x if expanded else x.contiguous()))
    y = torch.cat(outs)
    saved = counter.bytes(exclude=[x0])
    counter._keep.clear()
    return y.detach(), grad(y, x0), saved


@pytest.mark.parametrize("grad", GRADS, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("stateful", [None, True])
def test_expanded_input_is_not_copied_and_matches_contiguous_bit_for_bit(grad, stateful):
    T, B, N = 6, 3, 40
    x0 = torch.randn(B, N) * 1.5
    calls = 2 if stateful else 1
    kw = dict(tau=2.0, v_threshold=0.5, backend="numba", stateful=stateful)
    y, g, saved = _run(x0, T, True, grad, LIF(**kw), calls)
    y_c, g_c, saved_c = _run(x0, T, False, grad, LIF(**kw), calls)
    y_r, g_r, _ = _run(x0, T, False, grad, LIF(**dict(kw, backend="reference")), calls)
    assert torch.equal(y, y_c) and torch.equal(y, y_r)  # spikes bit for bit, and as the reference
    assert torch.equal(g, g_c)  # the same kernel gradient, bit for bit
    torch.testing.assert_close(g, g_r, rtol=1e-5, atol=1e-6)
    step = B * N * 4
    # kept per call: v0 [B, N] only (the expanded input is the caller's x0, not a copy); the
    # contiguous run keeps its [T, B, N] input as well
    assert saved <= calls * step, (saved, saved_c)
    assert saved_c >= calls * T * step


def test_expanded_input_forms_through_the_functional_dispatch():
    """Soft reset, ATan, no input decay; a step that is itself strided or expanded, a scalar expanded
    everywhere, a block count above one (K > 16k neurons) and an empty batch."""
    p = LIFParams(3.0, 0.3, None, False, True, "atan")
    cases = [  # (leaf values, the step x0 [B, ...] as a view of the leaf, T)
        (torch.randn(8, 5, 14), lambda a: a[..., ::2].transpose(0, 1), 4),
        (torch.tensor(0.7), lambda a: a.expand(3, 9), 5),
        (torch.randn(4, 1, 6), lambda a: a.expand(4, 3, 6), 3),
        (torch.randn(2, 40000), lambda a: a, 3),
        (torch.randn(0, 5), lambda a: a, 4),
    ]
    for values, view, T in cases:
        got = []
        for contiguous in (False, True):
            leaf = values.clone().requires_grad_()
            x0 = view(leaf)
            x = x0.unsqueeze(0).expand(T, *x0.shape)
            with SavedTensorCounter() as counter:
                s, v_T = dispatch.lif_multistep(x.contiguous() if contiguous else x, p, None, "numba")
            saved = counter.bytes(exclude=[leaf])
            counter._keep.clear()
            (s.sum() + (v_T * 0.25).sum()).backward()
            assert torch.equal(leaf.detach(), values)  # the input is not written
            got.append((s, v_T.detach(), leaf.grad, saved))
        (s, v_T, g, saved), (s_c, v_T_c, g_c, saved_c) = got
        assert torch.equal(s, s_c) and torch.equal(v_T, v_T_c) and torch.equal(g, g_c), tuple(x0.shape)
        s_r, v_T_r = dispatch.lif_multistep(x.detach().contiguous(), p, None, "reference")
        assert torch.equal(s, s_r) and torch.equal(v_T, v_T_r)
        assert s.is_contiguous() and s.shape == x.shape
        assert saved <= x0.numel() * 4 and saved_c >= T * x0.numel() * 4, (tuple(x0.shape), saved, saved_c)


def test_expanded_input_keeps_one_step_in_autograd_for_a_large_layer():
    """Outputs from the buffer pool (>= 1 MiB): what autograd keeps is independent of T."""
    T, B, N = 8, 4, 16384
    x0 = torch.randn(B, N, requires_grad=True)
    node = LIF(tau=2.0, v_threshold=0.5, backend="numba")
    with SavedTensorCounter() as counter:
        y = node(x0.unsqueeze(0).expand(T, B, N))
    saved = counter.bytes(exclude=[x0])
    counter._keep.clear()
    assert saved <= B * N * 4  # v0 only (was T x B x N x 4 more: the copy)
    y.sum().backward()
    ref = x0.detach().clone().requires_grad_()
    LIF(tau=2.0, v_threshold=0.5, backend="numba")(ref.unsqueeze(0).expand(T, B, N).contiguous()).sum().backward()
    assert torch.equal(x0.grad, ref.grad)


@pytest.mark.parametrize("grad", [True, False])
def test_kernel_reads_the_callers_step_with_or_without_gradient(monkeypatch, grad):
    """The forward kernel gets the caller's memory (stride 0 along T), not a ``[T, B, ...]`` copy,
    whether or not the input needs a gradient (before: without one, e.g. ``evaluate()`` of a model
    whose first layer is the node, the input was copied); the same spikes and state as the
    contiguous input, bit for bit; a contiguous input is passed as it is."""
    from edgesnn.kernels import numba_cpu

    seen = []
    real = numba_cpu.lif_forward

    def spy(x, v0, p, **kw):
        seen.append((x.data_ptr(), x.stride(0)))
        return real(x, v0, p, **kw)

    monkeypatch.setattr(numba_cpu, "lif_forward", spy)
    T, B, N = 7, 3, 50
    x0 = (torch.randn(B, N) * 1.5).requires_grad_(grad)
    p = LIFParams(tau=2.0, v_threshold=0.5)
    s, v_T = dispatch.lif_multistep(x0.unsqueeze(0).expand(T, B, N), p, None, "numba")
    assert seen == [(x0.data_ptr(), 0)]
    xc = x0.detach().unsqueeze(0).expand(T, B, N).contiguous()
    s_c, v_T_c = dispatch.lif_multistep(xc, p, None, "numba")
    assert seen[-1] == (xc.data_ptr(), B * N)
    assert torch.equal(s, s_c) and torch.equal(v_T, v_T_c)


@pytest.mark.parametrize("backend", ["reference", "torch", "numba"])
@pytest.mark.parametrize("node", ["LIF", "RevLIF"])
def test_outputs_are_contiguous_whatever_the_input_layout(node, backend):
    """Every backend returns a contiguous ``[T, B, ...]``: the torch backend's outputs took a
    permuted input's strides, so ``y.view(T * B, N)`` worked in float32 (numba) and failed after
    ``model.double()`` (where ``auto`` picks the torch backend)."""
    from edgesnn.nn import RevLIF

    cls = LIF if node == "LIF" else RevLIF
    T, B, N = 4, 3, 8
    torch.manual_seed(0)
    x = (torch.randn(B, T, N) * 2).transpose(0, 1).requires_grad_()  # [B, T, N] data read as [T, B, N]
    y = cls(backend=backend)(x)
    assert y.is_contiguous()
    want = cls(backend="reference")(x.detach().contiguous())
    torch.testing.assert_close(y.view(T * B, N), want.view(T * B, N), rtol=1e-6, atol=1e-6)
