"""Turn a trained model into the form every exporter traces.

Exporters trace a *copy* of the model in which

* every LIF / RevLIF node uses ``backend = "reference"`` (plain autograd over standard ops; the
  fast backends are ``autograd.Function`` / custom ops whose backward cannot be exported), and
* BatchNorm layers use their running statistics (*frozen statistics*): on-device fine-tuning
  updates their affine weight and bias only. For the ONNX training export they are rewritten
  as explicit element-wise ops (:class:`FrozenBatchNorm`), because ONNX Runtime's training
  graph builder silently turns every ``BatchNormalization`` node into a batch-statistics one.

Parameter and buffer names are unchanged, so exported graphs use the PyTorch ``state_dict`` names.
"""

from __future__ import annotations

import copy
import types
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..atomic import is_path_value
from ..checkpoint import NIR_LOAD_HINT, load_checkpoint, load_model_state, refuse_nir_config
from ..errors import UsageError, first_line
from ..memopt import uninstall as memopt_uninstall
from ..memory_guard import check_fits_in_memory, shape_bytes
from ..models import SpikingClassifier, build_model, spiking_layers
from .artifacts import PathLike, valid_input_range

__all__ = ["FrozenBatchNorm", "export_copy", "model_from_checkpoint", "check_finite", "example_input", "ExportError",
           "split_trainable", "refuse_active_dropout", "check_trace_fits", "check_out_path", "check_export_flag"]


class ExportError(UsageError, RuntimeError):
    """The model cannot be exported as asked (the message says what is wrong).

    A :class:`~edgesnn.errors.UsageError` (the CLI reports it in one line); still a
    ``RuntimeError`` for callers that caught it as one.
    """


def checked_input_range(value: Optional[Sequence[float]]) -> Optional[List[float]]:
    """An exporter's ``input_range`` argument as the manifest stores it: ``None``, or
    ``[low, high]`` as floats (finite, low < high); an :class:`ExportError` otherwise."""
    if value is None:
        return None
    if not valid_input_range(value):
        raise ExportError(f"input_range: expected (low, high) with finite low < high, or None, got {value!r}")
    return [float(value[0]), float(value[1])]


def split_trainable(model: nn.Module, freeze: Optional[Sequence[str]] = None,
                    label: str = "freeze") -> Tuple[List[str], List[str]]:
    """``(trainable, fixed)`` parameter names (``model.named_parameters()`` order) for a training export.

    A parameter stays fixed on the device (no gradient, no optimizer state, never updated) when
    ``requires_grad`` is False on ``model`` (as ``torch.optim`` skips it) or when ``freeze`` names
    it: each entry is a parameter name (``"body.0.module.weight"``) or a module name covering all
    of that module's parameters (``"body.0"``). An entry that matches no parameter, or a freeze
    that leaves nothing to train, is an :class:`ExportError` naming ``label`` (``"--freeze"`` from the CLI).
    ``freeze`` may be any iterable of names (list, tuple, set, generator). A parameter registered
    under two names (tied weights) is refused in one line.
    """
    if not isinstance(model, nn.Module):
        raise ExportError(f"model: expected an edgesnn SpikingClassifier, got {type(model).__name__}")
    names = [n for n, _ in model.named_parameters()]
    _refuse_shared_parameters(model)
    entries = [] if freeze is None else [freeze] if isinstance(freeze, str) else freeze
    if isinstance(entries, Iterable) and not isinstance(entries, (bytes, Mapping)):
        entries = list(entries)  # a tuple, set or generator of names as well as a list
    if not (isinstance(entries, list) and all(isinstance(e, str) and e.strip() for e in entries)):
        raise ExportError(f"{label}: expected parameter or module names (a name, or a list of non-empty names), "
                          f"got {freeze!r}")
    fixed = {n for n, p in model.named_parameters() if not p.requires_grad}
    for entry in (e.strip().rstrip(".") for e in entries):
        hits = [n for n in names if n == entry or n.startswith(entry + ".")]
        if not hits:
            layers = dict.fromkeys(n.rsplit(".", 1)[0] for n in names)  # module names, in the model's order
            raise ExportError(f"{label}: {entry!r} names no parameter of the model; its layers: {', '.join(layers)}")
        fixed.update(hits)
    trainable = [n for n in names if n not in fixed]
    if not trainable:
        raise ExportError(f"{label}: every parameter would be frozen (named or requires_grad=False); nothing would train")
    return trainable, [n for n in names if n in fixed]


