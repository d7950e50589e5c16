"""ONNX export of a spiking classifier (the graph the training artifacts are built on, and ``--format onnx``).

The time loop is **unrolled**: the graph maps ``input [B, *in_shape]`` to ``logits [B, classes]``
with the ``T`` steps of every node written out. ONNX Runtime's gradient builder needs a static,
loop-free graph (it has no gradient for ``Loop``/``Scan``), and a per-step graph
``(x, state) -> (y, state')`` cannot be trained through the ORT training API, which runs one
forward/backward per call and has no way to carry gradients between calls. T is small for
these models (4-8), so the unrolled graph stays small.

The legacy (TorchScript-based) exporter is used with ``do_constant_folding=False`` and
``keep_initializers_as_inputs=True`` (which turns off de-duplication of equal initializers:
two fresh BatchNorm layers both hold all-ones weights and would otherwise share one tensor);
the initializers are then removed from the graph inputs again. :func:`check_parameter_names`
asserts that every parameter keeps its PyTorch name.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Sequence

import torch
from torch import nn

from .artifacts import PathLike, atomic_write_bytes
from .prepare import (ExportError, check_export_flag, check_finite, check_out_path, example_input, export_copy,
                      take_frames_batch_first)

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = ["OPSET", "export_graph", "check_parameter_names", "inference_metadata", "add_metadata", "export_onnx"]

OPSET = 17


def _onnx():
    try:
        import onnx
    except ImportError:  # pragma: no cover - depends on the environment
        raise ExportError("ONNX export (--format onnx / onnx-step) needs the onnx package: "
                          "pip install 'edgesnn[onnx]'") from None
    return onnx


def export_graph(model: nn.Module, example: torch.Tensor, dynamic_batch: bool, input_name: str = "input",
                 output_name: str = "logits") -> "onnx.ModelProto":
    """Trace an already-prepared model (see :func:`edgesnn.export.prepare.export_copy`) to an ``onnx.ModelProto``.

    Args:
        model: the export copy (eval mode, reference backend).
        example: an input ``[B, *in_shape]``; its batch size is fixed in the graph unless ``dynamic_batch``.
    """
    onnx = _onnx()
    buf = io.BytesIO()
    dynamic_axes = {input_name: {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings for shape checks, exporter deprecation notices
        torch.onnx.export(
            model, (example,), buf, input_names=[input_name], output_names=[output_name],
            dynamic_axes=dynamic_axes, opset_version=OPSET, do_constant_folding=False,
            keep_initializers_as_inputs=True, training=torch.onnx.TrainingMode.EVAL, dynamo=False,
        )
    proto = onnx.load_from_string(buf.getvalue())
    init_names = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in init_names]
    del proto.graph.input[:]
    proto.graph.input.extend(inputs)
    onnx.checker.check_model(proto)
    return proto


def check_parameter_names(proto: "onnx.ModelProto", names: Iterable[str]) -> List[str]:
    """Raise :class:`ExportError` unless every name is an initializer of ``proto``; returns the initializer names."""
    init_names = [i.name for i in proto.graph.initializer]
    missing = sorted(set(names) - set(init_names))
    if missing:
        raise ExportError(f"ONNX export lost parameter names {missing}; exported initializers: {sorted(init_names)}")
    return init_names


def _shape_text(dims: Sequence[int]) -> str:
    return ", ".join(str(int(d)) for d in dims)


def inference_metadata(model: nn.Module, num_classes: int, event: bool = False) -> Dict[str, str]:
    """The ``metadata_props`` of an inference model: what the graph computes and how it was made.

    The graph is :class:`~edgesnn.models.SpikingClassifier`'s forward traced for a static input:
    one frame ``[B, *in_shape]`` repeated over the ``T`` time steps, the readout averaged over T;
    ``event``: T frames per sample, ``[B, T, *in_shape]`` (``in_shape`` is then ``[T, *in_shape]``).
    """
    from .. import __version__
    from ..checkpoint import encode_config

    T, in_shape = int(model.timesteps), tuple(model.in_shape)
    return {
        "edgesnn_version": __version__,
        "model_config": json.dumps(encode_config(getattr(model, "config", {})), sort_keys=True, default=str),
        "timesteps": str(T),
        "in_shape": json.dumps(([T] if event else []) + [int(d) for d in in_shape]),
        "num_classes": str(int(num_classes)),
        "input": (f"input: float32 [B, {T}, {_shape_text(in_shape)}], T={T} frames per sample, frame t at time step t "
                  "(event data)" if event else
                  f"input: float32 [B, {_shape_text(in_shape)}], one frame per sample, repeated over the T={T} time "
                  "steps (direct encoding; not event data)"),
        "output": f"logits: float32 [B, {int(num_classes)}], the readout layer's output averaged over the T={T} time "
                  "steps (no softmax)",
        "time_loop": "unrolled",
        "batchnorm": "frozen-statistics",
    }


def _output_width(proto) -> int:
    """The class count: the last dimension of the graph's (single) output ``[B, classes]``."""
    return int(proto.graph.output[0].type.tensor_type.shape.dim[-1].dim_value)


def add_metadata(proto: "onnx.ModelProto", model: nn.Module, event: bool = False) -> None:
    """Store :func:`inference_metadata` in ``proto.metadata_props`` and a one-line ``doc_string``."""
    meta = inference_metadata(model, _output_width(proto), event)
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = (f"edgesnn {meta['edgesnn_version']} spiking classifier, T={meta['timesteps']} time steps "
                        f"unrolled: {meta['input']} -> {meta['output']}")


def export_onnx(model: nn.Module, path: PathLike, batch_size: Optional[int] = None, event: bool = False) -> Path:
    """Export an inference-only ONNX model (``input [B, *in_shape] -> logits [B, classes]``), atomically.

    ``event``: the model was trained on event data: the graph takes ``[B, T, *in_shape]``, frame
    ``t`` at time step ``t`` (batch first, as ``onnx-step`` and the device data).

    The model carries :func:`inference_metadata` (``metadata_props``: edgesnn version, model
    config, T, input shape, class count, what the input and output mean) and a ``doc_string``.

    Args:
        model: a trained :class:`~edgesnn.models.SpikingClassifier` (not modified); a NaN or Inf
            in its parameters or buffers is refused (:func:`~.prepare.check_finite`).
        batch_size: fix the batch dimension; ``None`` (default) exports a dynamic batch.
    """
    path = check_out_path(path, "path")
    event = check_export_flag(event, "event")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ExportError(f"batch_size: expected None (a dynamic batch) or an integer >= 1, got {batch_size!r:.80}")
    check_finite(model)
    clone = export_copy(model)
    if event:
        take_frames_batch_first(clone)
    proto = export_graph(clone, example_input(clone, batch_size or 2, event=event), dynamic_batch=batch_size is None)
    check_parameter_names(proto, [n for n, _ in clone.named_parameters()])
    add_metadata(proto, clone, event)
    return atomic_write_bytes(path, proto.SerializeToString())
