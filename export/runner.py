"""Device-side fine-tuning from ONNX Runtime training artifacts. Never imports torch.

Usage (``edgesnn-device`` is the same entry point)::

    python -m edgesnn.export.runner ARTIFACTS --data data.npz --epochs 3 [--lr 0.05] [--out DIR]

``data.npz`` holds ``x`` (float32 ``[N, *in_shape]``) and ``y`` (integer labels ``[N]``). The
runner validates the artifacts (every file present, SHA-256 as in the manifest), trains for
``--epochs`` epochs (shuffled, fixed batch size from the manifest, last partial batch dropped),
then writes to ``--out`` (default ``ARTIFACTS/finetuned``), each file atomically:

* ``checkpoint``: the fine-tuned ORT checkpoint (load it with ``--resume`` to continue),
* ``params.npz``: every parameter/buffer by its PyTorch name (for the host to rebuild an
  edgesnn checkpoint without ONNX Runtime, see :func:`edgesnn.export.cli.import_params`),
* ``inference.onnx``: the fine-tuned forward graph (``input -> logits``),
* ``metrics.json``: losses, accuracy before/after, step time, peak RSS.

Importing ``onnxruntime.training`` normally imports torch (``onnxruntime/training/__init__``
pulls in ORTModule, and plain ``import onnxruntime`` probes for ORTModule too). The runner
registers a bare package object for ``onnxruntime.training`` and blocks
``onnxruntime.training.ortmodule`` *before* importing onnxruntime, then imports only
``onnxruntime.training.api`` (CheckpointState, Module, Optimizer: thin wrappers over the C++
training API). It checks ``"torch" not in sys.modules`` at the end and fails if torch slipped in.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import resource
import sys
import time
import types
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .artifacts import (
    CHECKPOINT,
    EVAL_MODEL,
    MODEL,
    OPTIMIZER_MODEL,
    TRAINING_MODEL,
    ArtifactError,
    Manifest,
    atomic_write_bytes,
    atomic_write_text,
    validate_artifact_dir,
)

__all__ = ["import_ort_training_api", "load_dataset", "finetune", "peak_rss_mb", "main"]


def import_ort_training_api():
    """``(onnxruntime, CheckpointState, Module, Optimizer)`` without importing torch.

    Raises:
        RuntimeError: if onnxruntime-training is not installed.
    """
    if "onnxruntime.training" not in sys.modules:
        spec = importlib.util.find_spec("onnxruntime")
        if spec is None or spec.origin is None:
            raise RuntimeError("the device runner needs onnxruntime-training (pip install onnxruntime-training-cpu==1.19.2)")
        training_dir = os.path.join(os.path.dirname(spec.origin), "training")
        if not os.path.isdir(os.path.join(training_dir, "api")):
            raise RuntimeError(
                "onnxruntime is installed without the training API; install onnxruntime-training-cpu==1.19.2 "
                "(and not plain onnxruntime, which shares its package folder)"
            )
        stub = types.ModuleType("onnxruntime.training")
        stub.__path__ = [training_dir]  # a package whose __init__ (ORTModule, torch) never runs
        sys.modules["onnxruntime.training"] = stub
        sys.modules.setdefault("onnxruntime.training.ortmodule", None)  # makes `import ...ortmodule` raise ImportError
    import onnxruntime
    from onnxruntime.training.api import CheckpointState, Module, Optimizer

    return onnxruntime, CheckpointState, Module, Optimizer


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB.

    Reads ``VmHWM`` from ``/proc/self/status`` (the high-water mark of this address space; unlike
    ``ru_maxrss`` it does not carry over the peak of a parent that forked and exec'd us), falling
    back to ``ru_maxrss`` where there is no procfs.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_dataset(path, manifest: Manifest) -> Tuple[np.ndarray, np.ndarray]:
    """Load ``x`` (float32 ``[N, *in_shape]``) and ``y`` (int64 ``[N]``) from an ``.npz``, checked against the manifest."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data: no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz or "y" not in npz:
                raise ValueError(f"data: {path} must hold arrays 'x' and 'y' (found {sorted(npz.files)})")
            x = np.ascontiguousarray(npz["x"], dtype=np.float32)
            y = np.ascontiguousarray(npz["y"]).astype(np.int64)
    except (OSError, EOFError) as exc:
        raise ValueError(f"data: {path} is not a readable .npz file ({exc})") from None
    if tuple(x.shape[1:]) != tuple(manifest.in_shape):
        raise ValueError(f"data: x has shape {x.shape}; the model expects [N, {', '.join(map(str, manifest.in_shape))}]")
    if y.shape != (x.shape[0],):
        raise ValueError(f"data: y has shape {y.shape}; expected ({x.shape[0]},)")
    if y.size and (y.min() < 0 or y.max() >= manifest.num_classes):
        raise ValueError(f"data: labels must lie in [0, {manifest.num_classes}), got [{y.min()}, {y.max()}]")
    if x.shape[0] < manifest.batch_size:
        raise ValueError(f"data: {x.shape[0]} samples is fewer than one batch of {manifest.batch_size}")
    if not np.isfinite(x).all():
        raise ValueError("data: x contains NaN or Inf")
    return x, y


