"""The ``onnx-step`` path of the device runner (:mod:`edgesnn.export.runner`). Never imports torch.

:class:`StepSession` runs ``step.onnx`` with two preallocated sets of parameter and optimizer
buffers bound through ``IOBinding`` (step k reads set A and writes set B, step k+1 the other way),
so per step only the batch, the labels and three scalars cross Python; :func:`finetune_step` runs it
through the shared epoch loop (:func:`~.run_loop.run_epochs`), writing ``state.npz``, ``params.npz``
and ``metrics.json`` after every epoch.
"""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from .artifacts import (MANIFEST, STEP_APPLY_MODEL, STEP_EVAL_MODEL, STEP_GRAD_MODEL, STEP_INIT, STEP_MODEL,
                        ArtifactError, StepManifest, atomic_write_bytes, atomic_write_text)
from .run_history import BEST_PARAMS, load_history
from .run_loop import EpochEnd, run_epochs
from .run_schedule import resolve_schedule
from .run_state import OutputDir, check_settings
from .run_support import padded_batches, peak_rss_mb, proc_status_mib
from .runner import StepCheckError, _one_line, import_plain_ort, training_modules_imported
from .start_state import (RESUME_FIX, StartArrayError, check_graph_names, check_resumed_steps, check_start_arrays,
                          first_loss_error, load_start, start_counter)

__all__ = ["StepSession", "StartArrayError", "finetune_step", "npz_bytes", "rss_mb", "check_graph_names",
           "check_start_arrays"]


