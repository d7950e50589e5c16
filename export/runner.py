"""Device-side fine-tuning of an exported model. Never imports torch.

Usage (``edgesnn-device`` is the same entry point)::

    python -m edgesnn.export.runner ARTIFACTS --data data.npz --epochs 3 [--lr 0.05] [--out DIR] [--holdout 0.2]

Two artifact formats, told apart by the manifest:

* ``onnx-step`` (:mod:`edgesnn.export.onnx_step`; the default): a whole training step as one
  plain ONNX inference graph. Needs only ``numpy`` and plain ``onnxruntime`` (any platform with
  a wheel: x86-64 and aarch64, Python 3.10-3.13); ``onnxruntime.training`` is never imported,
  even from a training build. Parameters and optimizer state live in two preallocated sets of
  ``OrtValue`` buffers bound once through ``IOBinding`` (step k reads set A and writes set B,
  step k+1 the other way): per step only the batch, the labels and three scalars cross Python.
  Writes ``state.npz`` (parameters + optimizer state: ``--resume`` continues from it),
  ``params.npz`` and ``metrics.json``; the fine-tuned forward is ``ARTIFACTS/eval.onnx`` fed
  with ``params.npz``. Every step's ``recon_error`` (the reversible layers' reconstruction
  check) must be within the manifest's tolerance (0.0 in exact mode), or the runner stops.
* ``onnx-training`` (legacy, x86-64 only): ONNX Runtime training artifacts, run through
  onnxruntime-training's training API (see below).

``--holdout F`` keeps a fixed, seeded fraction of the data out of training and reports accuracy
before/after on it (default 0.2 for onnx-step; 0 for the legacy format, which then reports
accuracy on the training data as before). ``--eval-data`` names a separate held-out ``.npz``.

The rest of this docstring describes the legacy ``onnx-training`` path.

``data.npz`` holds ``x`` (float32 ``[N, *in_shape]``) and ``y`` (integer labels ``[N]``). The
runner validates the artifacts (every file present, SHA-256 as in the manifest), trains for
``--epochs`` epochs (shuffled, fixed batch size from the manifest, last partial batch dropped),
then writes to ``--out`` (default ``ARTIFACTS/finetuned``). A non-empty ``--out`` is refused unless
``--resume`` (continue from its checkpoint) or ``--force`` (start again from the exported
weights); the two exclude each other. Either way the new folder is built beside it and swapped in
as a whole (a resumed run keeps any other files the folder held). It holds:

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
import math
import os
import sys
import time
import types
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgesnn.atomic import check_not_inside, check_output, replace_dir
from edgesnn.errors import USER_ERRORS, DependencyError, UsageError

from .artifacts import (StepManifest, CHECKPOINT, EVAL_MODEL, MODEL, OPTIMIZER_MODEL, TRAINING_MODEL, ArtifactError, Manifest, atomic_write_bytes, atomic_write_text, validate_artifact_dir)
from .run_support import FLOAT32_MAX, padded_batches, peak_rss_mb, read_npz, step_time_metrics

__all__ = ["import_ort_training_api", "import_plain_ort", "load_dataset", "finetune", "peak_rss_mb", "main",
           "StepCheckError", "training_modules_imported"]


class StepCheckError(ValueError):
    """A training step failed its own check (loss not finite, reversible reconstruction off)."""


def import_plain_ort():
    """``onnxruntime`` for plain inference sessions, never importing ``onnxruntime.training`` or torch.

    A training build's ``import onnxruntime`` probes ``onnxruntime.training.ortmodule`` (which
    imports torch); marking ``onnxruntime.training`` as absent first makes that probe a clean
    ``ImportError``. With plain onnxruntime there is no such package and nothing changes.
    """
    if "onnxruntime" not in sys.modules:
        spec = importlib.util.find_spec("onnxruntime")
        if spec is not None and spec.origin and os.path.isdir(os.path.join(os.path.dirname(spec.origin), "training")):
            sys.modules.setdefault("onnxruntime.training", None)
    try:
        import onnxruntime
    except ImportError as exc:
        raise DependencyError(f"the device runner needs onnxruntime (pip install onnxruntime); importing it failed: {exc}") from None
    return onnxruntime


def training_modules_imported() -> List[str]:
    """Names of loaded modules the step runner must not use: torch and onnxruntime.training.*."""
    return sorted(m for m, mod in list(sys.modules.items()) if mod is not None
                  and (m == "torch" or m.startswith("torch.") or m.startswith("onnxruntime.training")))


def import_ort_training_api():
    """``(onnxruntime, CheckpointState, Module, Optimizer)`` without importing torch.

    Raises:
        DependencyError: (a ``RuntimeError``) if onnxruntime-training is not installed.
    """
    if sys.modules.get("onnxruntime.training") is None:  # absent, or blocked by import_plain_ort
        sys.modules.pop("onnxruntime.training", None)
        spec = importlib.util.find_spec("onnxruntime")
        if spec is None or spec.origin is None:
            raise DependencyError("the device runner needs onnxruntime-training (pip install onnxruntime-training-cpu==1.19.2)")
        training_dir = os.path.join(os.path.dirname(spec.origin), "training")
        if not os.path.isdir(os.path.join(training_dir, "api")):
            raise DependencyError(
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


def _integer_labels(y: np.ndarray, path: Path) -> np.ndarray:
    """``y`` as int64; float labels must be whole numbers (casting would silently truncate 2.7 to 2)."""
    if np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating):
        bad = ~np.isfinite(y) | (y != np.round(y)) if y.size else np.zeros(0, bool)
        if bad.any():
            raise UsageError(f"data: {path} key 'y' holds non-integer labels (e.g. {y[bad].flat[0]!r}); "
                             "expected integer class indices")
        return y.astype(np.int64)
    raise UsageError(f"data: {path} key 'y' has dtype {y.dtype}; expected integer class indices")


def load_dataset(path, manifest, min_samples: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Load ``x`` (float32 ``[N, *in_shape]``) and ``y`` (int64 ``[N]``) from an ``.npz``, checked against the manifest."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data: no such file: {path}")
    arrays = read_npz(path, "data")
    if "x" not in arrays or "y" not in arrays:
        raise ValueError(f"data: {path} must hold arrays 'x' and 'y' (found {sorted(arrays)})")
    x = np.ascontiguousarray(arrays.pop("x"), dtype=np.float32)
    y = _integer_labels(np.asarray(arrays.pop("y")), path)
    if tuple(x.shape[1:]) != tuple(manifest.in_shape):
        raise ValueError(f"data: x has shape {x.shape}; the model expects [N, {', '.join(map(str, manifest.in_shape))}]")
    if y.shape != (x.shape[0],):
        raise ValueError(f"data: y has shape {y.shape}; expected ({x.shape[0]},)")
    if y.size and (y.min() < 0 or y.max() >= manifest.num_classes):
        raise ValueError(f"data: labels must lie in [0, {manifest.num_classes}), got [{y.min()}, {y.max()}]")
    need = manifest.batch_size if min_samples is None else min_samples
    if x.shape[0] < need:
        raise ValueError(f"data: {path} holds {x.shape[0]} samples, fewer than {'one batch of ' if min_samples is None else ''}{need}")
    if not np.isfinite(x).all():
        raise ValueError("data: x contains NaN or Inf")
    return x, y


def _one_line(exc: BaseException) -> str:
    """ONNX Runtime's multi-line exception text on one line."""
    return " ".join(str(exc).split())


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


