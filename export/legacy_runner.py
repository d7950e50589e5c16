"""The legacy ``onnx-training`` path of the device runner (:mod:`edgesnn.export.runner`): ONNX
Runtime training artifacts run through onnxruntime-training's training API. Never imports torch.

:func:`finetune_legacy` trains through the shared epoch loop (:func:`~.run_loop.run_epochs`) and,
after every epoch, swaps a complete output set into ``--out``:
``checkpoint`` (ORT checkpoint with the optimizer state and the run's progress and settings as
properties), ``params.npz``, ``inference.onnx`` and ``metrics.json``.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from edgesnn.atomic import WriteError
from edgesnn.errors import first_line

from .artifacts import (CHECKPOINT, EVAL_MODEL, MODEL, OPTIMIZER_MODEL, TRAINING_MODEL, ArtifactError, Manifest,
                        atomic_write_bytes, atomic_write_text)
from .run_history import load_history
from .run_loop import EpochEnd, run_epochs
from .run_schedule import resolve_schedule
from .run_state import OutputDir, check_settings
from .run_support import padded_batches, peak_rss_mb
from .start_state import RESUME_FIX, check_resumed_steps, check_start_values, first_loss_error, start_counter
from .runner import StepCheckError, _one_line, import_ort_training_api

__all__ = ["finetune_legacy"]


def _accuracy(ort, model_path: Path, x: np.ndarray, y: np.ndarray, batch: int, manifest: Manifest) -> float:
    """Accuracy of an ONNX forward graph with a fixed batch ``batch`` (the last chunk is zero-padded)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    correct = 0
    for i, xb, n in padded_batches(x, batch):
        logits = sess.run([manifest.output_name], {manifest.input_name: xb})[0][:n]
        correct += int((logits.argmax(1) == y[i:i + n]).sum())
    return correct / max(1, x.shape[0])


def _ort_write(path: Path, write: Callable[[], None]) -> None:
    """Run an ONNX Runtime writer of ``path``; its failure (a ``RuntimeError`` such as
    "Protobuf serialization failed" when the disk is full) becomes one :class:`WriteError` line."""
    try:
        write()
    except RuntimeError as exc:
        text = _one_line(exc).split("[ONNXRuntimeError] : ")[-1]  # not the C++ source location before it
        raise WriteError(f"cannot write {path}: ONNX Runtime could not write it (disk full or not writable?): "
                         f"{first_line(text, 160)}") from None


