"""Checkpoints: atomic writes (temp file + rename) and validated loads.

A checkpoint is a ``torch.save`` dict with ``format == "edgesnn-checkpoint"``, ``version``,
``model_config`` (the :func:`edgesnn.models.build_model` arguments), ``model_state`` and
optionally ``optimizer_state``, ``epoch``, ``metrics``, ``train_config``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Union

import torch

from .atomic import atomic_write

__all__ = ["FORMAT", "VERSION", "atomic_write", "save_checkpoint", "load_checkpoint", "CheckpointError"]

FORMAT = "edgesnn-checkpoint"
VERSION = 1
PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint file exists but is not a usable edgesnn checkpoint."""


def save_checkpoint(path: PathLike, model_config: Dict, model_state: Dict, **extra: Any) -> Path:
    """Save a checkpoint atomically; ``extra`` holds optimizer_state, epoch, metrics..."""
    payload = {"format": FORMAT, "version": VERSION, "model_config": model_config, "model_state": model_state, **extra}
    return atomic_write(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Load and validate a checkpoint; raises ``FileNotFoundError`` or :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/garbled files
        raise CheckpointError(f"checkpoint: {path} is corrupt or not a torch file ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint: {path} is not an edgesnn checkpoint (missing format={FORMAT!r})")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"checkpoint: {path} has version {payload.get('version')!r}; this edgesnn reads version {VERSION}")
    for key in ("model_config", "model_state"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"checkpoint: {path} lacks {key!r}")
    return payload
