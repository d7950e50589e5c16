"""Checkpoints: atomic writes (temp file + rename) and validated loads.

A checkpoint is a ``torch.save`` dict with ``format == "edgesnn-checkpoint"``, ``version``,
``model_config`` (the :func:`edgesnn.models.build_model` arguments), ``model_state`` and
optionally ``optimizer_state``, ``epoch``, ``metrics``, ``train_config``.

``model_config`` is stored as plain data (loadable with ``weights_only=True``): a surrogate
instance in it (``node={"surrogate": Sigmoid(alpha=2.0)}``) is stored as
``{"__surrogate__": "Sigmoid", "alpha": 2.0}`` (class name + its dataclass fields) and rebuilt
on load by looking the class up in :mod:`edgesnn.functional.surrogate`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, Union

import torch

from .atomic import atomic_write

__all__ = ["FORMAT", "VERSION", "atomic_write", "save_checkpoint", "load_checkpoint", "CheckpointError",
           "encode_config", "decode_config"]

FORMAT = "edgesnn-checkpoint"
VERSION = 1
PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint file exists but is not a usable edgesnn checkpoint."""


_SURROGATE_KEY = "__surrogate__"


def encode_config(value: Any) -> Any:
    """``value`` with every :class:`~edgesnn.functional.surrogate.Surrogate` instance (at any depth in
    dicts, lists and tuples) replaced by ``{"__surrogate__": class name, **its fields}``."""
    from .functional.surrogate import Surrogate

    if isinstance(value, Surrogate):
        return {_SURROGATE_KEY: type(value).__name__, **{f.name: getattr(value, f.name) for f in dataclasses.fields(value)}}
    if isinstance(value, dict):
        return {k: encode_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(encode_config(v) for v in value)
    return value


def decode_config(value: Any, source: str = "config") -> Any:
    """Inverse of :func:`encode_config`; an unknown surrogate class raises :class:`CheckpointError`."""
    if isinstance(value, dict) and _SURROGATE_KEY in value:
        from .functional import surrogate

        fields = dict(value)
        name = fields.pop(_SURROGATE_KEY)
        cls = getattr(surrogate, str(name), None)
        if not (isinstance(cls, type) and issubclass(cls, surrogate.Surrogate)):
            raise CheckpointError(f"{source}: unknown surrogate class {name!r} (not in edgesnn.functional.surrogate)")
        try:
            return cls(**fields)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: cannot rebuild surrogate {name}({fields}) ({exc})") from None
    if isinstance(value, dict):
        return {k: decode_config(v, source) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(decode_config(v, source) for v in value)
    return value


def save_checkpoint(path: PathLike, model_config: Dict, model_state: Dict, **extra: Any) -> Path:
    """Save a checkpoint atomically; ``extra`` holds optimizer_state, epoch, metrics..."""
    payload = {"format": FORMAT, "version": VERSION, "model_config": encode_config(model_config),
               "model_state": model_state, **extra}
    return atomic_write(path, lambda fh: torch.save(payload, fh))


def _clip(text: str, limit: int = 160) -> str:
    """``text`` cut to at most ``limit`` characters at a sentence or word end, with ``...`` when cut."""
    if len(text) <= limit:
        return text
    head = text[:limit - 3]
    cut = head.rfind(". ")
    if cut < limit // 4:  # no sentence end worth keeping: a word end
        cut = head.rfind(" ")
    return (head[:cut + 1] if cut > 0 else head).rstrip(" .,;:") + "..."


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Load and validate a checkpoint; raises ``FileNotFoundError`` or :class:`CheckpointError`."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint: {path} is a directory; expected a checkpoint file")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint: no such file: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint: {path} is not a regular file (a device or a pipe); expected a checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/garbled files; its first line is the fact
        first = _clip((str(exc).strip().splitlines() or [""])[0])
        if first.startswith("Weights only load failed"):  # torch's multi-paragraph advice
            first = "torch.load (weights_only) cannot read it as a file of tensors"
        raise CheckpointError(f"checkpoint: {path} is corrupt or not a torch file ({type(exc).__name__}: {first})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint: {path} is not an edgesnn checkpoint (missing format={FORMAT!r})")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"checkpoint: {path} has version {payload.get('version')!r}; this edgesnn reads version {VERSION}")
    for key in ("model_config", "model_state"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"checkpoint: {path} lacks {key!r}")
    payload["model_config"] = decode_config(payload["model_config"], f"checkpoint: {path}")
    return payload
