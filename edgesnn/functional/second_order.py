"""Refusing second-order gradients in the hand-written backward passes.

The memory-lean backwards (``torch``, ``numba``, ``cuda``) compute their gradients from saved values
without an autograd graph, so differentiating *through* them (``create_graph=True``, e.g. an
input-gradient penalty) would silently give zero second-order terms. :func:`first_order_only`
marks their returned gradients the way ``@torch.autograd.function.once_differentiable`` does: a
``create_graph=True`` backward still works, and only a second backward that actually reaches
these gradients raises one line naming the layer and the backend. The ``reference`` backend
(plain autograd) supports second-order gradients.

Inside ``torch.func`` transforms (which run every backward with ``create_graph=True``) one
transform gets the gradients as they are (when plain autograd records below it, e.g. ``.backward()`` of
a loss of a ``torch.func.grad`` result, they carry the refusal on that level); nested ones
(``grad(grad(f))``) raise the same line, and
:func:`under_vmap` and :func:`under_forward_ad` let the dispatch refuse ``vmap`` and forward-mode AD in
one line each.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from .checks import eager

__all__ = ["first_order_only", "second_order_message", "func_transform_depth", "refuse_nested_transforms", "under_vmap",
           "under_forward_ad", "vmap_refused", "batched_backward_refused", "forward_ad_refused", "refuse_batched", "unwrapped"]


def _node_message(layer: str, backend: str, text: str) -> str:
    """One line as every refusal here words it: ``"LAYER backend 'BACKEND': TEXT"``."""
    return f"{layer} backend {backend!r}: {text}"


def second_order_message(layer: str, backend: str) -> str:
    """The one-line error a second backward through ``layer``'s ``backend`` backward raises."""
    return _node_message(layer, backend, "second-order gradients (create_graph=True, differentiating a gradient) are "
                                         "not supported; use backend='reference'")


def vmap_refused(layer: str, backend: str) -> RuntimeError:
    """The one-line error for ``torch.func.vmap`` over a node (any backend)."""
    return RuntimeError(_node_message(
        layer, backend, "torch.func.vmap over the node (e.g. per-sample gradients) is not supported (the loops run "
                        "whole batches); torch.func.grad, grad_and_value and vjp are supported"))


def batched_backward_refused(layer: str, backend: str) -> RuntimeError:
    """The one-line error for a hand-written backward run batched (``jacrev``, ``is_grads_batched``)."""
    return RuntimeError(_node_message(
        layer, backend, "its backward cannot run batched (torch.func.jacrev, torch.autograd.grad with "
                        "is_grads_batched=True): it takes one output gradient at a time; use backend='reference' "
                        "(plain autograd), or one backward per output row"))


def forward_ad_refused(layer: str, backend: str) -> RuntimeError:
    """The one-line error for forward-mode AD through a node (any backend)."""
    return RuntimeError(_node_message(
        layer, backend, "forward-mode AD (torch.func.jvp, jacfwd, torch.autograd.forward_ad dual tensors) is not "
                        "supported (the spike's surrogate gradient is defined for reverse mode only); use .backward(), "
                        "torch.autograd.grad or torch.func.grad / vjp"))


