"""TorchScript export: a traced module that loads with ``torch.jit.load`` and trains in a fresh process.

The model is **traced**, not scripted. ``torch.jit.script`` would have to compile every line of
the Python the forward touches (frozen dataclass hyper-parameters, backend dispatch,
``torch.onnx.is_in_onnx_export()`` in :func:`~edgesnn.functional.surrogate.stop_gradient`),
while tracing the reference backend records only the tensor ops that actually run: the time loop
is unrolled for the model's fixed ``T``, ``stop_gradient`` records ``detach`` (which TorchScript
keeps), and the loaded module's gradients are the eager ones. Shape checks are evaluated once at
trace time; the batch dimension stays symbolic. BatchNorm runs with its running statistics
(as in the ONNX export); its weight and bias train.

TorchScript is deprecated upstream (torch 2.13 warns on use); ``torch.export`` is its successor.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..checkpoint import encode_config
from .artifacts import atomic_write_bytes
from .prepare import example_input, export_copy

__all__ = ["METADATA_FILE", "export_torchscript", "load_torchscript"]

METADATA_FILE = "edgesnn.json"


def export_torchscript(model: nn.Module, path, batch_size: int = 4) -> Path:
    """Trace ``model`` (reference backend, eval-mode BatchNorm) and save it atomically to ``path``.

    The saved module maps ``[B, *in_shape]`` (any ``B``) to logits ``[B, classes]``; its
    ``parameters()`` carry the PyTorch names and train with any ``torch.optim`` optimizer. The model
    config is stored in the archive as ``edgesnn.json``.
    """
    clone = export_copy(model)
    example = example_input(clone, batch_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings (shape checks), TorchScript deprecation
        traced = torch.jit.trace(clone, (example,), check_trace=False)
        buf = io.BytesIO()
        meta = {"model_config": encode_config(getattr(model, "config", {})), "edgesnn_version": __version__, "time_loop": "unrolled",
                "batchnorm": "frozen-statistics"}
        torch.jit.save(traced, buf, _extra_files={METADATA_FILE: json.dumps(meta)})
    return atomic_write_bytes(path, buf.getvalue())


def load_torchscript(path) -> torch.jit.ScriptModule:
    """Load a module written by :func:`export_torchscript` (raises ``FileNotFoundError``/``ValueError``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"torchscript: no such file: {path}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ValueError(f"torchscript: {path} is corrupt or not a TorchScript archive ({type(exc).__name__})") from None
