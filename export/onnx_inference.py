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
import warnings
from pathlib import Path
from typing import Iterable, List, Optional

import torch
from torch import nn

from .artifacts import atomic_write_bytes
from .prepare import ExportError, example_input, export_copy

__all__ = ["OPSET", "export_graph", "check_parameter_names", "export_onnx"]

OPSET = 17


def _onnx():
    try:
        import onnx
    except ImportError:  # pragma: no cover - depends on the environment
        raise ExportError("ONNX export needs the 'onnx' package: pip install -e .[ort]") from None
    return onnx


def export_graph(model: nn.Module, example: torch.Tensor, dynamic_batch: bool, input_name: str = "input",
                 output_name: str = "logits"):
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


def check_parameter_names(proto, names: Iterable[str]) -> List[str]:
    """Raise :class:`ExportError` unless every name is an initializer of ``proto``; returns the initializer names."""
    init_names = [i.name for i in proto.graph.initializer]
    missing = sorted(set(names) - set(init_names))
    if missing:
        raise ExportError(f"ONNX export lost parameter names {missing}; exported initializers: {sorted(init_names)}")
    return init_names


def export_onnx(model: nn.Module, path, batch_size: Optional[int] = None) -> Path:
    """Export an inference-only ONNX model (``input [B, *in_shape] -> logits [B, classes]``), atomically.

    Args:
        model: a trained :class:`~edgesnn.models.SpikingClassifier` (not modified).
        batch_size: fix the batch dimension; ``None`` (default) exports a dynamic batch.
    """
    clone = export_copy(model)
    proto = export_graph(clone, example_input(clone, batch_size or 2), dynamic_batch=batch_size is None)
    check_parameter_names(proto, [n for n, _ in clone.named_parameters()])
    return atomic_write_bytes(path, proto.SerializeToString())