def _refuse_shared_parameters(model: nn.Module) -> None:
    """One :class:`ExportError` line for a parameter registered under two names (tied weights):
    ``named_parameters()`` lists it once, but the traced layers read it under each name, so the
    exported step would not train it as one tensor (or not build at all)."""
    first: Dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            raise ExportError(f"model: parameter {name} is the same tensor as {first[id(p)]} (tied or shared weights, "
                              "or one module used twice); training exports need every parameter under one name: "
                              "untie them before exporting")
        first[id(p)] = name


def refuse_active_dropout(model: nn.Module, fmt: str) -> None:
    """A training export's one-line :class:`ExportError` for a dropout layer with ``p > 0``.

    The exported graphs have no random masks (their ops would draw the same mask every step, or
    the backward a different one than the forward), so such a layer would train as the identity:
    silently no regularisation. Setting its ``p`` to 0 on the exported model says so explicitly.
    """
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            raise ExportError(f"{fmt}: layer {name} ({type(m).__name__}, p={m.p:g}) would train as the identity on the "
                              f"device (the exported graph draws no random masks); set its p to 0 to fine-tune without it")


class FrozenBatchNorm(nn.Module):
    """Eval-mode BatchNorm written with element-wise ops: ``(x - mean) * weight / sqrt(var + eps) + bias``.

    Keeps the attribute names of ``nn.BatchNorm*d`` (``weight``, ``bias``, ``running_mean``,
    ``running_var``) so the parameter names survive. Shape: ``[N, C, ...] -> [N, C, ...]``.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        if not bn.affine or bn.running_mean is None:
            raise ExportError("FrozenBatchNorm: only affine BatchNorm layers with running statistics can be exported")
        self.weight = bn.weight
        self.bias = bn.bias
        self.register_buffer("running_mean", bn.running_mean)
        self.register_buffer("running_var", bn.running_var)
        self.register_buffer("num_batches_tracked", bn.num_batches_tracked)
        self.eps = float(bn.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """BatchNorm of ``x [N, C, ...]`` with the frozen running statistics; same shape."""
        shape = [1, -1] + [1] * (x.dim() - 2)
        scale = self.weight / torch.sqrt(self.running_var + self.eps)
        return (x - self.running_mean.reshape(shape)) * scale.reshape(shape) + self.bias.reshape(shape)


class MultiStepFrozenBatchNorm(FrozenBatchNorm):
    """:class:`FrozenBatchNorm` for a multi-step BatchNorm (SpikingJelly's ``layer.BatchNorm2d`` with
    ``step_mode='m'``): normalises ``[T, B, C, ...]`` over ``[T * B, C, ...]`` as that layer does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen BatchNorm of ``x [T, B, C, ...]`` over ``[T * B, C, ...]``; same shape."""
        return super().forward(x.flatten(0, 1)).reshape(x.shape)


def _replace_batchnorm(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            multi = getattr(child, "step_mode", None) == "m"  # runs on [T, B, ...] itself
            setattr(module, name, (MultiStepFrozenBatchNorm if multi else FrozenBatchNorm)(child))
        else:
            _replace_batchnorm(child)


def export_copy(model: nn.Module, frozen_batchnorm_ops: bool = False) -> nn.Module:
    """A deep copy of ``model`` in eval mode with every spiking node on the ``"reference"`` backend, and plain
    ``nn.Sequential`` forwards where ``model`` was :func:`edgesnn.optimize_memory`'d (its chunked blocks run
    Numba kernels a trace cannot follow; the values are the same).

    Args:
        frozen_batchnorm_ops: also rewrite BatchNorm layers as :class:`FrozenBatchNorm`
            (needed for ONNX Runtime training; same values and gradients as eval-mode BatchNorm).
    """
    clone = copy.deepcopy(model)
    memopt_uninstall(clone)
    nodes = spiking_layers(clone)
    for _, node in nodes:
        node.backend = "reference"
        node.check_finite = False
    if frozen_batchnorm_ops:
        _replace_batchnorm(clone)
    clone.eval()
    for p in clone.parameters():
        p.requires_grad_(True)
    return clone


def model_from_checkpoint(path: PathLike, label: str = "checkpoint") -> Tuple[SpikingClassifier, Dict[str, Any]]:
    """Rebuild the model saved in an edgesnn checkpoint; returns ``(model, checkpoint dict)``.

    ``label`` starts the one-line errors about the file's model (``"--checkpoint"`` from the CLI):
    ``"{label} PATH: model_config: ..."`` when ``build_model`` refuses the stored config.
    """
    ck = load_checkpoint(path)
    cfg = dict(ck["model_config"])
    refuse_nir_config(cfg, f"{label} {path}: model_config", ExportError, NIR_LOAD_HINT)
    try:
        model = build_model(**cfg)
    except (TypeError, ValueError) as exc:
        raise ExportError(f"{label} {path}: model_config: {first_line(exc, 200)}") from None
    load_model_state(model, ck["model_state"], f"{label} {path}: the state", error=ExportError)
    return model, ck


def check_out_path(value: Any, name: str, folder: bool = False) -> Any:
    """Check an exporter's output path: a non-empty ``str`` or ``os.PathLike``; with ``folder``, not
    an existing file (the artifacts go into it). One :class:`ExportError` line naming ``name``
    otherwise, before anything is built or written. Returns ``value`` itself (the CLI hands in an
    :mod:`edgesnn.output_guard` object, whose record of the output the writer must keep)."""
    what = "folder" if folder else "file"
    if not is_path_value(value):
        raise ExportError(f"{name}: expected a {what} path (a non-empty str or os.PathLike), got {value!r:.80}")
    path = Path(value)
    if folder and path.exists() and not path.is_dir():
        raise ExportError(f"{name}: {path} is a file; expected a folder (existing or new) for the artifacts")
    return value


def check_export_flag(value: Any, name: str) -> bool:
    """``value`` as a bool (``True``/``False``, NumPy bools, 0/1); a string such as ``"no"`` (which
    Python counts as true) is one :class:`ExportError` line naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or (type(value) is int and value in (0, 1)):
        return bool(value)
    raise ExportError(f"{name}: expected True or False, got {value!r:.80}")


