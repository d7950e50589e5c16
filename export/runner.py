"""Device-side fine-tuning of an exported model. Never imports torch.

Usage (``edgesnn-device`` is the same entry point)::

    python -m edgesnn.export.runner ARTIFACTS --data data.npz --epochs 3 [--lr 0.05] [--lr-schedule cosine]
        [--out DIR] [--holdout 0.2]

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
  ``--accumulate N`` steps on ``N`` batches of the export's size at once with the memory of one:
  ``grad.onnx`` per batch, the gradients summed, ``apply.onnx`` once
  (:mod:`~edgesnn.export.accumulate_session`).
* ``onnx-training`` (legacy, x86-64 only): ONNX Runtime training artifacts, run through
  onnxruntime-training's training API (see below).

``--holdout F`` keeps a fixed, seeded fraction of the data out of training and reports accuracy
before/after on it (default 0.2 for onnx-step; 0 for the legacy format, which then reports
accuracy on the training data as before). ``--eval-data`` names a separate held-out ``.npz``.

Both formats: every epoch is a fresh permutation (``default_rng([seed, epoch])``) in batches of
the manifest's fixed size; a last partial batch is filled with samples from the start of the same
permutation (``metrics.json``: ``samples_per_epoch``, ``steps_per_epoch``, ``padded_per_epoch``),
so every sample is trained on every epoch. The output set is swapped into ``--out`` after every
epoch; ``--resume`` continues after the last finished one (the same data orders and weights as one
uninterrupted run) and is refused, in one line naming the fields, when the run's recorded settings
differ (seed, holdout, learning rate, optimizer, batch size, the ``--data`` / ``--eval-data``
arrays). Ctrl-C (exit 130) or SIGTERM (143) stop with one line saying which epoch ``--out`` holds.

``--lr-schedule constant`` (default) trains every step at ``--lr``; ``cosine`` decays it per step,
``lr * 0.5 * (1 + cos(pi * k / K))`` for step ``k`` of ``K`` = ``--epochs`` x steps per epoch of the
run that started it (torch's ``CosineAnnealingLR(T_max=K)`` stepped per batch), on both formats. A
resumed cosine run continues that recorded curve (``--epochs`` adds epochs up to its end, so an
interrupted run resumed with the epochs it had left equals one uninterrupted run); a resume with
another ``--lr-schedule`` or past the end is refused (:mod:`edgesnn.export.run_schedule`).
``metrics.json``: ``lr_schedule``, ``lr_schedule_steps``, ``epoch_lr`` (each epoch's last rate).

``metrics.json``'s ``epoch_loss`` / ``epoch_lr`` cover the epochs of this invocation; ``history``
has one row per epoch of the whole run, resumes included (epoch, loss, lr, held-out accuracy where
measured, steps). ``--keep-best`` (onnx-step, with held-out data) also keeps ``best_params.npz``,
the parameters of the best held-out epoch so far (:mod:`edgesnn.export.run_history`).

The rest of this docstring describes the legacy ``onnx-training`` path.

``data.npz`` holds ``x`` (float32 ``[N, *in_shape]``) and ``y`` (integer labels ``[N]``). The
runner validates the artifacts (every file present, SHA-256 as in the manifest), trains for
``--epochs`` epochs (as above), writing to ``--out`` (default ``ARTIFACTS/finetuned``) after each.
A non-empty ``--out`` is refused unless ``--resume`` (continue from its checkpoint) or ``--force``
(start again from the exported weights); the two exclude each other. Either way each new output
set is built beside it and swapped in as a whole (a resumed run keeps any other files the folder
held). It holds:

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
import os
import sys
import types
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from edgesnn.atomic import PathLike, check_not_inside, check_output, recover_dir, user_path
from edgesnn.cli import OneLineParser
from edgesnn.output_guard import GuardedDir
from edgesnn.errors import USER_ERRORS, DependencyError, UsageError, refuse_empty, say_line
from edgesnn.lr_schedules import RATE_RANGE, is_float32_rate

from .artifacts import StepManifest, validate_artifact_dir
from .run_data import data_fingerprint, load_dataset, split_holdout
from .run_history import BEST_PARAMS, check_keep_best
from .run_schedule import SCHEDULES, check_schedule_name
from .run_state import OutputDir, RunInterrupted, Terminated, run_settings, sigterm_interrupts
from .run_support import peak_rss_mb

__all__ = ["import_ort_training_api", "import_plain_ort", "load_dataset", "split_holdout", "finetune", "peak_rss_mb",
           "main", "StepCheckError", "training_modules_imported", "check_resumable", "max_threads"]


class StepCheckError(ValueError):
    """A training step failed its own check (loss not finite, reversible reconstruction off)."""


def import_plain_ort() -> types.ModuleType:
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


#: what a run of legacy artifacts without onnxruntime-training can do (its wheels: x86-64, Python <= 3.12)
_LEGACY_REMEDY = ("export them again on the host with `edgesnn export --format onnx-step` (plain onnxruntime, any "
                  "board), or install onnxruntime-training-cpu==1.19.2 (x86-64 and Python <= 3.12 only; not beside "
                  "plain onnxruntime, which shares its package folder)")


def import_ort_training_api() -> Tuple[types.ModuleType, type, type, type]:
    """``(onnxruntime, CheckpointState, Module, Optimizer)`` without importing torch.

    Raises:
        DependencyError: (a ``RuntimeError``) if onnxruntime-training is not installed.
    """
    if sys.modules.get("onnxruntime.training") is None:  # absent, or blocked by import_plain_ort
        sys.modules.pop("onnxruntime.training", None)
        spec = importlib.util.find_spec("onnxruntime")
        if spec is None or spec.origin is None:
            raise DependencyError(f"legacy onnx-training artifacts need onnxruntime-training, which is not installed; "
                                  f"{_LEGACY_REMEDY}")
        training_dir = os.path.join(os.path.dirname(spec.origin), "training")
        if not os.path.isdir(os.path.join(training_dir, "api")):
            raise DependencyError(f"legacy onnx-training artifacts need onnxruntime-training; this onnxruntime has no "
                                  f"training API; {_LEGACY_REMEDY}")
        stub = types.ModuleType("onnxruntime.training")
        stub.__path__ = [training_dir]  # a package whose __init__ (ORTModule, torch) never runs
        sys.modules["onnxruntime.training"] = stub
        sys.modules.setdefault("onnxruntime.training.ortmodule", None)  # makes `import ...ortmodule` raise ImportError
    import onnxruntime
    from onnxruntime.training.api import CheckpointState, Module, Optimizer

    return onnxruntime, CheckpointState, Module, Optimizer


def _one_line(exc: BaseException) -> str:
    """ONNX Runtime's multi-line exception text on one line."""
    return " ".join(str(exc).split())


