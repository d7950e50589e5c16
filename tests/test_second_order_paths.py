"""The second-order refusal lies on the paths autograd actually runs: ``torch.autograd.grad(penalty, [W])``
and ``torch.autograd.functional.jvp`` / ``hvp`` run only the nodes on a path to the tensors they ask for,
and they returned the node's second-order share as silent zeros while the refusal hung off graph-free
aliases of the gradients."""

from __future__ import annotations

import pytest
import torch

from edgesnn.kernels import dispatch
from edgesnn.nn import LIF, RevLIF

FAST_BACKENDS = ["torch"] + (["numba"] if dispatch.numba_available() else [])


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("cls", [LIF, RevLIF])
def test_autograd_grad_of_a_penalty_for_chosen_tensors_raises_too(cls, backend):
    """``torch.autograd.grad(penalty, [W])`` runs only the nodes on a path to ``W``: the refusal must lie on
    that path (it returned the penalty's gradient without the node's second-order terms: 39.3 for LIF where
    the reference gives 200.8)."""
    torch.manual_seed(0)
    W = torch.randn(8, 6, requires_grad=True)
    x = (torch.randn(5, 3, 6) * 2).requires_grad_()
    gx, = torch.autograd.grad(cls(backend=backend)(x @ W.T).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError) as info:
        torch.autograd.grad(gx.square().sum(), W)
    assert f"{cls.__name__} backend {backend!r}: second-order" in _one_line(info)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("cls", [LIF, RevLIF])
def test_autograd_functional_jvp_and_hvp_raise_instead_of_zeros(cls, backend):
    """``torch.autograd.functional.jvp`` / ``hvp`` differentiate a ``create_graph=True`` gradient with
    respect to the output gradient they fed in; they returned all zeros (``allow_unused``)."""
    from torch.autograd import functional as AF

    torch.manual_seed(0)
    node = cls(backend=backend)
    x, u = torch.randn(4, 2, 4) * 2, torch.randn(4, 2, 4)
    for call in (lambda: AF.jvp(node, x, u), lambda: AF.hvp(lambda a: node(a).square().sum(), x, u)):
        with pytest.raises(RuntimeError, match="second-order"):
            call()
    jvp_ref = AF.jvp(cls(backend="reference"), x, u)[1]
    assert float(jvp_ref.abs().sum()) > 0  # (what the refusal stands in for is not zero)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("cls", [LIF, RevLIF])
def test_a_loss_linear_in_the_spikes_still_meets_the_refusal(cls, backend):
    """``y.sum()`` feeds an output gradient without a graph, so the refusal needs a saved tensor whose graph
    leads to the input: the torch backend's LIF saved only ``h`` and returned 30.0 where the reference gives
    109.8 (``autograd.grad`` of an input-gradient penalty for ``W``), and MAML's meta-gradient silently."""
    from torch.func import functional_call, grad

    torch.manual_seed(0)
    W = torch.randn(8, 6, requires_grad=True)
    x = (torch.randn(5, 3, 6) * 2).requires_grad_()
    gx, = torch.autograd.grad(cls(backend=backend)(x @ W.T).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError) as info:
        torch.autograd.grad(gx.square().sum(), W)
    assert f"{cls.__name__} backend {backend!r}: second-order" in _one_line(info)

    lin, node = torch.nn.Linear(6, 8), cls(backend=backend)
    inner = grad(lambda p: node(functional_call(lin, p, (x.detach(),))).sum())(dict(lin.named_parameters()))
    with pytest.raises(RuntimeError, match="second-order"):
        inner["weight"].square().sum().backward()
    ref, = torch.autograd.grad(torch.autograd.grad(cls(backend="reference")(x @ W.T).sum(), x, create_graph=True)[0]
                               .square().sum(), W)
    assert float(ref.abs().sum()) > 0  # (what the refusal stands in for is not zero)


def test_the_torch_lif_first_order_gradients_and_an_in_place_state_reset_are_unchanged():
    """The refusal's anchor changes no gradient, and a state the caller resets in place before the backward
    (``node.v[done] = 0``, ending finished episodes) does not trip autograd's version check (saving the
    returned ``v_T`` as the anchor did)."""
    torch.manual_seed(0)
    x = torch.randn(6, 2, 5, requires_grad=True)
    grads = {}
    for backend in ("torch", "reference"):
        node = LIF(backend=backend)
        y = node(x)
        grads[backend], = torch.autograd.grad((y * torch.arange(5.0)).sum(), x)
    assert torch.allclose(grads["torch"], grads["reference"], atol=1e-6)
    node = LIF(backend="torch", stateful=True)
    y = node(x)
    node.v[0] = 0.0  # (in place, before the backward)
    y.sum().backward()
    assert torch.equal(x.grad, torch.autograd.grad(LIF(backend="torch")(x).sum(), x)[0])
