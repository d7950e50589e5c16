"""Checkpoints: atomic writes (temp file + rename) and validated loads.

A checkpoint is a ``torch.save`` dict with ``format == "edgesnn-checkpoint"``, ``version``,
``model_config`` (the :func:`edgesnn.models.build_model` arguments), ``model_state`` and
optionally ``optimizer_state``, ``epoch``, ``metrics``, ``train_config``, and ``tensor_digest``:
a CRC-32 of every tensor it holds (:mod:`edgesnn.checkpoint_digest`), checked on load; version 1
files without it (older edgesnn) load as before.

``model_config`` is stored as plain data (loadable with ``weights_only=True``): a surrogate
instance in it (``node={"surrogate": Sigmoid(alpha=2.0)}``) is stored as
``{"__surrogate__": "Sigmoid", "alpha": 2.0}`` (class name + its dataclass fields) and rebuilt
on load by looking the class up in :mod:`edgesnn.functional.surrogate`.
"""

from __future__ import annotations

import dataclasses
import io
import os
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Union

import torch

from .atomic import atomic_write, check_input_file
from .checkpoint_digest import DIGEST_KEY, check_digest, payload_digest
from .errors import first_line

__all__ = ["FORMAT", "VERSION", "atomic_write", "save_checkpoint", "load_checkpoint", "load_model_state", "CheckpointError",
           "encode_config", "decode_config", "refuse_nir_config", "NIR_LOAD_HINT"]

#: what to do instead with a checkpoint of a model loaded from NIR (written before save_checkpoint refused them)
NIR_LOAD_HINT = ("so it is not loadable from its checkpoint: rebuild it with edgesnn.nir.load(the .nir file) and "
                 "load_state_dict(checkpoint['model_state'])")

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


#: the exact types a checkpoint holds besides tensors (``torch.load(weights_only=True)`` reads them back)
_PLAIN = (str, bytes, int, float, bool, complex, type(None), torch.dtype, torch.device, torch.Size)


def _skeleton(value: Any) -> Any:
    """``value`` with every plain tensor replaced by an empty one of its dtype: what
    :func:`_check_loadable` pickles (cheap: no tensor data is copied)."""
    if type(value) is torch.Tensor and not value.is_quantized:
        return torch.empty(0, dtype=value.dtype)
    if type(value) in (dict, OrderedDict):
        return type(value)((k, _skeleton(v)) for k, v in value.items())
    if type(value) in (list, tuple):
        return type(value)(_skeleton(v) for v in value)
    return value


def _first_foreign(value: Any, where: str) -> Any:
    """``(where, value)`` of the first value (at any depth) that is not plain data, else ``None``."""
    if type(value) in (dict, OrderedDict):
        for k, v in value.items():
            found = _first_foreign(k, f"{where} key") if type(k) not in _PLAIN else None
            found = found or _first_foreign(v, f"{where}[{k!r}]")
            if found:
                return found
        return None
    if type(value) in (list, tuple):
        return next((f for i, v in enumerate(value) if (f := _first_foreign(v, f"{where}[{i}]"))), None)
    if type(value) in _PLAIN or isinstance(value, torch.Tensor):
        return None
    return where, value


def refuse_nir_config(model_config: Any, what: str, error: type, hint: str) -> None:
    """Raise ``error`` (one line: ``"WHAT is a model loaded from NIR (name 'nir'), which build_model
    cannot rebuild, HINT"``) for the config of an :func:`edgesnn.nir.load` model; anything else passes."""
    if isinstance(model_config, dict) and model_config.get("name") == "nir":
        raise error(f"{what} is a model loaded from NIR (name 'nir'), which build_model cannot rebuild, {hint}")