def _alias(g: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A graph-free alias of ``g`` that requires grad (so the error node gets an input)."""
    if g is None:
        return None
    g = g.detach()
    g.requires_grad_(True)
    return g


def func_transform_depth() -> int:
    """How many ``torch.func`` transforms (``grad``, ``vjp``, ``vmap``, ...) are active: 0 outside."""
    return int(torch._C._functorch.get_dynamic_layer_stack_depth())


def under_vmap(x: torch.Tensor) -> bool:
    """``x`` (any shape) is batched by ``torch.func.vmap`` (at any level of the transforms' wrappers),
    or by the autograd engine's own vmap (``torch.autograd.grad(..., is_grads_batched=True)``)."""
    fw = torch._C._functorch
    while fw.is_functorch_wrapped_tensor(x):
        if fw.is_batchedtensor(x):
            return True
        x = fw.get_unwrapped(x)
    return bool(fw.is_legacy_batchedtensor(x))


def refuse_batched(tensors: Sequence[Optional[torch.Tensor]], layer: str, backend: str) -> None:
    """Raise :func:`batched_backward_refused` when a hand-written backward gets batched tensors (its backward run
    under ``vmap``: ``jacrev``, ``is_grads_batched=True``), which its loops would read as one
    gradient of a wrong shape. Not while compiling (the compiler traces no transforms' wrappers)."""
    if torch.compiler.is_compiling():
        return
    if any(t is not None and under_vmap(t) for t in tensors):
        raise batched_backward_refused(layer, backend)


def under_forward_ad(x: torch.Tensor) -> bool:
    """``x`` (any shape) carries a forward-mode tangent: a dual tensor of ``torch.autograd.forward_ad``,
    or an input inside ``torch.func.jvp`` / ``jacfwd``. The spike's surrogate gradient is defined for
    reverse mode only (a step function's own tangent is zero), so the nodes refuse these."""
    return torch.autograd.forward_ad.unpack_dual(x).tangent is not None


def refuse_nested_transforms(layer: str, backend: str) -> None:
    """Raise :func:`second_order_message` inside two or more nested ``torch.func`` transforms: a
    hand-written backward's gradients are constants to the outer one (``grad(grad(f))`` would get
    silently zero second-order terms). Called by the backwards that run inside a transform."""
    if func_transform_depth() > 1:
        raise RuntimeError(second_order_message(layer, backend))


def first_order_only(
    grads: Sequence[Optional[torch.Tensor]], layer: str, backend: str, anchors: Sequence[Optional[torch.Tensor]] = ()
) -> Tuple[Optional[torch.Tensor], ...]:
    """``grads`` (same values and shapes, ``None`` kept) behind an autograd node that raises
    :func:`second_order_message` if a later backward goes through it.

    ``anchors``: the tensors the true gradient of ``grads`` would flow into, with their graphs: the
    incoming output gradients and the saved tensors the backward read (the layer's input, or its
    outputs, whose graph leads to the input). They are the node's inputs as well, so a
    ``torch.autograd.grad(penalty, params)`` or a ``torch.autograd.functional.jvp`` / ``hvp``, which
    run only the nodes on a path to the tensors they ask for, still reach it and raise. (With the
    gradients' graph-free aliases alone, as ``once_differentiable`` does, such calls skipped the node
    and returned the second-order terms as silent zeros.)

    Only while grad mode is on inside a backward (``create_graph=True``) in an eager call; otherwise
    ``grads`` is returned as it is (no copy: the tensors are aliased, not cloned). Inside one
    ``torch.func`` transform (which runs every backward with ``create_graph=True``) the gradients
    are returned as they are, constants to the transform; inside nested ones it raises.
    """
    grads = tuple(grads)
    if not torch.is_grad_enabled() or not eager():
        return grads
    if func_transform_depth():
        refuse_nested_transforms(layer, backend)
        return _refused_below_the_transform(grads, layer, backend, anchors)
    linked = [a for a in anchors if a is not None and a.requires_grad]
    return _behind_refusal([_alias(g) for g in grads], linked, layer, backend)


def _behind_refusal(
    grads: Sequence[Optional[torch.Tensor]], linked: Sequence[torch.Tensor], layer: str, backend: str
) -> Tuple[Optional[torch.Tensor], ...]:
    """``grads`` as outputs of one autograd node that raises :func:`second_order_message` when a backward
    reaches it; ``linked`` (tensors that require grad, with their graphs) are its further inputs."""
    err = torch._C._functions.DelayedError(second_order_message(layer, backend).encode(), len(grads) + len(linked))
    return tuple(err(*grads, *linked)[:len(grads)])


def unwrapped(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``t`` (any shape) unwrapped from every ``torch.func`` wrapper: the tensor plain autograd records on."""
    fw = torch._C._functorch
    while t is not None and fw.is_functorch_wrapped_tensor(t):
        t = fw.get_unwrapped(t)
    return t


def _grad_mode_below_the_transform() -> bool:
    """Whether plain autograd records below the current ``torch.func`` transform (its grad mode as the
    transform was entered: ``torch.func.grad`` called under ``torch.no_grad()`` records nothing there)."""
    try:
        from torch._functorch.pyfunctorch import retrieve_current_functorch_interpreter

        return bool(retrieve_current_functorch_interpreter().prev_grad_mode())
    except (ImportError, AttributeError, RuntimeError):  # (not a grad level: vmap and jvp are refused earlier)
        return True


def _refused_below_the_transform(
    grads: Tuple[Optional[torch.Tensor], ...], layer: str, backend: str, anchors: Sequence[Optional[torch.Tensor]]
) -> Tuple[Optional[torch.Tensor], ...]:
    """Inside one ``torch.func`` transform: ``grads`` as they are (constants to the transform), but when plain
    autograd records below it (``torch.func.grad`` run on parameters that require grad, then ``.backward()`` of
    a loss of its result: MAML's meta-gradient), behind the refusal on that level, so the outer backward
    raises instead of dropping the node's second-order terms. The values are the plain gradients (the
    transform wraps what a backward returns)."""
    linked = [a for a in (unwrapped(a) for a in anchors) if a is not None and a.requires_grad]
    if not linked or not _grad_mode_below_the_transform():
        return grads
    plain = [unwrapped(g) for g in grads]
    with torch._C._DisableFuncTorch(), torch.enable_grad():
        # (the anchors that require grad give every output the refusal as its grad_fn)
        return _behind_refusal([None if g is None else g.detach() for g in plain], linked, layer, backend)