def _atomic_ort_checkpoint(CheckpointState, state, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        _ort_write(path, lambda: CheckpointState.save_checkpoint(state, str(tmp), include_optimizer_state=True))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _atomic_inference_model(module, path: Path, output_name: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        _ort_write(path, lambda: module.export_model_for_inferencing(str(tmp), [output_name]))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _params_npz(state, names: Sequence[str]) -> bytes:
    arrays = {name: np.asarray(state.parameters[name].data) for name in names}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _current_accuracy(ort, module, x: np.ndarray, y: np.ndarray, manifest: Manifest) -> float:
    """Accuracy of the module's current weights (a resumed run's starting point): its inference
    graph exported into a temp folder that is always removed."""
    with tempfile.TemporaryDirectory(prefix=".edgesnn-eval.") as tmp:
        path = Path(tmp) / "inference.onnx"
        module.export_model_for_inferencing(str(path), [manifest.output_name])
        return _accuracy(ort, path, x, y, manifest.batch_size, manifest)


def finetune_legacy(artifact_dir: Path, manifest: Manifest, x: np.ndarray, y: np.ndarray, xe: np.ndarray,
                    ye: np.ndarray, epochs: int, lr: Optional[float], out: OutputDir, seed: int, resume: bool,
                    threads: Optional[int], log: Callable[[str], None], accuracy_on: str, settings: Dict,
                    lr_schedule: str = "constant") -> Dict:
    """The legacy (onnx-training) loop: ``x [N, *in_shape]`` float32, ``y [N]`` int64; accuracy on
    ``xe``/``ye``. Starts from ``out``'s checkpoint when resuming (refused if its recorded
    ``settings`` or ``lr_schedule`` differ, see :func:`~.run_schedule.resolve_schedule`), and swaps
    the output set into ``out`` after every epoch. A cosine schedule sets the rate before every step
    (``Optimizer.set_learning_rate``, a scalar setter of ORT's training API)."""
    torch_before = "torch" in sys.modules  # (a calling process's own torch is not the runner's doing)
    ort, CheckpointState, Module, Optimizer = import_ort_training_api()
    ort.set_default_logger_severity(3)

    resuming = resume and (out.path / CHECKPOINT).is_file()
    start_ckpt = out.path / CHECKPOINT if resuming else artifact_dir / CHECKPOINT
    try:
        state = CheckpointState.load_checkpoint(str(start_ckpt))
    except Exception as exc:
        hint = f"; {RESUME_FIX}" if resuming else ""
        raise ArtifactError(f"{start_ckpt}: corrupt artifact file (ONNX Runtime could not load it: {_one_line(exc)}){hint}") from None
    check_start_values({n: np.asarray(state.parameters[n].data) for n in [*manifest.trainable, *manifest.frozen]
                        if n in state.parameters}, start_ckpt, RESUME_FIX if resuming else "export again")
    recorded = (str(state.properties["runner_settings"]) if resuming and "runner_settings" in state.properties
                else None)
    if resuming:
        check_settings(recorded, settings, start_ckpt)
    done = start_counter(state.properties, "runner_epochs", start_ckpt) if resuming else 0
    done_steps = start_counter(state.properties, "runner_steps", start_ckpt) if resuming else 0
    B = manifest.batch_size
    steps_per_epoch = -(-x.shape[0] // B)
    if recorded is not None:
        check_resumed_steps(start_ckpt, done_steps, done, steps_per_epoch, ("runner_steps", "runner_epochs"))
    schedule = resolve_schedule(lr_schedule, float(settings["lr"]), epochs, steps_per_epoch, resuming, recorded,
                                done, start_ckpt)
    settings = schedule.with_settings(settings)
    history = load_history(out.path, resuming, done, False, log)
    try:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or 0)
        opts.log_severity_level = 3
        module = Module(str(artifact_dir / TRAINING_MODEL), state, str(artifact_dir / EVAL_MODEL), device="cpu",
                        session_options=opts)
        optimizer = Optimizer(str(artifact_dir / OPTIMIZER_MODEL), module)
    except Exception as exc:
        if resuming:
            raise ArtifactError(f"--resume: {start_ckpt} does not fit the artifacts in {artifact_dir} (fine-tuned from "
                                f"another export?); {RESUME_FIX}") from None
        raise ArtifactError(f"{artifact_dir}: ONNX Runtime could not load the training graphs ({_one_line(exc)})") from None
    rate = float(settings["lr"])
    optimizer.set_learning_rate(rate)

    acc_before = (_current_accuracy(ort, module, xe, ye, manifest) if resuming
                  else _accuracy(ort, artifact_dir / MODEL, xe, ye, B, manifest))
    module.train()
    names = list(manifest.trainable) + list(manifest.frozen)

    def step(xb: np.ndarray, yb: np.ndarray, number: int) -> float:
        loss = float(module(xb, yb))
        if not math.isfinite(loss) and number == done_steps + 1:  # computed before this run's first update
            raise first_loss_error(number, loss, start_ckpt, RESUME_FIX if resuming else "export again")
        if not math.isfinite(loss):  # as the onnx-step runner: never train on (and save) diverged weights
            raise StepCheckError(f"step {number}: the loss is {loss}; lower --lr")
        optimizer.step()
        module.lazy_reset_grad()
        return loss

    def end_epoch(end: EpochEnd) -> Tuple[Dict, Callable[[Path], None]]:
        bad_values = [n for n in manifest.trainable if not np.isfinite(np.asarray(state.parameters[n].data)).all()]
        if bad_values:  # the last update is not seen by the loss check
            raise StepCheckError(f"step {end.total_steps}: the update made {bad_values[:3]} non-finite; lower --lr")
        history.add(end.epoch, end.losses[-1], end.lrs[-1] if end.lrs else None, None, end.total_steps)
        row = history.rows[-1]
        state.properties["runner_epochs"] = end.epoch + 1
        state.properties["runner_steps"] = end.total_steps
        state.properties["runner_settings"] = json.dumps(settings, sort_keys=True)
        metrics = {
            "format": "onnx-training",
            **end.progress,
            "batch_size": B,
            "learning_rate": rate,
            **schedule.metrics(),
            "epoch_lr": end.lrs,
            "seed": seed,
            "epoch_loss": end.losses,
            "accuracy_on": accuracy_on,
            "eval_samples": int(xe.shape[0]),
            "accuracy_before": acc_before,
            "accuracy_after": None,
            **history.metrics(),
            **end.timing,
            "threads": int(threads or 0),
            "peak_rss_mb": peak_rss_mb(),
            "torch_imported": "torch" in sys.modules,
        }

        def write(d: Path) -> None:
            _atomic_ort_checkpoint(CheckpointState, state, d / CHECKPOINT)
            atomic_write_bytes(d / "params.npz", _params_npz(state, names))
            _atomic_inference_model(module, d / "inference.onnx", manifest.output_name)
            if end.last:
                metrics["accuracy_after"] = row["accuracy"] = _accuracy(ort, d / "inference.onnx", xe, ye, B, manifest)
            atomic_write_text(d / "metrics.json", json.dumps(metrics, indent=2) + "\n")
            module.train()  # exporting the inference graph must not leave the module in eval mode

        return metrics, write

    metrics = run_epochs(x, y, B, epochs, seed, done, done_steps, resuming, out, log, step, end_epoch, schedule,
                         optimizer.set_learning_rate)
    if metrics["torch_imported"] and not torch_before:
        raise RuntimeError("device runner: torch was imported during fine-tuning; the runner must stay torch-free")
    return metrics
