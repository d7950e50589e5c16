"""Refusing second-order gradients in the hand-written backward passes.

The memory-lean backwards (``torch``, ``numba``, ``cuda``) compute their gradients from saved values
without an autograd graph, so differentiating *through* them (``create_graph=True``, e.g. an
input-gradient penalty) would silently give zero second-order terms. :func:`first_order_only`
marks their returned gradients the way ``@torch.autograd.function.once_differentiable`` does: a
``create_graph=True`` backward still works, and only a second backward that actually reaches
these gradients raises one line naming the layer and the backend. The ``reference`` backend
(plain autograd) supports second-order gradients.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from .checks import eager

__all__ = ["first_order_only", "second_order_message"]


def second_order_message(layer: str, backend: str) -> str:
    """The one-line error a second backward through ``layer``'s ``backend`` backward raises."""
    return (
        f"{layer} backend {backend!r}: second-order gradients (create_graph=True, differentiating a gradient) are "
        f"not supported; use backend='reference'"
    )


def _alias(g: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A graph-free alias of ``g`` that requires grad (so the error node gets an input)."""
    if g is None:
        return None
    g = g.detach()
    g.requires_grad_(True)
    return g


def first_order_only(grads: Sequence[Optional[torch.Tensor]], layer: str, backend: str) -> Tuple[Optional[torch.Tensor], ...]:
    """``grads`` (same values, ``None`` kept) behind an autograd node that raises
    :func:`second_order_message` if a later backward goes through it.

    Only while grad mode is on inside a backward (``create_graph=True``) in an eager call; otherwise
    ``grads`` is returned as it is (no copy: the tensors are aliased, not cloned).
    """
    grads = tuple(grads)
    if not torch.is_grad_enabled() or not eager():
        return grads
    err = torch._C._functions.DelayedError(second_order_message(layer, backend).encode(), len(grads))
    return tuple(err(*[_alias(g) for g in grads]))
