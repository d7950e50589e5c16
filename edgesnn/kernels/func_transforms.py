"""The fused kernels inside ``torch.func`` transforms (``grad``, ``grad_and_value``, ``vjp``).

Under ``torch.func.grad`` an ``autograd.Function``'s forward runs on plain tensors, but its backward
gets the saved tensors and the incoming gradients as the transform's wrapper tensors, and every
tensor created inside it (the kernels' outputs) is wrapped as well. The kernels read raw memory
(NumPy views of CPU tensors, device pointers on CUDA), which a wrapper has none of. The kernel
Functions' backward therefore runs :func:`outside_transforms`: the tensors it reads unwrapped to
the plain tensors below (the values are the same; a first-order backward needs nothing else from
the wrapper), the kernels run with the transforms switched off, and PyTorch wraps the plain
gradients it returns again. A gradient of a gradient stays refused, as in every kernel backward
(:func:`~edgesnn.functional.second_order.first_order_only`; nested transforms: one line).

``torch.func.vmap`` would hand the kernels batched tensors: refused with one line, over the
forward by the dispatch (:func:`~edgesnn.functional.second_order.vmap_refused`) and over the
backward here (``jacrev``, ``autograd.grad(..., is_grads_batched=True)``: the gradients come in
batched; :func:`~edgesnn.functional.second_order.batched_backward_refused`). Forward-mode AD
(``jvp``, ``jacfwd``, dual tensors) is refused by the dispatch as well
(:func:`~edgesnn.functional.second_order.forward_ad_refused`): a spike's surrogate has no tangent rule.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence, Tuple

import torch

from ..functional.second_order import refuse_batched, refuse_nested_transforms, unwrapped

__all__ = ["outside_transforms"]

_functorch = torch._C._functorch


@contextlib.contextmanager
def outside_transforms(tensors: Sequence[Optional[torch.Tensor]], layer: str, backend: str) -> Iterator[Tuple[Optional[torch.Tensor], ...]]:
    """``with outside_transforms(ts, layer, backend) as plain:`` ``plain`` holds ``ts``
    unwrapped from any ``torch.func`` wrappers, and inside the block the transforms are off (new
    tensors are plain). Outside every transform: ``ts`` as they are, nothing switched (one check
    each). Inside two or more nested transforms (``grad(grad(f))``: the outer one would see the
    kernels' gradients as constants, a silently zero second-order term) it raises
    :func:`~edgesnn.functional.second_order.second_order_message`, as ``create_graph=True`` does.
    Batched gradients (the backward under ``vmap``: ``jacrev``, ``is_grads_batched=True``) raise
    :func:`~edgesnn.functional.second_order.batched_backward_refused`: the kernels would read the
    batch of gradients as one gradient of a wrong shape."""
    refuse_batched(tensors, layer, backend)
    wrapped = any(t is not None and _functorch.is_functorch_wrapped_tensor(t) for t in tensors)
    if not wrapped:
        yield tuple(tensors)
        return
    refuse_nested_transforms(layer, backend)
    plain = tuple(unwrapped(t) for t in tensors)
    with torch._C._DisableFuncTorch():
        yield plain
