"""Gradient accumulation on the device (``edgesnn-device --accumulate N``). Never imports torch.

An export's graphs have a fixed batch ``B``. :class:`AccumulatingSession` steps on batches of up
to ``N x B`` samples with the memory of ``B``: it runs ``grad.onnx`` (the step graph without its
update) on each part of ``B`` samples, adds the parts' gradients in one float32 buffer per
parameter, divides the sum by the number of parts (each part's loss is its own mean, so that is
the whole batch's mean gradient, up to float rounding) and runs ``apply.onnx`` (the update
``step.onnx`` ends with) once. One part is exactly ``step.onnx``: the same operations in the same
order. The BatchNorm of a step graph uses its running statistics, so unlike
``edgesnn train --micro-batch`` nothing depends on how the batch is cut.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Dict, Iterable, Optional, Tuple, Union

import numpy as np

from edgesnn.errors import UsageError

from .artifacts import STEP_ACCUMULATE_FILES, STEP_APPLY_MODEL, STEP_GRAD_MODEL, ArtifactError, Manifest, StepManifest
from .step_runner import StepSession, checked_batch

__all__ = ["AccumulatingSession", "check_accumulate_artifacts"]


def check_accumulate_artifacts(manifest: Union[Manifest, StepManifest], artifact_dir: Path) -> None:
    """``--accumulate`` above 1 needs ``onnx-step`` artifacts that hold the accumulation graphs: a
    one-line error otherwise."""
    if not isinstance(manifest, StepManifest):
        raise UsageError("--accumulate: needs onnx-step artifacts (`edgesnn export --format onnx-step`); these are "
                         "the legacy onnx-training format")
    if STEP_GRAD_MODEL not in manifest.files:
        raise ArtifactError(f"--accumulate: {artifact_dir} was exported before gradient accumulation (it has no "
                            f"{STEP_GRAD_MODEL}); export it again with this edgesnn")
    for name in STEP_ACCUMULATE_FILES:  # (a board that never accumulates may leave them out)
        if not (Path(artifact_dir) / name).is_file():
            raise ArtifactError(f"--accumulate: {artifact_dir} lacks {name}, which its export wrote; copy it beside "
                                "step.onnx")


class AccumulatingSession(StepSession):
    """:class:`~.step_runner.StepSession` whose :meth:`step` takes ``k x B`` samples (``1 <= k <= parts``)
    and updates once. Beyond a plain session it holds two float32 copies of the trainable parameters'
    size (one part's gradients, their running sum); the gradient graph holds no optimizer state."""

    def __init__(self, ort: ModuleType, artifact_dir: Path, manifest: StepManifest, start: Dict[str, np.ndarray],
                 threads: Optional[int], lean_memory: bool, parts: int) -> None:
        """As :class:`~.step_runner.StepSession`; ``parts``: the most batches one step takes."""
        self.parts = int(parts)
        super().__init__(ort, artifact_dir, manifest, start, threads, lean_memory)

    def _bind_training(self, start: Dict[str, np.ndarray]) -> None:
        m, OV = self.m, self.ort.OrtValue
        self.grad_sess = self._load(STEP_GRAD_MODEL)
        self.apply_sess = self._load(STEP_APPLY_MODEL)
        # OrtValues made from these arrays share their memory: the graphs write into them in place
        self.part_grad = {n: np.zeros(np.shape(start[n]), np.float32) for n in m.trainable}
        self.grad_sum = {n: np.zeros(np.shape(start[n]), np.float32) for n in m.trainable}
        part_ov = {n: OV.ortvalue_from_numpy(a) for n, a in self.part_grad.items()}
        sum_ov = {n: OV.ortvalue_from_numpy(a) for n, a in self.grad_sum.items()}
        self._keep = (part_ov, sum_ov)
        self.grad_bindings, self.apply_bindings = [], []
        for k in (0, 1):
            g = self.grad_sess.io_binding()
            for n in m.trainable:
                g.bind_ortvalue_input(n, self.sets[k][n])
                g.bind_ortvalue_output(f"grad/{n}", part_ov[n])
            self._bind_batch(g)
            self.grad_bindings.append(g)
            a = self.apply_sess.io_binding()
            self._bind_update(a, k)
            for n in m.trainable:
                a.bind_ortvalue_input(f"grad/{n}", sum_ov[n])
            self.apply_bindings.append(a)

    def step(self, xb: np.ndarray, yb: np.ndarray) -> Tuple[float, int, float]:
        """One optimizer step on ``xb [k B, *in_shape]`` and labels ``yb [k B]`` (``1 <= k <= parts``),
        cut into its ``k`` batches: see :meth:`step_parts`."""
        xb, yb = checked_batch(self.m, xb, yb, self.parts)
        B = self.m.batch_size
        return self.step_parts((xb[i:i + B], yb[i:i + B]) for i in range(0, xb.shape[0], B))

    def step_parts(self, parts: Iterable[Tuple[np.ndarray, np.ndarray]]) -> Tuple[float, int, float]:
        """One optimizer step on 1 to ``parts`` batches ``(xb [B, *in_shape], yb [B])``, taken from
        ``parts`` one at a time (the runner gathers each from the data set only when its turn
        comes): ``(mean loss, correct, largest recon_error)`` over them. A batch whose loss is not
        finite stops the step before the update (its loss is returned)."""
        losses, correct, err = [], 0, 0.0
        for i, (xb, yb) in enumerate(parts):
            if i == self.parts:
                raise ValueError(f"parts: expected at most {self.parts} batches per step (--accumulate), got more")
            xb, yb = checked_batch(self.m, xb, yb, 1)
            self.x.update_inplace(xb)
            self.y.update_inplace(yb)
            self.grad_sess.run_with_iobinding(self.grad_bindings[self.current])
            loss = float(self.loss.numpy())
            losses.append(loss)
            correct += int(self.correct.numpy())
            err = float(np.maximum(err, self.err.numpy()))  # a NaN stays (Python's max() would drop it)
            if not np.isfinite(loss):
                return loss, correct, err
            for n, g in self.part_grad.items():
                if i == 0:
                    np.copyto(self.grad_sum[n], g)
                else:
                    np.add(self.grad_sum[n], g, out=self.grad_sum[n])
        k = len(losses)
        if k == 0:
            raise ValueError("parts: expected at least one batch")
        if k > 1:
            for s in self.grad_sum.values():
                np.divide(s, np.float32(k), out=s)
        self.apply_sess.run_with_iobinding(self.apply_bindings[self.current])
        self.current = 1 - self.current
        return float(np.mean(losses)), correct, err
