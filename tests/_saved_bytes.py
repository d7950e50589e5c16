"""Shared by the planner tests that compare predicted saved-for-backward bytes with a measurement."""

from __future__ import annotations

import torch
from torch import nn

from edgesnn.memory import SavedTensorCounter, _storage_key


def saved_bytes_of_step(m: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the unique storages one training forward of classifier ``m`` on ``x`` saves for
    backward (cross-entropy on random labels; parameters and buffers excluded); then runs backward."""
    y = torch.randint(0, 10, (x.shape[-len(m.in_shape) - 1],))
    pk = {_storage_key(p) for p in m.parameters()} | {_storage_key(b) for b in m.buffers()}
    with SavedTensorCounter() as c:
        loss = nn.functional.cross_entropy(m(x), y)
    n = sum(v for k, v in c.storages.items() if k not in pk)
    c._keep.clear()
    loss.backward()
    return n
