"""The epoch loop both device runners share (:func:`~edgesnn.export.step_runner.finetune_step`,
:func:`~edgesnn.export.legacy_runner.finetune_legacy`): the epochs' batch orders, the timed steps,
the progress part of ``metrics.json``, the output swap after every epoch, the per-epoch log line and
the interrupt message. The runners pass in what differs: one training step, and what an epoch
writes. NumPy and the standard library only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from edgesnn.atomic import WriteError

from .run_schedule import LrSchedule
from .run_state import OutputDir, Progress, epoch_batches
from .run_support import epoch_metrics, step_time_metrics

__all__ = ["EpochEnd", "run_epochs"]


@dataclass(frozen=True)
class EpochEnd:
    """An epoch whose steps are done, before its outputs are written.

    ``epoch``: its index over the whole run, resumed epochs included (0-based: the state records
    ``epoch + 1`` epochs done); ``last``: the last epoch of this run; ``total_steps``: steps taken
    by this run and the runs it resumed; ``losses``: the mean training loss of every epoch of this
    run so far (a copy); ``progress``: :func:`~.run_support.epoch_metrics`; ``timing``:
    :func:`~.run_support.step_time_metrics` over this run's steps (milliseconds); ``lrs``: the
    learning rate of the last step of every epoch of this run so far (a copy; empty without a schedule).
    """

    epoch: int
    last: bool
    total_steps: int
    losses: List[float]
    progress: Dict[str, object]
    timing: Dict[str, Optional[float]]
    lrs: List[float] = field(default_factory=list)


#: One training step: ``step(xb [B, *in_shape] float32, yb [B] int64, number) -> loss`` (the batch
#: loss as a float); ``number`` counts steps from 1 over the whole run, resumed ones included (for
#: messages). It may raise to stop the run. With ``accumulate`` > 1 (:func:`run_epochs`), ``xb`` is
#: an iterator over the step's batches ``(xb, yb)``, each gathered from the data when it is reached,
#: and ``yb`` is ``None``.
StepFn = Callable[[np.ndarray, np.ndarray, int], float]

#: What an epoch writes: ``end_epoch(end) -> (metrics, write)``, called after the epoch's steps;
#: ``write(tmp_dir)`` writes the complete output set (``metrics`` included) into the temp folder
#: that :meth:`~.run_state.OutputDir.save` swaps in.
EndEpochFn = Callable[[EpochEnd], Tuple[Dict[str, Any], Callable[[Path], None]]]


def run_epochs(x: np.ndarray, y: np.ndarray, batch_size: int, epochs: int, seed: int, resumed_epochs: int,
               resumed_steps: int, resuming: bool, out: OutputDir, log: Callable[[str], None], step: StepFn,
               end_epoch: EndEpochFn, schedule: Optional[LrSchedule] = None,
               set_lr: Optional[Callable[[float], None]] = None, accumulate: int = 1) -> Dict[str, Any]:
    """Train ``epochs`` epochs on ``x [N, *in_shape]`` float32 and ``y [N]`` int64 in batches of
    exactly ``batch_size`` (:func:`~.run_state.epoch_batches`: epoch ``e`` of the whole run is
    shuffled by ``seed`` and ``e``, so a run that resumes after ``resumed_epochs`` epochs and
    ``resumed_steps`` steps continues the same orders); returns the last epoch's metrics.
    ``accumulate`` > 1: each step gets ``accumulate`` consecutive batches of the order (the epoch's
    last step the batches left) as an iterator that gathers one batch at a time (see ``StepFn``),
    so the epoch's order and padding do not change and no step holds more than one batch of input;
    an epoch's loss is then the mean of its steps' losses weighted by their batches (the mean over
    the epoch's batches, as without accumulation).

    A ``schedule`` that varies (:class:`~.run_schedule.LrSchedule`, cosine) sets the learning rate
    of every step through ``set_lr`` before it (step ``k`` of the whole run, resumed ones included,
    gets ``schedule.lr(k)``); a constant one leaves the rate the runner set once.

    Every step is timed (wall and CPU seconds, ``time.perf_counter`` / ``time.process_time``)
    around ``step`` alone (and ``set_lr``, where the schedule varies). After every epoch,
    ``end_epoch`` builds the metrics and the writer, the output set is swapped into ``out`` (signals
    wait for the swap) and one line goes to ``log``, ``epoch E/N: ...`` numbered over the whole run
    as ``metrics.json``'s ``history`` is (``E`` 1-based, resumed epochs included; ``N`` =
    ``resumed_epochs + epochs``, the epochs the run holds when this invocation ends), with the
    epoch's last learning rate, given a ``schedule``.
    Ctrl-C / SIGTERM (``KeyboardInterrupt``) raise :class:`~.run_state.RunInterrupted` saying which
    epoch ``out`` holds (``resuming``: whether ``out`` held a state when the run started); a failed
    write (:class:`~edgesnn.atomic.WriteError`: disk full...) says so too.
    """
    n = x.shape[0]
    epoch_losses: List[float] = []
    epoch_lrs: List[float] = []
    varies = schedule is not None and schedule.varies
    if varies and set_lr is None:
        raise ValueError("run_epochs: a varying learning-rate schedule needs set_lr")
    step_times: List[float] = []
    step_cpu: List[float] = []
    metrics: Dict[str, Any] = {}
    progress = Progress(out.path, epochs, resumed_epochs, resuming)
    try:
        for epoch in range(resumed_epochs, resumed_epochs + epochs):
            batches, padded = epoch_batches(n, batch_size, seed, epoch)
            if accumulate > 1:  # consecutive batches per step: [parts, batch] index rows
                batches = [batches[i:i + accumulate] for i in range(0, len(batches), accumulate)]
            progress.steps_per_epoch, progress.step = len(batches), 0
            losses, weights = [], []
            rate = None if schedule is None else schedule.base
            for idx in batches:
                if accumulate > 1:  # each batch gathered when the step reaches it
                    xb, yb = ((x[i], y[i]) for i in idx), None
                else:
                    xb, yb = x[idx], y[idx]
                t0, c0 = time.perf_counter(), time.process_time()
                if varies:
                    rate = schedule.lr(resumed_steps + len(step_times))
                    set_lr(rate)
                loss = step(xb, yb, resumed_steps + len(step_times) + 1)
                step_times.append(time.perf_counter() - t0)
                step_cpu.append(time.process_time() - c0)
                progress.step += 1
                losses.append(loss)
                weights.append(len(idx) if accumulate > 1 else 1)
            epoch_losses.append(float(np.mean(losses) if accumulate == 1 else np.average(losses, weights=weights)))
            if rate is not None:
                epoch_lrs.append(float(rate))
            steps = len(step_times)
            end = EpochEnd(epoch, len(epoch_losses) == epochs, resumed_steps + steps, list(epoch_losses),
                           epoch_metrics(epochs, len(epoch_losses), steps, resumed_steps, resumed_epochs, n,
                                         len(batches), padded),
                           step_time_metrics(step_times, step_cpu), list(epoch_lrs))
            metrics, write = end_epoch(end)
            try:
                out.save(write, then=progress.saved)
            except WriteError as exc:  # disk full, size limit: the swap never happened, --out is as it was
                raise WriteError(f"{exc}; {progress.holds()}", exc.errno) from None
            log(f"epoch {epoch + 1}/{resumed_epochs + epochs}: loss {epoch_losses[-1]:.4f} ({len(losses)} steps"
                + (f" of up to {accumulate} batches of {batch_size}" if accumulate > 1 else "")
                + (f", {padded} samples repeated to fill the last batch" if padded else "") + ")"
                + ("" if rate is None else f", lr {rate:.4g}"))
    except KeyboardInterrupt as exc:
        raise progress.interrupted(exc) from None
    return metrics
