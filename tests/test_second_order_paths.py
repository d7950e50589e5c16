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
