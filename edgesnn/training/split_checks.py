"""Checks :func:`edgesnn.training.loop.evaluate` runs on a split before scoring it: each problem
that would give a silently wrong accuracy is a one-line ``ValueError`` naming it."""

from __future__ import annotations

from typing import Optional

import torch

from .data import Split

__all__ = ["check_split", "check_labels", "check_input_dtype"]


def check_split(split: Split, timesteps: Optional[int]) -> None:
    """One line for a split :func:`~edgesnn.training.loop.evaluate` would score wrongly: labels not
    ``int [N]``, no samples, inputs and labels of different lengths, event frames ``[N, T, ...]`` with
    another T than ``timesteps``, static inputs that are not floating point."""
    if not isinstance(split, Split):
        hint = " (its train or test split, e.g. dataset.test)" if hasattr(split, "test") else ""
        raise TypeError(f"split: expected an edgesnn.training.Split{hint}, got {type(split).__name__}")
    x, y = split.x, split.y
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"split: expected torch.Tensor inputs x and labels y (torch.from_numpy for arrays), "
                        f"got {type(x).__name__} and {type(y).__name__}")
    if y.dim() != 1 or y.dtype == torch.bool or y.dtype.is_floating_point or y.dtype.is_complex:
        raise ValueError(f"labels: expected one integer class per sample (int [N]), got {y.dtype} of shape {list(y.shape)}")
    if len(y) == 0:
        raise ValueError("data: the split has no samples; an accuracy over none is undefined")
    if x.shape[0] != len(y):
        raise ValueError(f"data: {x.shape[0]} inputs but {len(y)} labels; expected one label per input")
    if split.events:
        if timesteps is not None and x.dim() >= 2 and x.shape[1] != timesteps:
            raise ValueError(f"data: event frames [N, T, ...] have T={x.shape[1]}, the model was built for "
                             f"timesteps={timesteps}; bin the events into {timesteps} frames or rebuild the model")
    elif not x.is_floating_point():
        raise ValueError(f"data: static inputs must be floating point (e.g. float32 scaled to [0, 1]), got {x.dtype}")


def check_input_dtype(split: Split, model: torch.nn.Module) -> None:
    """One line when static inputs have another floating dtype than the model's parameters (float64
    data into a float32 model): PyTorch's own error comes from deep inside the first layer."""
    want = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if not split.events and want is not None and split.x.dtype != want:
        name = str(want).replace("torch.", "")
        raise ValueError(f"data: static inputs are {str(split.x.dtype).replace('torch.', '')}, the model's parameters "
                         f"{name}; convert the inputs (x.to(torch.{name})) or the model")


def check_labels(split: Split, classes: int) -> None:
    """One line when a label is outside ``0..classes - 1`` (it would silently score as wrong)."""
    lo, hi = int(split.y.min()), int(split.y.max())
    if lo < 0 or hi >= classes:
        raise ValueError(f"labels: expected classes 0..{classes - 1} (the model has {classes} outputs), "
                         f"got labels {lo}..{hi}")
