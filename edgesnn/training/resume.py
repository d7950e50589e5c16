"""What a resumed ``edgesnn train`` run continues from: the checkpoint's progress and its messages.

A run stopped by ``--max-steps`` inside an epoch stores that epoch as a *partial* row of its
history and the position reached in it (``epoch_offset``, per rank). A resumed run that trains
finishes that epoch and writes its row whole (:meth:`Progress.take_partial`); one with nothing left
to train keeps the stored history as is, so the report ends with the checkpoint's own last row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..checkpoint import CheckpointError

__all__ = ["Progress", "stored_progress", "will_train", "samples_done", "resume_messages"]


@dataclass
class Progress:
    """Where a checkpoint stopped: completed epochs, optimizer steps, its history."""

    start: int = 0  # completed epochs: training continues with epoch ``start + 1``
    steps: int = 0  # optimizer steps taken in all
    offset: int = 0  # position reached in this rank's order of epoch ``start + 1`` (0: none of it trained)
    history: List[Dict] = field(default_factory=list)
    carried: Dict = field(default_factory=dict)  # the partial row this run finishes (its loss, samples, seconds)

    @property
    def partial_row(self) -> Optional[Dict]:
        """The history's last row when it is epoch ``start + 1`` cut short, else ``None``."""
        last = self.history[-1] if self.history else None
        if self.offset and last is not None and last.get("partial") and last.get("epoch") == self.start + 1:
            return last
        return None

    def take_partial(self) -> None:
        """Move the partial row (if any) out of the history into :attr:`carried`: this run
        trains the rest of that epoch and appends its whole row. Call it only when it will train."""
        if self.partial_row is not None:
            self.carried = self.history.pop()


def _count(ck: Dict, key: str, default: Optional[int] = None) -> int:
    """``ck[key]`` as a count (an integer >= 0, not a bool); else a one-line :class:`CheckpointError`."""
    value = ck.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CheckpointError(f"--resume: the checkpoint's {key} must be an integer >= 0, got {value!r} "
                              "(not written by edgesnn train, or edited): it cannot be resumed")
    return value


def stored_progress(ck: Dict) -> Progress:
    """The progress a checkpoint written by ``edgesnn train`` holds (its history left as stored).

    Counts that are not integers >= 0 and a ``metrics`` that is not ``{"history": [rows]}`` are
    refused in one line (:class:`~edgesnn.checkpoint.CheckpointError`): resuming from them would
    train other epochs than it says."""
    metrics = ck.get("metrics", {})
    history = metrics.get("history", []) if isinstance(metrics, dict) else None
    if not (isinstance(history, list) and all(isinstance(row, dict) for row in history)):
        raise CheckpointError("--resume: the checkpoint's metrics must be {'history': [one dict per epoch]}, got "
                              f"{type(metrics).__name__ if history is None else 'history ' + type(history).__name__}"
                              " (not written by edgesnn train, or edited): it cannot be resumed")
    return Progress(start=_count(ck, "epoch"), steps=_count(ck, "steps", 0), offset=_count(ck, "epoch_offset", 0),
                    history=list(history))


def will_train(progress: Progress, epochs: int, max_steps: Optional[int]) -> bool:
    """Whether a resumed run trains at all: epochs are left and ``max_steps`` is not reached yet."""
    return progress.start < epochs and not (max_steps is not None and progress.steps >= max_steps)


def samples_done(offset: int, world: int, epoch_size: int) -> int:
    """Samples of the stopped epoch already trained: every rank reached ``offset`` in its share
    (``world`` shares dealt round-robin), at most the epoch's ``epoch_size`` samples."""
    return min(max(0, offset) * max(1, world), epoch_size)


def resume_messages(checkpoint: str, progress: Progress, epochs: int, max_steps: Optional[int],
                    world: int, epoch_size: int, horizon: Optional[int] = None) -> List[str]:
    """The log lines of a resumed run: where it continues, and why nothing is trained if so.

    ``horizon``: the epochs of a ``--lr-schedule cosine`` run (``None`` for constant): ``--epochs``
    cannot grow past it, so a run that reached it is told to start a new one instead."""
    start, done = progress.start, samples_done(progress.offset, world, epoch_size)
    part = f" and {done} samples of epoch {start + 1}" if progress.offset else ""
    lines = [f"resumed from {checkpoint} after epoch {start}{part}"]
    if start >= epochs:
        if progress.offset:
            lines.append(f"nothing to train: {checkpoint} already holds {start} epoch(s){part} (stopped by "
                         f"--max-steps), --epochs {epochs}; raise --epochs to {start + 1} to finish epoch {start + 1}")
        elif horizon is not None and start >= horizon:
            lines.append(f"nothing to train: {checkpoint} holds a finished --lr-schedule cosine run ({start} of "
                         f"{horizon} epochs); train more into a new --checkpoint")
        else:
            lines.append(f"nothing to train: {checkpoint} already holds {start} epoch(s) of --epochs {epochs}; "
                         f"raise --epochs{'' if horizon is None else f' (up to {horizon}: the end of its cosine schedule)'}")
    if max_steps is not None and progress.steps >= max_steps:
        held = f" (epoch {start + 1} stopped after {done} samples; the report keeps it as is)" if progress.offset else ""
        lines.append(f"nothing to train: {checkpoint} already took {progress.steps} step(s), --max-steps {max_steps}"
                     f"{held}")
    return lines
