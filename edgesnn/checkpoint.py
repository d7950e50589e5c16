"""Checkpoints: atomic writes (temp file + rename) and validated loads.

A checkpoint is a ``torch.save`` dict with ``format == "edgesnn-checkpoint"``, ``version``,
``model_config`` (the :func:`edgesnn.models.build_model` arguments), ``model_state`` and
optionally ``optimizer_state``, ``epoch``, ``metrics``, ``train_config``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Union

import torch

__all__ = ["FORMAT", "VERSION", "atomic_write", "save_checkpoint", "load_checkpoint", "CheckpointError"]

FORMAT = "edgesnn-checkpoint"
VERSION = 1
PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint file exists but is not a usable edgesnn checkpoint."""


def atomic_write(path: PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write a file through ``write(fh)`` into a temp file beside ``path``, then rename it over ``path``.

    A crash leaves either the old file or the new one, never a truncated mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


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
