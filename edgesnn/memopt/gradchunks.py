"""A block's output gradient held as time chunks, written by the next block and freed as it is consumed.

Between two chunked blocks autograd would carry the output gradient as one dense ``[T, B, ...]``
tensor, alive from the moment the next block's backward allocates it until this block's backward
returns: during this block's second BatchNorm pass it sits beside the dense input gradient this
block writes, two full-T tensors at once. Instead the next block hands its input gradient over
chunk by chunk (the chunks its backward produces anyway, last to first) and returns a zero-stride
placeholder to autograd; this block reads the chunks (twice, for its two passes) and frees each
one once its last pass is past it, so its outgoing gradient grows as the incoming one shrinks.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

__all__ = ["GradChunks", "DenseGrad"]


class GradChunks:
    """The gradient of a ``[T, B, ...]`` output, as chunks ``[t0:t1]`` in any order.

    ``placeholder`` is the zero-stride tensor the writer returned to autograd in its place: a
    gradient arriving through autograd that *is* it carries nothing.
    """

    def __init__(self, shape: Tuple[int, ...]) -> None:
        self.shape = tuple(shape)
        self.parts: Dict[int, Tuple[int, torch.Tensor]] = {}  # t0 -> (t1, [t1 - t0, B, ...])
        self.placeholder: Optional[torch.Tensor] = None

    @property
    def empty(self) -> bool:
        """True while no chunk is held (none written yet, or all released)."""
        return not self.parts

    def put(self, t0: int, t1: int, g: torch.Tensor) -> None:
        """Write the gradient ``g [t1 - t0, B, ...]`` of steps ``t0:t1`` (added to a chunk already there)."""
        if g.shape[0] != t1 - t0 or tuple(g.shape[1:]) != self.shape[1:]:
            raise RuntimeError(f"memopt: gradient chunk {tuple(g.shape)} does not fit steps {t0}:{t1} of {self.shape}")
        if t0 in self.parts:
            t1_old, old = self.parts[t0]
            if t1_old != t1:
                raise RuntimeError(f"memopt: gradient chunk {t0}:{t1} overlaps {t0}:{t1_old}")
            g = old + g
        self.parts[t0] = (t1, g)

    def get(self, t0: int, t1: int) -> torch.Tensor:
        """Steps ``t0:t1`` as ``[t1 - t0, B, ...]`` (a view when one written chunk covers them); steps
        nobody wrote are zero."""
        pieces, t = [], t0
        for p0 in sorted(self.parts):
            p1, g = self.parts[p0]
            if p1 <= t or p0 >= t1:
                continue
            if p0 > t:
                pieces.append(g.new_zeros((p0 - t,) + self.shape[1:]))
                t = p0
            end = min(p1, t1)
            pieces.append(g[t - p0:end - p0])
            t = end
        if t < t1:
            like = next(iter(self.parts.values()))[1] if self.parts else None
            z = torch.zeros((t1 - t,) + self.shape[1:]) if like is None else like.new_zeros((t1 - t,) + self.shape[1:])
            pieces.append(z)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def release_from(self, t0: int) -> None:
        """Free every chunk that starts at or after step ``t0`` (read for the last time)."""
        for p0 in [p for p in self.parts if p >= t0]:
            del self.parts[p0]

    def add_dense(self, g: torch.Tensor) -> None:
        """Add a dense ``[T, B, ...]`` gradient that arrived through autograd (another consumer's)."""
        if g.stride() and all(s == 0 for s in g.stride()) and not bool(g.reshape(-1)[:1].any()):
            return  # an expanded zero
        dense = self.get(0, self.shape[0]) + g
        self.parts = {0: (self.shape[0], dense)}


class DenseGrad:
    """The same reading interface over an ordinary dense gradient (nothing to free early)."""

    def __init__(self, g: torch.Tensor) -> None:
        self.g = g

    def get(self, t0: int, t1: int) -> torch.Tensor:
        """Steps ``t0:t1`` of the gradient, ``[t1 - t0, B, ...]`` (a view)."""
        return self.g[t0:t1]

    def release_from(self, t0: int) -> None:
        """Nothing to free: the dense gradient is autograd's."""
        pass