def check_finite(model: nn.Module, label: str = "model") -> None:
    """Refuse a model with a NaN or Inf in a parameter or floating-point buffer (a diverged run):
    one :class:`ExportError` line, ``"{label}: parameter NAME holds ..."``, naming the first one.
    Anything but an ``nn.Module`` is one line as well."""
    if not isinstance(model, nn.Module):
        raise ExportError(f"{label}: expected an edgesnn SpikingClassifier (edgesnn.models.build_model or "
                          f"edgesnn.training.model_from_checkpoint), got {type(model).__name__}")
    tensors = [("parameter", n, t) for n, t in model.named_parameters()]
    tensors += [("buffer", n, t) for n, t in model.named_buffers() if t.is_floating_point()]
    for kind, name, tensor in tensors:
        bad = int((~torch.isfinite(tensor.detach())).sum())
        if bad:
            raise ExportError(f"{label}: {kind} {name} holds {bad} NaN or Inf value{'s' * (bad > 1)} (a diverged "
                              "training run?); refusing to export it")


def example_input(model: SpikingClassifier, batch_size: int, seed: int = 0, event: bool = False) -> torch.Tensor:
    """A float32 example input ``[batch_size, *model.in_shape]`` in ``[0, 1)`` for tracing
    (``event``: ``[batch_size, T, *model.in_shape]``, one frame per time step)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ExportError(f"batch_size: expected an integer >= 1, got {batch_size!r:.80}")
    if not (hasattr(model, "in_shape") and hasattr(model, "timesteps")):
        raise ExportError(f"model: expected an edgesnn SpikingClassifier (with in_shape and timesteps), got "
                          f"{type(model).__name__}")
    check_trace_fits(model, batch_size)
    g = torch.Generator().manual_seed(seed)
    frames = (int(model.timesteps),) if event else ()
    return torch.rand(batch_size, *frames, *model.in_shape, generator=g)


def check_trace_fits(model: SpikingClassifier, batch_size: int) -> None:
    """Refuse (one :class:`ExportError` line naming the model's T and the batch) a trace whose input
    over T, ``[T, batch_size, *in_shape]`` float32, cannot fit in this machine's physical memory:
    the example frames of event data, or the static input the first layer copies over T."""
    T = int(model.timesteps)
    check_fits_in_memory(
        shape_bytes((T, batch_size, *model.in_shape)),
        f"timesteps and batch: the model's T = {T} with batch {batch_size}: tracing it runs an input over T "
        f"([T, B, {', '.join(map(str, model.in_shape))}] float32), which",
        "a checkpoint's model_config timesteps this large was edited or damaged; else lower --batch-size or export on a "
        "machine with more memory", error=ExportError)


def take_frames_batch_first(clone: SpikingClassifier) -> None:
    """Make ``clone`` (an export copy) take event data as the device data holds it, batch first:
    ``x [B, T, *in_shape]``, frame ``t`` at step ``t`` (its forward takes ``[T, B, ...]``). The
    forward is replaced on the instance, so the parameter names stay the model's."""
    base = type(clone).forward
    clone.forward = types.MethodType(lambda self, x: base(self, x.transpose(0, 1)), clone)