def split_holdout(x: np.ndarray, y: np.ndarray, fraction: float, seed: int, batch: int):
    """``(x_train, y_train, x_held, y_held)``: a seeded random ``fraction`` held out (at least one sample)."""
    n = x.shape[0]
    if fraction <= 0.0:
        return x, y, x, y
    n_held = max(1, int(round(n * fraction)))
    if n - n_held < batch:
        raise UsageError(f"--holdout {fraction:g}: {n} samples leave {n - n_held} for training, fewer than one batch of {batch}; "
                         f"lower --holdout or pass --eval-data")
    order = np.random.default_rng(10_007 + seed).permutation(n)
    held, train = np.sort(order[:n_held]), np.sort(order[n_held:])
    return x[train], y[train], x[held], y[held]


def finetune(
    artifact_dir,
    data,
    epochs: int,
    lr: Optional[float] = None,
    out_dir=None,
    seed: int = 0,
    resume: bool = False,
    threads: Optional[int] = None,
    log: Callable[[str], None] = print,
    force: bool = False,
    holdout: Optional[float] = None,
    eval_data=None,
    lean_memory: bool = True,
) -> Dict:
    """Fine-tune from an artifact directory; returns the metrics written to ``out_dir/metrics.json``.

    Args:
        artifact_dir: directory written by ``edgesnn export --format onnx-step`` or ``onnx-training``.
        data: path to an ``.npz`` with ``x``/``y`` (see :func:`load_dataset`).
        epochs: passes over the data (>= 1; each shuffled with ``seed + epoch``).
        lr: learning rate (finite, > 0); ``None`` uses the manifest's.
        out_dir: output directory; default ``artifact_dir/finetuned``. If it is not empty,
            ``resume`` or ``force`` is required.
        resume: start from ``out_dir``'s checkpoint (``state.npz`` / ``checkpoint``) if it exists.
        threads: ONNX Runtime intra-op threads (>= 1; ``None``: ORT's default, one per core).
        force: replace a non-empty ``out_dir`` as a whole (excludes ``resume``).
        holdout: fraction of ``data`` held out for the accuracy report (``None``: 0.2 for
            onnx-step, 0 for onnx-training; 0 reports accuracy on the training data).
        eval_data: a separate ``.npz`` to report accuracy on (then ``holdout`` must be unset or 0).
        lean_memory: onnx-step: ONNX Runtime without its CPU arena and memory pattern (peak RSS about
            15-25 MB lower on the wide MLP, steps 10-20% slower).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise UsageError(f"--epochs: expected an integer >= 1, got {epochs!r}")
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and 0 < lr <= FLOAT32_MAX):
        raise UsageError(f"--lr: expected a finite number > 0 (float32 range), got {lr!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"--seed: expected an integer >= 0, got {seed!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UsageError(f"--threads: expected an integer >= 1, got {threads!r}")
    if holdout is not None and not (isinstance(holdout, (int, float)) and 0.0 <= holdout < 1.0):
        raise UsageError(f"--holdout: expected a fraction in [0, 1), got {holdout!r}")
    if resume and force:
        raise UsageError("--resume and --force exclude each other (continue the run, or start again from the export)")
    if eval_data is not None and holdout:
        raise UsageError("--holdout and --eval-data exclude each other (the held-out data is --eval-data)")
    artifact_dir = Path(artifact_dir)
    out_dir = Path(out_dir) if out_dir is not None else artifact_dir / "finetuned"
    check_not_inside(out_dir, "--out", artifacts=artifact_dir, data=data, eval_data=eval_data)
    check_output(out_dir, "--out", force or resume, allow="--resume (continue from it) or --force (replace it)",
                 directory=True)
    manifest = validate_artifact_dir(artifact_dir)
    step_format = isinstance(manifest, StepManifest)
    x, y = load_dataset(data, manifest)
    if eval_data is not None:
        xe, ye = load_dataset(eval_data, manifest, min_samples=1)
        accuracy_on = "eval-data"
    else:
        frac = (0.2 if step_format else 0.0) if holdout is None else float(holdout)
        x, y, xe, ye = split_holdout(x, y, frac, seed, manifest.batch_size)
        accuracy_on = "held-out" if frac > 0 else "training data"
    if step_format:
        from .step_runner import finetune_step  # the onnx-step path (it imports this module's helpers)

        run = lambda write_dir: finetune_step(artifact_dir, manifest, x, y, xe, ye, epochs, lr, out_dir, write_dir,  # noqa: E731
                                               seed, resume, threads, log, lean_memory, accuracy_on)
    else:
        run = lambda write_dir: _finetune(artifact_dir, manifest, x, y, xe, ye, epochs, lr, out_dir, write_dir,  # noqa: E731
                                          seed, resume, threads, log, accuracy_on)
    if resume and out_dir.is_dir():
        return replace_dir(out_dir, lambda write_dir: _keeping_others(out_dir, write_dir, run))
    return replace_dir(out_dir, run)


def _keeping_others(out_dir: Path, write_dir: Path, run: Callable[[Path], Dict]) -> Dict:
    """A resumed run: ``run`` reads ``out_dir``'s checkpoint and writes its whole output set into
    ``write_dir``; whatever else ``out_dir`` holds is copied beside it, so the swap (atomic as a
    set: never new parameters beside an old state) loses nothing."""
    import shutil

    result = run(write_dir)
    for entry in out_dir.iterdir():
        target = write_dir / entry.name
        if not target.exists():
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, target)
    return result


def _finetune(artifact_dir: Path, manifest: Manifest, x: np.ndarray, y: np.ndarray, xe: np.ndarray, ye: np.ndarray,
              epochs: int, lr: Optional[float], out_dir: Path, write_dir: Path, seed: int, resume: bool,
              threads: Optional[int], log: Callable[[str], None], accuracy_on: str = "training data") -> Dict:
    """The legacy (onnx-training) loop of :func:`finetune`: starts from ``out_dir`` (resume) and writes into ``write_dir``."""
    ort, CheckpointState, Module, Optimizer = import_ort_training_api()
    ort.set_default_logger_severity(3)

    start_ckpt = out_dir / CHECKPOINT if resume and (out_dir / CHECKPOINT).is_file() else artifact_dir / CHECKPOINT
    resuming = start_ckpt.parent == out_dir
    try:
        state = CheckpointState.load_checkpoint(str(start_ckpt))
    except Exception as exc:
        hint = "; pass --force instead of --resume to start again" if resuming else ""
        raise ArtifactError(f"{start_ckpt}: corrupt artifact file (ONNX Runtime could not load it: {_one_line(exc)}){hint}") from None
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
                                f"another export?); pass --force instead of --resume to start again") from None
        raise ArtifactError(f"{artifact_dir}: ONNX Runtime could not load the training graphs ({_one_line(exc)})") from None
    optimizer.set_learning_rate(float(manifest.learning_rate if lr is None else lr))

    B = manifest.batch_size
    acc_before = _accuracy(ort, artifact_dir / MODEL, xe, ye, B, manifest) if not resume else None
    module.train()
    epoch_losses: List[float] = []
    step_times: List[float] = []
    step_cpu: List[float] = []
    done = int(state.properties["runner_epochs"]) if resuming and "runner_epochs" in state.properties else 0
    for epoch in range(done, done + epochs):  # a resumed run continues the data order
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
        log(f"epoch {epoch + 1 - done}/{epochs}: loss {epoch_losses[-1]:.4f} ({len(losses)} steps)")

    state.properties["runner_epochs"] = done + epochs
    _atomic_ort_checkpoint(CheckpointState, state, write_dir / CHECKPOINT)
    names = list(manifest.trainable) + list(manifest.frozen)
    atomic_write_bytes(write_dir / "params.npz", _params_npz(state, names))
    _atomic_inference_model(module, write_dir / "inference.onnx", manifest.output_name)
    acc_after = _accuracy(ort, write_dir / "inference.onnx", xe, ye, B, manifest)

    metrics = {
        "epochs": epochs,
        "steps": len(step_times),
        "batch_size": B,
        "learning_rate": float(manifest.learning_rate if lr is None else lr),
        "epoch_loss": epoch_losses,
        "format": "onnx-training",
        "accuracy_on": accuracy_on,
        "accuracy_before": acc_before,
        "accuracy_after": acc_after,
        **step_time_metrics(step_times, step_cpu),
        "threads": int(threads or 0),
        "peak_rss_mb": peak_rss_mb(),
        "torch_imported": "torch" in sys.modules,
    }
    atomic_write_text(write_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    if metrics["torch_imported"]:
        raise RuntimeError("device runner: torch was imported during fine-tuning; the runner must stay torch-free")
    return metrics


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgesnn-device", description="Fine-tune an exported edgesnn model with ONNX Runtime (no torch).")
    p.add_argument("artifacts", help="artifact directory from `edgesnn export --format onnx-step` (or the legacy onnx-training)")
    p.add_argument("--data", required=True, help=".npz with x [N, *in_shape] float32 and y [N] int labels")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the manifest's)")
    p.add_argument("--out", default=None, help="output directory (default: ARTIFACTS/finetuned)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint if present")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out as a whole (start from the exported weights)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads, >= 1 (default: one per core)")
    p.add_argument("--holdout", type=float, default=None,
                   help="fraction of --data held out for the accuracy report (default 0.2 for onnx-step, 0 for onnx-training)")
    p.add_argument("--eval-data", default=None, help=".npz to report accuracy on instead of a held-out split")
    p.add_argument("--no-lean-memory", dest="lean_memory", action="store_false",
                   help="onnx-step: keep ONNX Runtime's CPU arena and memory pattern (faster first steps, higher peak RSS)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        m = finetune(args.artifacts, args.data, args.epochs, args.lr, args.out, args.seed, args.resume, args.threads,
                     force=args.force, holdout=args.holdout, eval_data=args.eval_data, lean_memory=args.lean_memory)
    except USER_ERRORS as exc:
        print(f"edgesnn-device: error: {exc}", file=sys.stderr)
        return 2
    before = "n/a" if m["accuracy_before"] is None else f"{m['accuracy_before']:.4f}"
    step = "n/a" if m["step_ms_mean"] is None else f"{m['step_ms_mean']:.2f} ms"
    print(f"accuracy ({m.get('accuracy_on', 'training data')}) {before} -> {m['accuracy_after']:.4f}; step {step}; "
          f"peak RSS {m['peak_rss_mb']:.1f} MB; torch imported: {m['torch_imported']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