def finetune(
    artifact_dir: PathLike,
    data: PathLike,
    epochs: int,
    lr: Optional[float] = None,
    out_dir: Optional[PathLike] = None,
    seed: int = 0,
    resume: bool = False,
    threads: Optional[int] = None,
    log: Callable[[str], None] = print,
    force: bool = False,
    holdout: Optional[float] = None,
    eval_data: Optional[PathLike] = None,
    lean_memory: bool = True,
    any_input_range: bool = False,
    lr_schedule: str = "constant",
    keep_best: bool = False,
    accumulate: int = 1,
) -> Dict:
    """Fine-tune from an artifact directory; returns the metrics written to ``out_dir/metrics.json``.

    Args:
        artifact_dir: directory written by ``edgesnn export --format onnx-step`` or ``onnx-training``.
        data: path to an ``.npz`` with ``x``/``y`` (see :func:`load_dataset`).
        epochs: passes over the data in this run (>= 1; epoch ``e`` of the run, counted across
            resumes, is shuffled by ``default_rng([seed, e])``; a last partial batch is filled
            from the start of the same order, see :func:`~edgesnn.export.run_state.epoch_batches`).
        lr: learning rate (finite, > 0); ``None`` uses the manifest's.
        out_dir: output directory; default ``artifact_dir/finetuned``. If it is not empty,
            ``resume`` or ``force`` is required. Written (swapped in whole) after every epoch, so
            it must not be a mount point itself (a folder inside one is fine).
        seed: data order and held-out split.
        resume: continue from ``out_dir``'s state (``state.npz`` / ``checkpoint``) if it exists
            (an absent or empty ``out_dir`` starts a new run; a non-empty one without that file is
            refused, see :func:`check_resumable`);
            refused when the recorded settings (seed, holdout, lr, optimizer, batch size, the data
            and eval-data arrays) differ.
        threads: ONNX Runtime intra-op threads (1 to :func:`max_threads`; ``None``: ORT's default, one per core).
        force: replace a non-empty ``out_dir`` as a whole (excludes ``resume``).
        holdout: fraction of ``data`` held out for the accuracy report (``None``: 0.2 for
            onnx-step, 0 for onnx-training; 0 reports accuracy on the training data).
        eval_data: a separate ``.npz`` to report accuracy on (then ``holdout`` must be unset or 0).
        lean_memory: onnx-step: ONNX Runtime without its CPU arena and memory pattern (peak RSS about
            9-13 MB lower on the wide RevLIF MLP at T = 8-64, measured at d2455d7; steps somewhat slower).
        any_input_range: take ``x`` values outside the manifest's ``input_range`` (by default
            refused: e.g. raw 8-bit pixels for a model trained on pixels / 255).
        lr_schedule: ``"constant"`` (every step at ``lr``) or ``"cosine"`` (per-step cosine decay to 0
            over the run's ``epochs`` x steps per epoch; a resume continues the recorded horizon and
            must not pass it, and must name the same schedule: see :mod:`~edgesnn.export.run_schedule`).
        keep_best: onnx-step only, needs held-out data: measure held-out accuracy every epoch and keep
            ``best_params.npz`` of the best epoch so far (``best_epoch`` / ``best_accuracy`` in the
            metrics); a recorded setting, so a resume must pass it exactly when the run it continues
            did (refused otherwise). See :mod:`~edgesnn.export.run_history` (also: ``history``, the
            whole run's per-epoch rows in ``metrics.json``, cumulative across resumes).
        accumulate: onnx-step only: each optimizer step takes up to ``accumulate`` consecutive
            batches of the export's size and adds their gradients before one update
            (:mod:`~edgesnn.export.accumulate_session`), so the step's batch is ``accumulate x B``
            with the memory of ``B``; an epoch's last step takes the batches left. A recorded
            setting when above 1 (a resume must repeat it).

    Raises:
        RunInterrupted: (a ``KeyboardInterrupt``) on Ctrl-C (or SIGTERM under :func:`main`);
            ``out_dir`` then holds the last finished epoch and the message says which.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise UsageError(f"--epochs: expected an integer >= 1, got {epochs!r}")
    if lr is not None and not is_float32_rate(lr):
        raise UsageError(f"--lr: expected {RATE_RANGE}, got {lr!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"--seed: expected an integer >= 0, got {seed!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UsageError(f"--threads: expected an integer >= 1, got {threads!r}")
    if threads is not None and threads > max_threads():
        raise UsageError(f"--threads: expected at most {max_threads()} (4 per CPU core of this machine), got {threads}; "
                         "ONNX Runtime starts one thread each")
    if holdout is not None and not (isinstance(holdout, (int, float)) and 0.0 <= holdout < 1.0):
        raise UsageError(f"--holdout: expected a fraction in [0, 1), got {holdout!r}")
    check_schedule_name(lr_schedule)
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise UsageError(f"--accumulate: expected an integer >= 1 (batches of the export's size per step), got "
                         f"{accumulate!r}")
    if resume and force:
        raise UsageError("--resume and --force exclude each other (continue the run, or start again from the export)")
    if eval_data is not None and holdout:
        raise UsageError("--holdout and --eval-data exclude each other (the held-out data is --eval-data)")
    for flag, value, expected in (("ARTIFACTS", artifact_dir, "an artifact directory"), ("--data", data, "an .npz file"),
                                  ("--out", out_dir, "an output directory (drop --out for ARTIFACTS/finetuned)"),
                                  ("--eval-data", eval_data, "an .npz file")):
        refuse_empty(value, flag, expected)  # Path("") is "." (the working folder: --force replaced it)
    artifact_dir = Path(artifact_dir)
    if artifact_dir.exists() and not artifact_dir.is_dir():  # (before --out: its default lies inside ARTIFACTS)
        raise NotADirectoryError(f"ARTIFACTS: {artifact_dir} is a file, not a directory; expected the artifact "
                                 "directory from `edgesnn export --format onnx-step`")
    out_dir = Path(out_dir) if out_dir is not None else artifact_dir / "finetuned"
    check_not_inside(out_dir, "--out", artifacts=artifact_dir, data=data, eval_data=eval_data)
    restored = recover_dir(out_dir)  # a run killed inside its output swap: its last output comes back
    if restored is not None:
        log(f"restored {out_dir} from {restored.name}, left by a run stopped while replacing it")
    check_output(out_dir, "--out", force or resume, allow="--force (or --resume to continue from it)",
                 directory=True)
    guard = GuardedDir(out_dir, "--out")  # what --out holds now: each save replaces only that, then its own output
    if os.path.ismount(os.path.realpath(out_dir)):
        raise UsageError(f"--out: {out_dir} is a mount point; the runner swaps a new --out folder in after every epoch, "
                         f"which a mount point cannot be: pass a folder inside it (e.g. {Path(out_dir) / 'finetuned'})")
    manifest = validate_artifact_dir(artifact_dir)
    step_format = isinstance(manifest, StepManifest)
    if not lean_memory and not step_format:  # the legacy session keeps ONNX Runtime's defaults (arena on)
        raise UsageError("--no-lean-memory: needs onnx-step artifacts (these are the legacy onnx-training format, "
                         "which runs with ONNX Runtime's CPU arena anyway); drop --no-lean-memory")
    if accumulate > 1:
        from .accumulate_session import check_accumulate_artifacts  # (it imports this module's helpers)

        check_accumulate_artifacts(manifest, artifact_dir)
    if resume:
        check_resumable(out_dir, step_format)
    x, y = load_dataset(data, manifest, flag="--data", check_range=not any_input_range)
    data_id, eval_id = data_fingerprint(data, x, y), None
    if eval_data is not None:
        xe, ye = load_dataset(eval_data, manifest, min_samples=1, flag="--eval-data", check_range=not any_input_range)
        eval_id, frac = data_fingerprint(eval_data, xe, ye), 0.0
        accuracy_on = "eval-data"
    else:
        frac = (0.2 if step_format else 0.0) if holdout is None else float(holdout)
        x, y, xe, ye = split_holdout(x, y, frac, seed, manifest.batch_size)
        accuracy_on = "held-out" if frac > 0 else "training data"
    check_keep_best(keep_best, step_format, accuracy_on)
    optimizer = {"name": manifest.optimizer, **(dict(manifest.hyperparameters) if step_format else {})}
    settings = run_settings(seed, frac, float(manifest.learning_rate if lr is None else lr), manifest.batch_size,
                            optimizer, data_id, eval_id)
    if accumulate > 1:  # recorded only when on: other runs' settings stay what older runners wrote
        settings["accumulate"] = accumulate
    out = OutputDir(out_dir, keep_others=resume and out_dir.is_dir(), guard=guard)
    if step_format:
        from .step_runner import finetune_step  # the onnx-step path (it imports this module's helpers)

        return finetune_step(artifact_dir, manifest, x, y, xe, ye, epochs, lr, out, seed, resume, threads, log,
                             lean_memory, accuracy_on, settings, lr_schedule, keep_best, accumulate)
    from .legacy_runner import finetune_legacy

    return finetune_legacy(artifact_dir, manifest, x, y, xe, ye, epochs, lr, out, seed, resume, threads, log,
                           accuracy_on, settings, lr_schedule)


def max_threads() -> int:
    """The largest ``--threads`` accepted: 4 per CPU core (more only makes ONNX Runtime start
    thousands of idle threads, or fail on a number beyond a C ``int``)."""
    return 4 * max(1, os.cpu_count() or 1)


#: The file a run of each format resumes from (onnx-step, onnx-training).
STATE_FILES = {True: "state.npz", False: "checkpoint"}


def check_resumable(out_dir: Path, step_format: bool) -> None:
    """``--resume`` into a non-empty ``out_dir`` that holds no state of this artifact format is
    refused: it would silently start again from the exported weights and replace that folder's
    ``params.npz`` / ``metrics.json`` (e.g. a legacy run's output resumed with onnx-step artifacts,
    or a mistyped ``--out``). An absent or empty ``out_dir`` starts a new run, as documented."""
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    own, other = STATE_FILES[step_format], STATE_FILES[not step_format]
    if (out_dir / own).is_file():
        return
    fmt, other_fmt = ("onnx-step", "onnx-training") if step_format else ("onnx-training", "onnx-step")
    held = (f"it holds {other}, the state of an {other_fmt} run" if (out_dir / other).exists()
            else "it holds no run of this runner")
    raise UsageError(f"--resume: {out_dir} has no {own} to continue from ({held}; these artifacts are {fmt}); "
                     "pass another --out, or --force to replace that folder and start from the exported weights")


def build_parser() -> argparse.ArgumentParser:
    """The ``edgesnn-device`` command line (one-line errors with exit status 2)."""
    p = OneLineParser(prog="edgesnn-device", description="Fine-tune an exported edgesnn model with ONNX Runtime (no torch).")
    p.add_argument("artifacts", type=user_path, metavar="ARTIFACTS", help="artifact directory from `edgesnn export --format onnx-step` (or the legacy onnx-training)")
    p.add_argument("--data", type=user_path, required=True, help=".npz with x [N, *in_shape] float32 and y [N] int labels")
    p.add_argument("--epochs", type=int, default=1, help="epochs in this run, >= 1 (default 1; a resumed run adds them)")
    p.add_argument("--lr", type=float, default=None, help="learning rate, > 0 (default: the manifest's, the export's --lr)")
    p.add_argument("--lr-schedule", choices=SCHEDULES, default="constant",
                   help="learning rate per step: constant (default), or cosine decay to 0 over this run's steps "
                        "(a resumed cosine run continues its recorded horizon)")
    p.add_argument("--out", type=user_path, default=None, help="output directory (default: ARTIFACTS/finetuned), written after every epoch")
    p.add_argument("--seed", type=int, default=0, help="data order and held-out split, >= 0 (default 0)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT's state (after its last finished epoch) with the same settings; not with --force")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out as a whole (start from the exported weights); not with --resume")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads, 1 to 4 per CPU core (default: ONNX Runtime's, one per core)")
    p.add_argument("--holdout", type=float, default=None,
                   help="fraction of --data held out for the accuracy report, in [0, 1) (default 0.2 for onnx-step, 0 for "
                        "onnx-training); not with --eval-data")
    p.add_argument("--eval-data", type=user_path, default=None, help=".npz to report accuracy on instead of a held-out split")
    p.add_argument("--keep-best", action="store_true",
                   help="onnx-step, with held-out data: also keep OUT/best_params.npz, the parameters of the epoch "
                        "with the best held-out accuracy so far (a resume must pass it too)")
    p.add_argument("--any-input-range", action="store_true",
                   help="train on x values outside the range the model was trained on (the manifest's input_range, "
                        "[0, 1] for the built-in image datasets; by default refused)")
    p.add_argument("--accumulate", type=int, default=1, metavar="N",
                   help="onnx-step: add the gradients of N batches of the export's size before each update (a step "
                        "on N x B samples with the memory of B; default 1)")
    p.add_argument("--no-lean-memory", dest="lean_memory", action="store_false",
                   help="onnx-step: keep ONNX Runtime's CPU arena and memory pattern (faster first steps, higher peak RSS)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """``edgesnn-device``: 0 on success, 2 on a user error (one line), 130 on Ctrl-C and 143 on
    SIGTERM (one line saying which epoch ``--out`` holds; no temp folder is left behind)."""
    args = build_parser().parse_args(argv)
    try:
        with sigterm_interrupts():
            m = finetune(args.artifacts, args.data, args.epochs, args.lr, args.out, args.seed, args.resume, args.threads,
                         force=args.force, holdout=args.holdout, eval_data=args.eval_data, lean_memory=args.lean_memory,
                         any_input_range=args.any_input_range, lr_schedule=args.lr_schedule,
                         keep_best=args.keep_best, accumulate=args.accumulate)
    except USER_ERRORS as exc:
        say_line(f"edgesnn-device: error: {exc}")
        return 2
    except RunInterrupted as exc:
        say_line(f"edgesnn-device: {exc.message}")
        return exc.exit_code
    except KeyboardInterrupt as exc:  # before training started: nothing was written
        term = isinstance(exc, Terminated)
        print(f"edgesnn-device: {'terminated (SIGTERM)' if term else 'interrupted'} before training; nothing was written",
              file=sys.stderr)
        return 143 if term else 130
    step = "n/a" if m["step_ms_mean"] is None else f"{m['step_ms_mean']:.2f} ms"
    print(f"accuracy ({m.get('accuracy_on', 'training data')}) {m['accuracy_before']:.4f} -> {m['accuracy_after']:.4f}; "
          f"step {step}; {m['steps']} steps ({m['padded_per_epoch']} samples repeated per epoch to fill the last batch); "
          f"peak RSS {m['peak_rss_mb']:.1f} MiB; torch imported: {m['torch_imported']}")
    if m.get("keep_best") and m.get("best_epoch") is not None:
        print(f"best epoch {m['best_epoch']} of {m['total_epochs']}: accuracy {m['best_accuracy']:.4f} (its parameters: "
              f"{BEST_PARAMS} beside params.npz)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
