"""Layer facts every replay of the planner reads the same way: which ``torch.nn`` classes are
convolutions and max-pools, and where autograd starts recording on a model input.

The planner has three descriptions of a model's layers (``memory_model.Layer`` for ``edgesnn plan``,
``bptt_peak.OpCost`` for the baselines' replay, ``block_shapes.BlockShape`` for
``optimize_memory``); what they share about a layer's type lives here, once.
"""

from __future__ import annotations

from typing import Iterable, Optional

from torch import nn

__all__ = ["CONV_TYPES", "MAX_POOL_TYPES", "first_recording"]

#: Convolutions: they save their input; oneDNN reorders into blocked layouts on the CPU.
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Max-pools with a fixed window: they save their input and int64 indices of their output's size.
MAX_POOL_TYPES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


def first_recording(trains: Iterable[bool]) -> Optional[int]:
    """Index of the first layer that records autograd's graph on a model input that needs no
    gradient: the first with a trainable parameter (``trains[j]``). The layers before it keep
    nothing and have no backward, as in PyTorch. ``None`` when no layer trains."""
    return next((j for j, t in enumerate(trains) if t), None)
