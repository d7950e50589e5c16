"""A block's parameter gradients, handed to autograd as its backward's result instead of into ``.grad``.

A block's backward recomputes its layers chunk by chunk, and some gradients (BatchNorm's, a held
layer's) are computed without autograd. Written into the parameters' ``.grad`` directly, they would
skip the parameters' tensor hooks (or call them once per chunk with a partial gradient), and
``torch.autograd.grad(loss, params)`` would find the parameters unused. Instead, while the block's
backward runs, its modules hold *stand-ins* for their parameters (``p.detach()``: same storage, no
hooks, a fresh ``.grad``); every chunk and pass accumulates into the stand-ins' ``.grad``, and the
block's autograd function returns those sums for the parameters it took as inputs. Autograd then
runs each parameter's hooks once, with the whole gradient, and accumulates ``.grad`` (or hands it
to ``autograd.grad``); a parameter used by two blocks gets the sum of both.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["trainable_params", "stand_ins", "stands_for", "collected"]


def trainable_params(modules: Sequence[nn.Module]) -> List[torch.Tensor]:
    """The parameters of ``modules`` (and their submodules) that require grad, each once."""
    seen, out = set(), []
    for m in modules:
        for p in m.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


@contextmanager
def stand_ins(modules: Sequence[nn.Module], params: Sequence[torch.Tensor]) -> Iterator[List[torch.Tensor]]:
    """Inside the block, ``modules`` (and their submodules) hold a stand-in for each of ``params``
    (those trainable at the forward): ``p.detach()`` requiring grad (the same storage and version
    counter, no hooks, its own ``.grad``); any other parameter that requires grad now (frozen at the
    forward, unfrozen before the backward) holds ``p.detach()``, a constant as in the forward, so no
    ``.grad`` lands on it. Yields the stand-ins in the order of ``params``; the parameters are put
    back on exit."""
    subs = {id(p): _stand_in(p) for p in params}
    swapped = []
    try:
        for owner in modules:
            for mod in owner.modules():
                for name, p in mod._parameters.items():
                    if p is None:
                        continue
                    real = stands_for(p)  # inside another block's backward: a parameter both use holds its stand-in
                    if id(real) in subs:
                        swapped.append((mod, name, p))
                        mod._parameters[name] = subs[id(real)]
                    elif p.requires_grad and real is p:
                        swapped.append((mod, name, p))
                        mod._parameters[name] = p.detach()
        yield [subs[id(p)] for p in params]
    finally:
        for mod, name, p in reversed(swapped):
            mod._parameters[name] = p


def _stand_in(p: torch.Tensor) -> torch.Tensor:
    s = p.detach().requires_grad_(True)
    s._edgesnn_stands_for = p
    return s


def stands_for(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The parameter ``t`` stands in for inside a block's backward (:func:`stand_ins`), else ``t``."""
    return getattr(t, "_edgesnn_stands_for", t)


def collected(subs: Sequence[torch.Tensor]) -> Tuple[Optional[torch.Tensor], ...]:
    """The gradients accumulated into the stand-ins (each its stand-in's shape; ``None`` where none
    arrived), handed over: the stand-ins' ``.grad`` is reset to ``None``."""
    out = tuple(s.grad for s in subs)
    for s in subs:
        s.grad = None
    return out