def _check_loadable(path: PathLike, payload: Dict[str, Any], model_config: Any) -> None:
    """Refuse (one line, nothing written) a payload :func:`load_checkpoint` could not read back:
    values ``torch.load(weights_only=True)`` refuses (a NumPy scalar, any other object) or a
    surrogate class that :func:`decode_config` would not rebuild as the same class."""
    from .functional import surrogate

    refuse_nir_config(model_config, f"save_checkpoint: {path}: model_config", CheckpointError,
                      "so the checkpoint could not be loaded; keep its state_dict (torch.save) with the .nir file and "
                      "reload with edgesnn.nir.load(file) + load_state_dict")

    def surrogates(v: Any):
        if isinstance(v, surrogate.Surrogate):
            yield v
        for item in (v.values() if isinstance(v, dict) else v if isinstance(v, (list, tuple)) else ()):
            yield from surrogates(item)

    for s in surrogates(model_config):
        if getattr(surrogate, type(s).__name__, None) is not type(s):
            raise CheckpointError(f"save_checkpoint: {path}: model_config holds the surrogate class "
                                  f"{type(s).__module__}.{type(s).__qualname__}; a checkpoint rebuilds only the classes "
                                  "of edgesnn.functional.surrogate, so it could not be loaded")
    decode_config(payload["model_config"], f"save_checkpoint: {path}: model_config")
    buf = io.BytesIO()
    torch.save(_skeleton(payload), buf)
    buf.seek(0)
    try:
        torch.load(buf, map_location="cpu", weights_only=True)
    except Exception as exc:
        found = _first_foreign(payload, "checkpoint")
        what = (f"{found[0]} is a {type(found[1]).__module__}.{type(found[1]).__qualname__}" if found
                else first_line(exc, 160, at_word=True))
        raise CheckpointError(f"save_checkpoint: {path}: {what}, which load_checkpoint (torch.load weights_only) "
                              "cannot read back; store plain data (tensors, numbers, strings, lists, dicts), "
                              "e.g. float(x) or int(x)") from None


