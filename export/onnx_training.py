"""ONNX model + ONNX Runtime training artifacts for on-device fine-tuning (legacy, x86-64 only).

Legacy format (``--format onnx-training``): it needs onnxruntime-training-cpu, whose last release
(1.19.2) has no aarch64 wheels and stops at Python 3.12, so it installs on none of the boards in
``devices/``; and ORT's generated backward stores the forward's activations, so RevLIF saves no
memory with it. Use :mod:`edgesnn.export.onnx_step` (``--format onnx-step``) for devices.

:func:`export_onnx_training` writes the directory described in :mod:`edgesnn.export.artifacts`.
The graphs are exported for a **fixed batch size** (ORT 1.19's gradient graph for the conv
models' pooling + reshape fails at run time with a symbolic batch dimension) with the time loop
unrolled ``T`` times (see :mod:`edgesnn.export.onnx_inference`), cross-entropy loss on the
time-averaged logits, and SGD (default; ORT's SGD matches ``torch.optim.SGD`` without momentum,
its AdamW does not match torch's). BatchNorm statistics stay frozen; its weight and bias train.

The spike's surrogate gradient survives because :func:`edgesnn.functional.surrogate.stop_gradient`
uses an integer-cast round trip inside an ONNX export (``detach`` would be silently dropped and
every parameter before the first spike would get a zero gradient).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Sequence

from torch import nn

from .. import __version__
from .artifacts import ARTIFACT_FILES, MODEL, Manifest, PathLike, atomic_write_bytes, write_manifest
from .onnx_inference import check_parameter_names, export_graph
from ..checkpoint import encode_config
from ..lr_schedules import RATE_RANGE, is_float32_rate
from .prepare import (ExportError, checked_input_range, example_input, export_copy, refuse_active_dropout,
                      split_trainable)

__all__ = ["OPTIMIZERS", "export_onnx_training", "ort_training_available"]

OPTIMIZERS = ("sgd", "adamw")


def ort_training_available() -> bool:
    """Whether ``onnxruntime.training`` (onnxruntime-training-cpu) can be imported."""
    try:
        from onnxruntime.training import artifacts  # noqa: F401
    except Exception:
        return False
    return True


@contextlib.contextmanager
def _drop_native_info_logs():
    """Hide ORT's native INFO lines (the gradient builder logs every graph pass at INFO whatever the
    Python-side severity) while keeping anything else written to stderr."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr replaced (e.g. captured): nothing to filter
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            sink.seek(0)
            kept = [ln for ln in sink.read().decode("utf-8", "replace").splitlines(keepends=True) if "[I:onnxruntime" not in ln]
            if kept:
                sys.stderr.write("".join(kept))


def _artifacts_module():
    try:
        from onnxruntime.training import artifacts
    except Exception as exc:
        raise ExportError(
            f"--format onnx-training needs onnxruntime-training-cpu 1.19.2 and onnx 1.17.0 "
            f"(pip install 'edgesnn[ort]': x86-64, Python <= 3.12); importing onnxruntime.training failed: {exc}"
        ) from None
    return artifacts


def export_onnx_training(
    model: nn.Module,
    out_dir: PathLike,
    batch_size: int = 32,
    optimizer: str = "sgd",
    learning_rate: float = 0.01,
    input_range: Optional[Sequence[float]] = None,
    freeze: Optional[Sequence[str]] = None,
) -> Manifest:
    """Export ``model`` and generate ORT training artifacts into ``out_dir``.

    Args:
        model: a trained :class:`~edgesnn.models.SpikingClassifier` (not modified).
        out_dir: artifact directory (created; existing artifact files are replaced).
        batch_size: the fixed batch size ``B`` of the training graphs (input ``[B, *in_shape]``,
            labels int64 ``[B]``).
        optimizer: ``"sgd"`` (default) or ``"adamw"``.
        learning_rate: default learning rate recorded in the manifest (the runner can override it).
        input_range: ``(low, high)`` of the inputs the model was trained on, or ``None`` (see
            :func:`~edgesnn.export.onnx_step.export_onnx_step`).
        freeze: parameter or module names to keep fixed, besides parameters with
            ``requires_grad=False`` (:func:`~edgesnn.export.prepare.split_trainable`); they go to
            the artifacts' frozen parameters.

    Returns:
        The :class:`~edgesnn.export.artifacts.Manifest` written to ``out_dir/manifest.json``.
    """
    if optimizer not in OPTIMIZERS:
        raise ExportError(f"optimizer: expected one of {OPTIMIZERS}, got {optimizer!r}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ExportError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    if not is_float32_rate(learning_rate):  # (the runner refuses a manifest with such a rate; NaN is not even JSON)
        raise ExportError(f"learning_rate: expected {RATE_RANGE}, got {learning_rate!r}")
    input_range = checked_input_range(input_range)
    trainable, _ = split_trainable(model, freeze)
    refuse_active_dropout(model, "onnx-training")
    artifacts = _artifacts_module()
    clone = export_copy(model, frozen_batchnorm_ops=True)
    proto = export_graph(clone, example_input(clone, batch_size), dynamic_batch=False)
    # At batch 1 the trace leaves the sizes after the input's expand over T symbolic; ORT's pooling
    # gradient then reads its output shape from them, gets an empty batch and the first training step
    # failed in a reshape. Shape inference with data propagation fixes every size from the static input.
    import onnx

    proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    init_names = check_parameter_names(proto, [n for n, _ in clone.named_parameters()])
    frozen = [n for n in init_names if n not in set(trainable)]

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = out_dir / "manifest.json"
    if stale.exists():
        stale.unlink()  # the directory is incomplete until the new manifest lands
    # generate into a scratch directory beside out_dir, then move files in one by one (rename is atomic)
    scratch = Path(tempfile.mkdtemp(prefix=".edgesnn-export-", dir=out_dir))
    try:
        opt = artifacts.OptimType.SGD if optimizer == "sgd" else artifacts.OptimType.AdamW
        # (ORT's process-wide logger severity is the user's: its INFO lines are filtered here instead)
        with warnings.catch_warnings(), _drop_native_info_logs():
            warnings.simplefilter("ignore")
            artifacts.generate_artifacts(
                proto, requires_grad=trainable, frozen_params=frozen, loss=artifacts.LossType.CrossEntropyLoss,
                optimizer=opt, artifact_directory=str(scratch),
            )
        atomic_write_bytes(scratch / MODEL, proto.SerializeToString())
        for name in ARTIFACT_FILES:
            src = scratch / name
            if not src.is_file():
                raise ExportError(f"ORT artifact generation did not write {name}")
            os.replace(src, out_dir / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    cfg = dict(getattr(model, "config", {}) or {})
    manifest = Manifest(
        model_config=encode_config(cfg),  # plain JSON (a surrogate instance becomes name + alpha)
        batch_size=batch_size,
        in_shape=list(clone.in_shape),
        num_classes=int(cfg.get("num_classes", 0)) or int(proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value),
        timesteps=int(clone.timesteps),
        trainable=trainable,
        frozen=frozen,
        optimizer=optimizer,
        learning_rate=float(learning_rate),
        input_range=input_range,
        edgesnn_version=__version__,
    )
    write_manifest(out_dir, manifest)
    return manifest