def npz_bytes(arrays: Dict[str, np.ndarray]) -> bytes:
    """The bytes of an uncompressed ``.npz`` holding ``arrays`` (name -> array)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def rss_mb() -> float:
    """Current resident set size in MiB (``VmRSS``; 0.0 where there is no procfs)."""
    rss = proc_status_mib("VmRSS")
    return rss if rss is not None else 0.0


class StepSession:
    """``step.onnx`` with double-buffered, IOBinding-bound parameters and optimizer state.

    Before any buffer is made, the manifest's names are checked against the graphs' inputs and
    outputs (:func:`check_graph_names`, an :class:`ArtifactError` naming manifest.json) and ``start``
    against the graphs' input types and static shapes (:func:`check_start_arrays`,
    :class:`StartArrayError` naming the arrays)."""

    def __init__(self, ort: ModuleType, artifact_dir: Path, manifest: StepManifest, start: Dict[str, np.ndarray],
                 threads: Optional[int], lean_memory: bool) -> None:
        """``ort``: the ``onnxruntime`` module (:func:`~.runner.import_plain_ort`); ``start``: name -> the
        start array (a parameter's or optimizer state's shape); ``threads``: intra-op threads (``None``: ORT's
        default); ``lean_memory``: no CPU arena and memory pattern."""
        self.ort, self.m = ort, manifest
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or 0)
        opts.log_severity_level = 3
        # nodes in priority order: the default order let a RevLIF step graph's unrolled time steps
        # (K per loop iteration) hold many more temporaries at once (VGG-11, T = 4, batch 32: peak
        # RSS 1595 -> 1074 MB; the numbers computed are the same, node by node)
        order = getattr(getattr(ort, "ExecutionOrder", None), "PRIORITY_BASED", None)
        if order is not None:
            opts.execution_order = order
        if lean_memory:
            opts.enable_cpu_mem_arena = False
            opts.enable_mem_pattern = False
        self.opts = opts
        self.artifact_dir = artifact_dir
        self._sessions: Dict[str, object] = {}
        self.eval_sess = self._load(STEP_EVAL_MODEL)
        # before any buffer is made: the manifest's names and the start arrays against the graphs
        # (metadata only), so a mismatch is one line here, not an ONNX Runtime error at the first step
        graphs = {g: self._load(g) for g in (STEP_EVAL_MODEL, *self._training_graphs())}
        check_graph_names(graphs, manifest, Path(artifact_dir) / MANIFEST)
        check_start_arrays(graphs, manifest, start)
        OV = ort.OrtValue
        B = manifest.batch_size
        self.names = [inp for inp, _ in manifest.carried]
        # own copies: an OrtValue made from a numpy array uses that array's memory, and the step writes into it
        self.sets = [{n: OV.ortvalue_from_numpy(np.array(start[n], np.float32, order="C")) for n in self.names},
                     {n: OV.ortvalue_from_numpy(np.empty_like(np.asarray(start[n], np.float32))) for n in self.names}]
        self.frozen = {n: OV.ortvalue_from_numpy(np.array(start[n], np.float32, order="C")) for n in manifest.frozen}
        self.x = OV.ortvalue_from_numpy(np.zeros((B, *manifest.in_shape), np.float32))
        self.y = OV.ortvalue_from_numpy(np.zeros((B,), np.int64))
        self.lr = OV.ortvalue_from_numpy(np.zeros((), np.float32))
        self.loss = OV.ortvalue_from_numpy(np.zeros((), np.float32))
        self.correct = OV.ortvalue_from_numpy(np.zeros((), np.int64))
        self.err = OV.ortvalue_from_numpy(np.zeros((), np.float32))
        self.current = 0
        self.eval_x = OV.ortvalue_from_numpy(np.zeros((B, *manifest.in_shape), np.float32))
        self._bind_training(start)

    def _load(self, name: str):
        """An ``InferenceSession`` of the artifact directory's graph ``name`` (loaded once per session object)."""
        if name in self._sessions:
            return self._sessions[name]
        try:
            sess = self.ort.InferenceSession(str(self.artifact_dir / name), self.opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ArtifactError(f"{self.artifact_dir}: ONNX Runtime could not load {name} ({_one_line(exc)})") from None
        self._sessions[name] = sess
        return sess

    def _training_graphs(self) -> Tuple[str, ...]:
        """The graphs :meth:`_bind_training` loads: ``step.onnx``, or for a subclass that binds its own
        training graphs (:class:`~.accumulate_session.AccumulatingSession`) ``grad.onnx`` and ``apply.onnx``."""
        if type(self)._bind_training is StepSession._bind_training:
            return (STEP_MODEL,)
        return (STEP_GRAD_MODEL, STEP_APPLY_MODEL)

    def _bind_training(self, start: Dict[str, np.ndarray]) -> None:
        """Load ``step.onnx`` and bind it both ways round (set A -> set B, set B -> set A)."""
        self.sess = self._load(STEP_MODEL)
        self.bindings = []
        for k in (0, 1):
            b = self.sess.io_binding()
            self._bind_update(b, k)
            self._bind_batch(b)
            self.bindings.append(b)

    def _bind_update(self, b, k: int) -> None:
        """A graph that updates: carried set ``k`` (parameters, optimizer state) in, set ``1 - k`` out, lr in."""
        for inp, out in self.m.carried:
            b.bind_ortvalue_input(inp, self.sets[k][inp])
            b.bind_ortvalue_output(out, self.sets[1 - k][inp])
        b.bind_ortvalue_input(self.m.lr_name, self.lr)

    def _bind_batch(self, b) -> None:
        """A graph that runs a batch: frozen buffers, the batch and its labels in; loss, correct and
        recon_error out."""
        for n, v in self.frozen.items():
            b.bind_ortvalue_input(n, v)
        b.bind_ortvalue_input(self.m.input_name, self.x)
        b.bind_ortvalue_input(self.m.label_name, self.y)
        b.bind_ortvalue_output("loss", self.loss)
        b.bind_ortvalue_output("correct", self.correct)
        b.bind_ortvalue_output("recon_error", self.err)

    def set_lr(self, lr: float) -> None:
        """Set the learning rate the next steps use (a float32 graph input, no unit)."""
        self.lr.update_inplace(np.asarray(lr, np.float32))

    def step(self, xb: np.ndarray, yb: np.ndarray) -> Tuple[float, int, float]:
        """One training step on ``xb [B, *in_shape]`` and labels ``yb [B]`` in ``0..num_classes-1``:
        ``(loss, correct, recon_error)``. The inputs are converted to float32 / int64 C order (the
        bound buffers take raw bytes) and checked, since the graph would take any label silently."""
        xb, yb = checked_batch(self.m, xb, yb, 1)
        self.x.update_inplace(xb)
        self.y.update_inplace(yb)
        self.sess.run_with_iobinding(self.bindings[self.current])
        self.current = 1 - self.current
        return float(self.loss.numpy()), int(self.correct.numpy()), float(self.err.numpy())

    def values(self) -> Dict[str, np.ndarray]:
        """Current parameters, frozen buffers and optimizer state (copies, name -> array of its shape)."""
        out = {n: np.array(v.numpy()) for n, v in self.sets[self.current].items()}
        out.update({n: np.array(v.numpy()) for n, v in self.frozen.items()})
        return out

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        """Top-1 accuracy (0..1) of the current parameters on ``x [N, *sample_shape]``, ``y [N]`` int
        (eval graph, batches padded to the fixed batch size, padding not counted)."""
        B = self.m.batch_size
        b = self.eval_sess.io_binding()
        for n, v in self.sets[self.current].items():
            if n in self.m.trainable:
                b.bind_ortvalue_input(n, v)
        for n, v in self.frozen.items():
            b.bind_ortvalue_input(n, v)
        b.bind_ortvalue_input(self.m.input_name, self.eval_x)
        b.bind_output(self.m.output_name, "cpu")
        correct = 0
        for i, xb, n in padded_batches(x, B):
            self.eval_x.update_inplace(np.ascontiguousarray(xb, dtype=np.float32))
            self.eval_sess.run_with_iobinding(b)
            logits = b.copy_outputs_to_cpu()[0][:n]
            correct += int((logits.argmax(1) == y[i:i + n]).sum())
        return correct / max(1, x.shape[0])


def checked_batch(m: StepManifest, xb: np.ndarray, yb: np.ndarray, max_parts: int) -> Tuple[np.ndarray, np.ndarray]:
    """``xb [k B, *in_shape]`` and ``yb [k B]`` (``1 <= k <= max_parts``, ``B`` the graphs' batch) as
    float32 / int64 C order (the bound buffers take raw bytes), checked: the graph would take any
    label silently."""
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    yb = np.asarray(yb)
    B = m.batch_size
    rows = xb.shape[0] if xb.ndim else 0
    if xb.shape[1:] != tuple(m.in_shape) or rows % B or not 1 <= rows // B <= max_parts:
        want = (B, *m.in_shape) if max_parts == 1 else f"(k x {B}, {', '.join(map(str, m.in_shape))}), k <= {max_parts}"
        raise ValueError(f"x: expected a batch of shape {want}, got {xb.shape}")
    if yb.shape != (rows,) or yb.dtype.kind not in "iu":
        raise ValueError(f"y: expected {rows} integer labels, got shape {yb.shape} of {yb.dtype}")
    if yb.size and (int(yb.min()) < 0 or int(yb.max()) >= m.num_classes):
        raise ValueError(f"y: labels must lie in 0..{m.num_classes - 1}, got {int(yb.min())}..{int(yb.max())}")
    return xb, np.ascontiguousarray(yb, dtype=np.int64)


def finetune_step(artifact_dir: Path, manifest: StepManifest, x: np.ndarray, y: np.ndarray, xe: np.ndarray,
                  ye: np.ndarray, epochs: int, lr: Optional[float], out: OutputDir, seed: int, resume: bool,
                  threads: Optional[int], log: Callable[[str], None], lean_memory: bool, accuracy_on: str,
                  settings: Dict, lr_schedule: str = "constant", keep_best: bool = False, accumulate: int = 1) -> Dict:
    """The onnx-step training loop (plain onnxruntime + numpy) on ``x [N, *in_shape]`` float32 and
    ``y [N]`` int64, reporting accuracy on ``xe``/``ye``. After every epoch the output set
    (``state.npz``, ``params.npz``, ``metrics.json``) is swapped into ``out``; a resumed run starts
    from ``out``'s ``state.npz`` (refused if its recorded ``settings`` or ``lr_schedule`` differ, see
    :func:`~.run_schedule.resolve_schedule`; a cosine schedule sets the ``lr`` input every step).
    Ctrl-C / SIGTERM raise :class:`~.run_state.RunInterrupted` saying which epoch ``out`` holds.
    ``metrics.json`` carries the whole run's ``history``; ``keep_best`` measures held-out accuracy
    every epoch and keeps ``best_params.npz`` (:mod:`~.run_history`). ``accumulate`` > 1: each step
    adds the gradients of up to that many batches before one update
    (:class:`~.accumulate_session.AccumulatingSession`). ``forbidden_modules`` lists torch and
    onnxruntime.training modules imported during the run (not those a calling process had loaded before)."""
    preloaded = set(training_modules_imported())
    ort = import_plain_ort()
    ort.set_default_logger_severity(3)
    rss_before = rss_mb()
    state_path = out.path / "state.npz"
    resuming = resume and state_path.is_file()
    src = state_path if resuming else artifact_dir / STEP_INIT
    needed = list(manifest.trainable) + list(manifest.frozen) + list(manifest.optimizer_state)
    start, meta = load_start(src, needed, resuming)
    resumed_steps = start_counter(meta, "runner.steps", src) if resuming else 0
    resumed_epochs = start_counter(meta, "runner.epochs", src) if resuming else 0
    artifact_id = manifest.files.get(STEP_MODEL, "")
    if resuming and "runner.artifact" in meta and str(meta["runner.artifact"]) != artifact_id:
        raise ArtifactError(f"--resume: {state_path} was fine-tuned from another export (its step graph differs from "
                            f"{artifact_dir}); {RESUME_FIX}")
    missing = [n for n in needed if n not in start]
    if missing:
        hint = f" (fine-tuned from another export?); {RESUME_FIX}" if resuming else ""
        raise ArtifactError(f"{src}: lacks {missing[:3]}{'...' if len(missing) > 3 else ''}{hint}")
    recorded = str(meta["runner.settings"]) if resuming and "runner.settings" in meta else None
    if keep_best:  # recorded only when on: other runs' settings stay what older runners wrote
        settings = {**settings, "keep_best": True}
    if resuming:
        check_settings(recorded, settings, state_path)
    rate = float(settings["lr"])
    parts_per_epoch = -(-x.shape[0] // manifest.batch_size)
    steps_per_epoch = -(-parts_per_epoch // accumulate)
    if resuming and recorded is not None and {"runner.steps", "runner.epochs"} <= set(meta):
        check_resumed_steps(state_path, resumed_steps, resumed_epochs, steps_per_epoch, ("runner.steps", "runner.epochs"))
    schedule = resolve_schedule(lr_schedule, rate, epochs, steps_per_epoch, resuming, recorded,
                                resumed_epochs, state_path)
    settings = schedule.with_settings(settings)
    history = load_history(out.path, resuming, resumed_epochs, keep_best, log)
    try:
        if accumulate > 1:
            from .accumulate_session import AccumulatingSession

            sess: StepSession = AccumulatingSession(ort, artifact_dir, manifest, start, threads, lean_memory, accumulate)
        else:
            sess = StepSession(ort, artifact_dir, manifest, start, threads, lean_memory)
    except StartArrayError as exc:
        hint = RESUME_FIX if resuming else f"{STEP_INIT} does not fit {STEP_MODEL}: export again"
        raise ArtifactError(f"{src}: {exc}; {hint}") from None
    rss_session = rss_mb()
    sess.set_lr(rate)

    acc_before = sess.accuracy(xe, ye)
    max_err = 0.0

    def step(xb, yb: Optional[np.ndarray], number: int) -> float:
        nonlocal max_err
        loss, _, err = sess.step_parts(xb) if accumulate > 1 else sess.step(xb, yb)
        if not math.isfinite(loss) and number == resumed_steps + 1:  # computed before this run's first update
            raise first_loss_error(number, loss, src, RESUME_FIX if resuming else f"{STEP_INIT} is damaged: export again")
        if not math.isfinite(loss):
            raise StepCheckError(f"step {number}: the loss is {loss}; lower --lr")
        if not err <= manifest.recon_tolerance:
            raise StepCheckError(
                f"step {number}: RevLIF reconstruction error {err:.3g} exceeds {manifest.recon_tolerance:g} (float "
                f"mode: spikes flipped in the inverse; export with mode='exact', or fewer steps)")
        max_err = max(max_err, err)
        return loss

    def end_epoch(end: EpochEnd) -> Tuple[Dict, Callable[[Path], None]]:
        values = sess.values()
        bad_values = [k for k in manifest.trainable if not np.isfinite(values[k]).all()]
        if bad_values:  # the last update is not seen by the loss check
            raise StepCheckError(f"step {end.total_steps}: the update made {bad_values[:3]} non-finite; lower --lr")
        acc = sess.accuracy(xe, ye) if (keep_best or end.last) else None
        best = history.add(end.epoch, end.losses[-1], end.lrs[-1] if end.lrs else None, acc, end.total_steps)
        metrics = {
            "format": "onnx-step",
            **end.progress,
            "batch_size": manifest.batch_size,
            "accumulate": accumulate,
            "samples_per_step": min(accumulate, parts_per_epoch) * manifest.batch_size,  # the most a step takes
            "learning_rate": rate,
            **schedule.metrics(),
            "epoch_lr": end.lrs,
            "optimizer": manifest.optimizer,
            "seed": seed,
            "epoch_loss": end.losses,
            "accuracy_on": accuracy_on,
            "eval_samples": int(xe.shape[0]),
            "accuracy_before": acc_before,
            "accuracy_after": acc if end.last else None,
            **history.metrics(),
            "recon_error_max": max_err,
            **end.timing,
            "threads": int(threads or 0),
            "lean_memory": bool(lean_memory),
            "rss_before_session_mb": rss_before,
            "rss_after_session_mb": rss_session,
            "peak_rss_mb": peak_rss_mb(),
            "torch_imported": "torch" in sys.modules and sys.modules["torch"] is not None,
            "forbidden_modules": [m for m in training_modules_imported() if m not in preloaded],
            "onnxruntime_version": getattr(ort, "__version__", ""),
        }
        state = dict(values)
        state["runner.steps"] = np.asarray(end.total_steps, np.int64)
        state["runner.epochs"] = np.asarray(end.epoch + 1, np.int64)
        state["runner.artifact"] = np.asarray(artifact_id)
        state["runner.settings"] = np.asarray(json.dumps(settings, sort_keys=True))
        params = {k: values[k] for k in list(manifest.trainable) + list(manifest.frozen)}
        return metrics, lambda d: _write_outputs(d, state, params, metrics, best)

    metrics = run_epochs(x, y, manifest.batch_size, epochs, seed, resumed_epochs, resumed_steps, resuming, out, log,
                         step, end_epoch, schedule, sess.set_lr, accumulate)
    if metrics["forbidden_modules"]:
        raise RuntimeError(f"device runner: {metrics['forbidden_modules'][:3]} were imported during fine-tuning; "
                           "the runner must stay torch-free")
    return metrics


def _write_outputs(d: Path, state: Dict[str, np.ndarray], params: Dict[str, np.ndarray], metrics: Dict,
                   best: bool = False) -> None:
    """The epoch's output set into the temp folder ``d`` (``best``: ``params`` are also the new
    ``best_params.npz``; otherwise the folder's old one, if any, is carried over by the swap)."""
    atomic_write_bytes(d / "state.npz", npz_bytes(state))
    data = npz_bytes(params)
    atomic_write_bytes(d / "params.npz", data)
    if best:
        atomic_write_bytes(d / BEST_PARAMS, data)
    atomic_write_text(d / "metrics.json", json.dumps(metrics, indent=2) + "\n")