def save_checkpoint(path: PathLike, model_config: Dict, model_state: Dict, **extra: Any) -> Path:
    """Save a checkpoint atomically; ``extra`` holds optimizer_state, epoch, metrics...

    What :func:`load_checkpoint` could not read back (a NumPy scalar, another object, a surrogate
    class outside :mod:`edgesnn.functional.surrogate`) or rebuild (a model from ``edgesnn.nir.load``)
    is refused in one line before anything is written, so an existing checkpoint at ``path`` stays as it was."""
    reserved = [k for k in ("format", "version", DIGEST_KEY) if k in extra]
    if reserved:
        raise CheckpointError(f"save_checkpoint: {reserved[0]!r} is set by save_checkpoint itself; "
                              "pass it under another name")
    payload = {"format": FORMAT, "version": VERSION, "model_config": encode_config(model_config),
               "model_state": model_state, **extra}
    _check_loadable(path, payload, model_config)
    payload[DIGEST_KEY] = payload_digest(payload)  # load_checkpoint checks it: torch.load checks no CRC
    return atomic_write(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Load and validate a checkpoint; raises ``FileNotFoundError`` or :class:`CheckpointError`
    (also for a tensor whose bytes changed since it was saved, named in one line)."""
    path = check_input_file(path, "checkpoint", "a checkpoint file", error=CheckpointError)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/garbled files; its first line is the fact
        if not zipfile.is_zipfile(path):  # a text or empty file: torch's own error is a stray "KeyError: 101"
            raise CheckpointError(f"checkpoint: {path} is not a torch file (not the zip archive torch.save "
                                  "writes)") from None
        first = first_line(exc, 160, at_word=True)
        if first.startswith("Weights only load failed"):  # torch's multi-paragraph advice
            first = "torch.load (weights_only) cannot read it as a file of tensors"
        raise CheckpointError(f"checkpoint: {path} is corrupt or not a torch file ({type(exc).__name__}: {first})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint: {path} is not an edgesnn checkpoint (missing format={FORMAT!r})")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"checkpoint: {path} has version {payload.get('version')!r}; this edgesnn reads version {VERSION}")
    check_digest(path, payload, CheckpointError)
    payload.pop(DIGEST_KEY, None)  # callers see what was saved (a re-save computes a new one)
    config = payload.get("model_config")
    if config is not None and not isinstance(config, dict):
        raise CheckpointError(f"checkpoint: {path}: model_config must be a dict (a JSON object of build_model "
                              f"arguments), got {type(config).__name__}")
    for key in ("model_config", "model_state"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"checkpoint: {path} lacks {key!r}")
    payload["model_config"] = decode_config(payload["model_config"], f"checkpoint: {path}")
    _check_model_size(path, payload["model_config"], payload["model_state"])
    return payload


#: How many more values than its ``model_state`` holds a checkpoint's ``model_config`` may build
#: (beyond twice the state) before :func:`load_checkpoint` refuses it: such a model could not take the
#: state anyway, and building it would allocate memory a small (edited or damaged) file never held.
_SIZE_SLACK = 2**20


def _check_model_size(path: Path, config: Dict[str, Any], state: Dict[str, Any]) -> None:
    """Refuse (one line) a ``model_config`` that builds a model far larger than ``model_state``
    (e.g. ``hidden: [1000000, 1000000]``, 4 TB of weights in a 300 kB file), sized on PyTorch's
    ``meta`` device, which allocates nothing. A config :func:`edgesnn.models.build_model` refuses
    is left to the caller, which builds the model and reports that in its own words."""
    tensors = [t for t in state.values() if isinstance(t, torch.Tensor)]
    stored = sum(t.numel() for t in tensors)
    layers = [(k, v) for k, v in config.items() if k in ("hidden", "channels") and isinstance(v, (list, tuple))]
    for key, widths in layers:  # every layer holds at least one tensor: more layers than tensors cannot match
        if len(widths) > len(state):
            raise CheckpointError(f"checkpoint: {path}: model_config {key} lists {len(widths)} layers, but its "
                                  f"model_state holds {len(state)} tensors; it does not match its model (edited or damaged)")
    from .models import build_model

    try:
        with torch.device("meta"):
            built = sum(t.numel() for t in build_model(**config).state_dict().values())
    except Exception:  # build_model refuses it: the caller says why, building it for real
        return
    if built > 2 * stored + _SIZE_SLACK:
        raise CheckpointError(f"checkpoint: {path}: model_config builds a model of {built} values, but its model_state "
                              f"holds {stored}; it does not match its model (edited or damaged), so it is not built")


def load_model_state(model: torch.nn.Module, state: Dict[str, Any], what: str,
                     error: type = CheckpointError) -> None:
    """Load a checkpoint's ``state`` into ``model``; a mismatch (keys missing or unexpected, other
    shapes) raises ``error`` in one line: ``"{what} does not match its model (...)"``, naming at most
    four keys of each kind. A tensor of another kind than the model's (integer, bool or complex values
    for a floating-point parameter, floats for an integer buffer) is a mismatch too: loading would
    cast it silently (``True`` becoming weight ``1.0``, a complex value losing its imaginary part)."""
    own = model.state_dict() if isinstance(state, dict) else {}
    for key, value in state.items() if isinstance(state, dict) else ():
        ref = own.get(key)
        if (isinstance(value, torch.Tensor) and isinstance(ref, torch.Tensor)
                and (value.is_floating_point(), value.is_complex()) != (ref.is_floating_point(), ref.is_complex())):
            raise error(f"{what} does not match its model ({key}: {value.dtype} values, the model holds {ref.dtype})")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (RuntimeError, TypeError, AttributeError) as exc:  # other shapes, or not a state dict at all
        detail = " ".join(str(exc).split())
        detail = detail.split(": ", 1)[-1] if detail.startswith("Error(s) in loading") else detail
        raise error(f"{what} does not match its model ({detail[:200]})") from None
    if missing or unexpected:
        detail = "; ".join(f"{kind} key{'s' * (len(keys) > 1)} {', '.join(keys[:4])}"
                           f"{f' (+{len(keys) - 4} more)' if len(keys) > 4 else ''}"
                           for kind, keys in (("unexpected", unexpected), ("missing", missing)) if keys)
        raise error(f"{what} does not match its model ({detail})")
