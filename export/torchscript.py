"""TorchScript export: a traced module that loads with ``torch.jit.load`` and trains in a fresh process.

The model is **traced**, not scripted. ``torch.jit.script`` would have to compile every line of
the Python the forward touches (frozen dataclass hyper-parameters, backend dispatch,
``torch.onnx.is_in_onnx_export()`` in :func:`~edgesnn.functional.surrogate.stop_gradient`),
while tracing the reference backend records only the tensor ops that actually run: the time loop
is unrolled for the model's fixed ``T``, ``stop_gradient`` records ``detach`` (which TorchScript
keeps), and the loaded module's gradients are the eager ones. Python shape checks are evaluated
once at trace time, so the per-sample shape check is a scripted function the traced forward calls
(it raises on any input but ``[B, *in_shape]``); the batch dimension stays symbolic. BatchNorm
runs with its running statistics (as in the ONNX export); its weight and bias train.

TorchScript is deprecated upstream (torch 2.13 warns on use); ``torch.export`` is its successor.
"""

from __future__ import annotations

import functools
import io
import json
import warnings
from pathlib import Path
from typing import List

import torch
from torch import nn

from .. import __version__
from ..checkpoint import encode_config
from ..atomic import is_path_value
from .artifacts import PathLike, atomic_write_bytes
from .prepare import check_export_flag, check_finite, check_out_path, example_input, export_copy, take_frames_batch_first

__all__ = ["METADATA_FILE", "export_torchscript", "load_torchscript"]

METADATA_FILE = "edgesnn.json"


def _check_input(x: torch.Tensor, in_shape: List[int]) -> torch.Tensor:
    """Raise unless ``x`` is ``[B, *in_shape]``; returns ``x`` (so the call stays in the traced data flow)."""
    if x.dim() != len(in_shape) + 1 or x.shape[1:] != in_shape:
        raise ValueError("input: expected [B, " + ", ".join([str(d) for d in in_shape]) + "], got " + str(x.shape))
    return x


@functools.lru_cache(maxsize=None)
def _scripted_check():
    """:func:`_check_input` compiled with ``torch.jit.script`` (once, on first use): tracing records
    a call to a scripted function as a call, so the check runs in the saved module on every input."""
    return torch.jit.script(_check_input)


def _trace_checked(clone: nn.Module, example: torch.Tensor, event: bool = False) -> torch.jit.ScriptModule:
    """Trace ``clone`` with the per-sample shape check in front of its forward.

    Python shape checks are evaluated once at trace time and vanish from the trace; the check
    is therefore a scripted call made from a forward pre-hook (the hook runs inside the trace;
    the parameter names stay those of ``clone``)."""
    check, in_shape = _scripted_check(), ([int(clone.timesteps)] if event else []) + [int(d) for d in clone.in_shape]
    handle = clone.register_forward_pre_hook(lambda module, args: (check(args[0], in_shape),))
    try:
        return torch.jit.trace(clone, (example,), check_trace=False)
    finally:
        handle.remove()


def export_torchscript(model: nn.Module, path: PathLike, batch_size: int = 4, event: bool = False) -> Path:
    """Trace ``model`` (reference backend, eval-mode BatchNorm) and save it atomically to ``path``.

    The saved module maps ``[B, *in_shape]`` (any ``B``) to logits ``[B, classes]`` (one frame
    repeated over T, the readout averaged over T) and raises on any other input shape; its
    ``parameters()`` carry the PyTorch names and train with any ``torch.optim`` optimizer. The
    model config is stored in the archive as ``edgesnn.json``. A NaN or Inf in the model's
    parameters or buffers is refused. ``event``: the model was trained on event data: the module
    takes ``[B, T, *in_shape]``, frame ``t`` at time step ``t`` (``in_shape`` in ``edgesnn.json`` is
    then ``[T, *in_shape]``).
    """
    path = check_out_path(path, "path")
    event = check_export_flag(event, "event")
    check_finite(model)
    clone = export_copy(model)
    if event:
        take_frames_batch_first(clone)
    example = example_input(clone, batch_size, event=event)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings (shape checks), TorchScript deprecation
        traced = _trace_checked(clone, example, event)
        buf = io.BytesIO()
        meta = {"model_config": encode_config(getattr(model, "config", {})), "edgesnn_version": __version__, "time_loop": "unrolled",
                "batchnorm": "frozen-statistics", "in_shape": list(example.shape[1:]),
                "timesteps": int(clone.timesteps)}
        torch.jit.save(traced, buf, _extra_files={METADATA_FILE: json.dumps(meta)})
    return atomic_write_bytes(path, buf.getvalue())


def load_torchscript(path: PathLike) -> torch.jit.ScriptModule:
    """Load a module written by :func:`export_torchscript` (raises ``FileNotFoundError`` /
    ``IsADirectoryError`` / ``ValueError``)."""
    if not is_path_value(path):
        raise ValueError(f"path: expected a TorchScript file path (a non-empty str or os.PathLike), got {path!r:.80}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"torchscript: {path} is a directory; expected a file written by export_torchscript")
    if not path.is_file():
        raise FileNotFoundError(f"torchscript: no such file: {path}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ValueError(f"torchscript: {path} is corrupt or not a TorchScript archive ({type(exc).__name__})") from None