def _accuracy(ort, model_path: Path, x: np.ndarray, y: np.ndarray, batch: int, manifest: Manifest) -> float:
    """Accuracy of an ONNX forward graph with a fixed batch ``batch`` (the last chunk is zero-padded)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    correct = 0
    for i in range(0, x.shape[0], batch):
        xb = x[i:i + batch]
        n = xb.shape[0]
        if n < batch:
            xb = np.concatenate([xb, np.zeros((batch - n, *xb.shape[1:]), np.float32)])
        logits = sess.run([manifest.output_name], {manifest.input_name: xb})[0][:n]
        correct += int((logits.argmax(1) == y[i:i + n]).sum())
    return correct / max(1, x.shape[0])


def _atomic_ort_checkpoint(CheckpointState, state, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        CheckpointState.save_checkpoint(state, str(tmp), include_optimizer_state=True)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _atomic_inference_model(module, path: Path, output_name: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        module.export_model_for_inferencing(str(tmp), [output_name])
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _params_npz(state, names: Sequence[str]) -> bytes:
    arrays = {name: np.asarray(state.parameters[name].data) for name in names}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def finetune(
    artifact_dir,
    data,
    epochs: int,
    lr: Optional[float] = None,
    out_dir=None,
    seed: int = 0,
    resume: bool = False,
    threads: int = 0,
    log: Callable[[str], None] = print,
) -> Dict:
    """Fine-tune from an artifact directory; returns the metrics written to ``out_dir/metrics.json``.

    Args:
        artifact_dir: directory written by ``edgesnn export --format onnx-training``.
        data: path to an ``.npz`` with ``x``/``y`` (see :func:`load_dataset`).
        epochs: passes over the data (each shuffled with ``seed + epoch``).
        lr: learning rate; ``None`` uses the manifest's.
        out_dir: output directory; default ``artifact_dir/finetuned``.
        resume: start from ``out_dir/checkpoint`` if it exists instead of the exported weights.
        threads: ONNX Runtime intra-op threads (0: ORT's default, one per core).
    """
    if not (isinstance(epochs, int) and epochs >= 0):
        raise ValueError(f"epochs: expected an integer >= 0, got {epochs!r}")
    artifact_dir = Path(artifact_dir)
    manifest = validate_artifact_dir(artifact_dir)
    x, y = load_dataset(data, manifest)
    out_dir = Path(out_dir) if out_dir is not None else artifact_dir / "finetuned"
    out_dir.mkdir(parents=True, exist_ok=True)
    ort, CheckpointState, Module, Optimizer = import_ort_training_api()
    ort.set_default_logger_severity(3)

    start_ckpt = out_dir / CHECKPOINT if resume and (out_dir / CHECKPOINT).is_file() else artifact_dir / CHECKPOINT
    try:
        state = CheckpointState.load_checkpoint(str(start_ckpt))
    except Exception as exc:
        raise ArtifactError(f"{start_ckpt}: corrupt artifact file (ONNX Runtime could not load it: {exc})") from None
    try:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.log_severity_level = 3
        module = Module(str(artifact_dir / TRAINING_MODEL), state, str(artifact_dir / EVAL_MODEL), device="cpu",
                        session_options=opts)
        optimizer = Optimizer(str(artifact_dir / OPTIMIZER_MODEL), module)
    except Exception as exc:
        raise ArtifactError(f"{artifact_dir}: ONNX Runtime could not load the training graphs ({exc})") from None
    optimizer.set_learning_rate(float(manifest.learning_rate if lr is None else lr))

    B = manifest.batch_size
    acc_before = _accuracy(ort, artifact_dir / MODEL, x, y, B, manifest) if not resume else None
    module.train()
    epoch_losses: List[float] = []
    step_times: List[float] = []
    step_cpu: List[float] = []
    for epoch in range(epochs):
        order = np.random.default_rng(seed + epoch).permutation(x.shape[0])
        losses = []
        for i in range(0, x.shape[0] - B + 1, B):
            idx = order[i:i + B]
            t0, c0 = time.perf_counter(), time.process_time()
            loss = module(x[idx], y[idx])
            optimizer.step()
            module.lazy_reset_grad()
            step_times.append(time.perf_counter() - t0)
            step_cpu.append(time.process_time() - c0)
            losses.append(float(loss))
        epoch_losses.append(float(np.mean(losses)))
        log(f"epoch {epoch + 1}/{epochs}: loss {epoch_losses[-1]:.4f} ({len(losses)} steps)")

    _atomic_ort_checkpoint(CheckpointState, state, out_dir / CHECKPOINT)
    names = list(manifest.trainable) + list(manifest.frozen)
    atomic_write_bytes(out_dir / "params.npz", _params_npz(state, names))
    _atomic_inference_model(module, out_dir / "inference.onnx", manifest.output_name)
    acc_after = _accuracy(ort, out_dir / "inference.onnx", x, y, B, manifest)

    # the first step includes graph set-up; report the steady state separately
    steady = step_times[1:] if len(step_times) > 1 else step_times
    steady_cpu = step_cpu[1:] if len(step_cpu) > 1 else step_cpu
    metrics = {
        "epochs": epochs,
        "steps": len(step_times),
        "batch_size": B,
        "learning_rate": float(manifest.learning_rate if lr is None else lr),
        "epoch_loss": epoch_losses,
        "accuracy_before": acc_before,
        "accuracy_after": acc_after,
        "step_ms_mean": 1000.0 * float(np.mean(steady)) if steady else None,
        "step_ms_median": 1000.0 * float(np.median(steady)) if steady else None,
        "step_cpu_ms_median": 1000.0 * float(np.median(steady_cpu)) if steady_cpu else None,
        "threads": int(threads),
        "peak_rss_mb": peak_rss_mb(),
        "torch_imported": "torch" in sys.modules,
    }
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    if metrics["torch_imported"]:
        raise RuntimeError("device runner: torch was imported during fine-tuning; the runner must stay torch-free")
    return metrics


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgesnn-device", description="Fine-tune an exported edgesnn model with ONNX Runtime (no torch).")
    p.add_argument("artifacts", help="artifact directory from `edgesnn export --format onnx-training`")
    p.add_argument("--data", required=True, help=".npz with x [N, *in_shape] float32 and y [N] int labels")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the manifest's)")
    p.add_argument("--out", default=None, help="output directory (default: ARTIFACTS/finetuned)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint if present")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (default 0: one per core)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        m = finetune(args.artifacts, args.data, args.epochs, args.lr, args.out, args.seed, args.resume, args.threads)
    except (ArtifactError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"edgesnn-device: error: {exc}", file=sys.stderr)
        return 2
    before = "n/a" if m["accuracy_before"] is None else f"{m['accuracy_before']:.4f}"
    step = "n/a" if m["step_ms_mean"] is None else f"{m['step_ms_mean']:.2f} ms"
    print(f"accuracy {before} -> {m['accuracy_after']:.4f}; step {step}; peak RSS {m['peak_rss_mb']:.1f} MB; torch imported: {m['torch_imported']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
