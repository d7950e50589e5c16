"""The device runner's per-epoch history over a whole run, resumes included, and ``--keep-best``.
Standard library only.

``metrics.json`` keeps its per-invocation lists (``epoch_loss``, ``epoch_lr``: the epochs of this
invocation only) and adds, after every epoch:

* ``history``: one row per epoch of the whole run, resumed epochs included, in order:
  ``{"epoch": 1-based epoch of the run, "loss": mean training loss, "lr": the epoch's last learning
  rate (None without a schedule, i.e. the legacy format's constant rate is still given), "accuracy":
  accuracy on the held-out data (``accuracy_on``) after that epoch, or None where it was not
  measured, "steps": optimizer steps of the run after that epoch (None where unknown)}``. A resumed run
  reads the rows of the output it resumes (its ``metrics.json``) and appends its own.
* ``history_complete``: whether ``history`` has a row for every epoch of the run. A resumed output
  written by a runner without ``history`` has its rows rebuilt from its ``epoch_loss`` /
  ``epoch_lr``, which cover only the epochs of its last invocation (the rebuilt rows' accuracy and
  steps are None but on the last): complete when that invocation trained every epoch, else
  ``False``, as when its ``metrics.json`` is missing or unreadable; ``history_note`` then says which
  epochs are missing (otherwise it is absent).

Held-out accuracy is measured after the last epoch of every invocation (``accuracy_after``) and,
with ``--keep-best``, after every epoch.

``--keep-best`` (onnx-step artifacts only) also keeps ``best_params.npz`` in the output (the
format of ``params.npz``: fold it back with ``edgesnn export --format checkpoint --params
OUT/best_params.npz``): the parameters after the epoch with the best held-out accuracy so far (the
earliest such epoch on ties), written in the same swapped-in output set as the epoch's other files,
with ``best_epoch`` (1-based) / ``best_accuracy`` in ``metrics.json``. It needs held-out data
(``--holdout`` > 0, the default, or ``--eval-data``) and is refused in one line otherwise. It is a
recorded run setting (``keep_best`` in the state, present only when on, so other runs record what
older runners wrote): a ``--resume`` must pass it exactly when the run it continues did, or is refused
by the settings check naming ``--keep-best`` (a run without it cannot know which of its past epochs
was best; a run with it resumed without it would leave a stale ``best_params.npz``). A resumed
keep-best run carries the best so far from the output's ``metrics.json`` and ``best_params.npz``
(kept untouched until a later epoch beats it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from edgesnn.errors import UsageError

__all__ = ["BEST_PARAMS", "RunHistory", "check_keep_best", "load_history"]

#: The file ``--keep-best`` keeps in the output folder.
BEST_PARAMS = "best_params.npz"


def check_keep_best(keep_best: bool, step_format: bool, accuracy_on: str) -> None:
    """Refuse ``--keep-best`` in one line where it cannot work: legacy artifacts, or no held-out data."""
    if not keep_best:
        return
    if not step_format:
        raise UsageError("--keep-best: needs onnx-step artifacts (these are the legacy onnx-training format); "
                         "export with --format onnx-step, or drop --keep-best")
    if accuracy_on == "training data":
        raise UsageError("--keep-best: needs held-out data to pick the best epoch; pass --holdout F (> 0) or "
                         "--eval-data FILE, or drop --keep-best")


class RunHistory:
    """The per-epoch rows of a run and, with ``keep_best``, its best epoch so far."""

    def __init__(self, rows: List[Dict[str, Any]], note: Optional[str], keep_best: bool,
                 best_epoch: Optional[int] = None, best_accuracy: Optional[float] = None) -> None:
        self.rows, self.note, self.keep_best = rows, note, keep_best
        self.best_epoch, self.best_accuracy = best_epoch, best_accuracy

    def add(self, epoch: int, loss: float, lr: Optional[float], accuracy: Optional[float],
            steps: Optional[int]) -> bool:
        """Append the row of ``epoch`` (0-based over the run); returns whether it is a new best
        (``keep_best`` and ``accuracy`` above every earlier one: its parameters go to :data:`BEST_PARAMS`)."""
        self.rows.append({"epoch": epoch + 1, "loss": float(loss), "lr": None if lr is None else float(lr),
                          "accuracy": None if accuracy is None else float(accuracy),
                          "steps": None if steps is None else int(steps)})
        if self.keep_best and accuracy is not None and (self.best_accuracy is None or accuracy > self.best_accuracy):
            self.best_epoch, self.best_accuracy = epoch + 1, float(accuracy)
            return True
        return False

    def metrics(self) -> Dict[str, Any]:
        """The ``metrics.json`` fields (``history`` holds the row dicts themselves: a row's accuracy set
        after :meth:`add` still shows)."""
        out: Dict[str, Any] = {"history": list(self.rows), "history_complete": self.note is None}
        if self.note is not None:
            out["history_note"] = self.note
        if self.keep_best:
            out.update(keep_best=True, best_epoch=self.best_epoch, best_accuracy=self.best_accuracy)
        return out


def _rows(old: Dict[str, Any], done: int) -> Optional[List[Dict[str, Any]]]:
    """``old['history']`` if it is a well-formed row list ending at epoch ``done`` (epochs rising;
    gaps only where ``old`` says its history is incomplete), else ``None``."""
    rows = old.get("history")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        return None
    epochs = [r.get("epoch") for r in rows]
    if not all(isinstance(e, int) for e in epochs) or epochs[-1] != done:
        return None
    if old.get("history_complete") is False:
        ok = all(a < b for a, b in zip(epochs, epochs[1:]))
    else:
        ok = epochs == list(range(1, done + 1))
    return [dict(r) for r in rows] if ok else None


def _rebuilt(old: Dict[str, Any], done: int) -> List[Dict[str, Any]]:
    """Rows of the last ``len(epoch_loss)`` epochs before ``done`` from an output without ``history``."""
    losses = old.get("epoch_loss") if isinstance(old.get("epoch_loss"), list) else []
    losses = losses[-done:] if done else []
    lrs = old.get("epoch_lr") if isinstance(old.get("epoch_lr"), list) else []
    first = done - len(losses) + 1
    rows = []
    for i, loss in enumerate(losses):
        last = i == len(losses) - 1
        rows.append({"epoch": first + i, "loss": loss,
                     "lr": lrs[i] if len(lrs) == len(losses) else None,
                     "accuracy": old.get("accuracy_after") if last else None,
                     "steps": old.get("total_steps") if last else None})
    return rows


def load_history(out_dir: Path, resuming: bool, resumed_epochs: int, keep_best: bool,
                 log: Callable[[str], None] = print) -> RunHistory:
    """The history a run continues: empty for a new run; for a resume after ``resumed_epochs``
    epochs, the rows (and best epoch) of ``out_dir/metrics.json``. An output without usable
    ``history`` (an older runner's, or a missing / unreadable ``metrics.json``) is not refused: its
    rows are rebuilt from what it has and ``history_note`` says so (and ``log`` gets one line)."""
    if not resuming or resumed_epochs <= 0:
        return RunHistory([], None, keep_best)
    path = Path(out_dir) / "metrics.json"
    try:
        old = json.loads(path.read_text())
        if not isinstance(old, dict):
            raise ValueError("not an object")
    except (OSError, ValueError):
        old = {}
    rows = _rows(old, resumed_epochs)
    note = None
    if rows is not None and old.get("history_complete") is False:  # an earlier resume's gap stays noted
        note = str(old.get("history_note") or "the resumed output's history was incomplete")
    if rows is None:
        rows = _rebuilt(old, resumed_epochs) if old.get("total_epochs") == resumed_epochs else []
        known = f"epochs {rows[0]['epoch']}-{resumed_epochs}" if rows else "none of them"
        note = (f"the resumed output ({path}) recorded no per-epoch history for its {resumed_epochs} epoch(s) "
                f"(an older runner, or metrics.json missing); rebuilt rows: {known}")
        log(f"note: {note}")
        if rows and rows[0]["epoch"] == 1:  # its last invocation trained them all: every row is there
            note = None
    best_epoch, best_acc = None, None
    if keep_best and isinstance(old.get("best_epoch"), int) and (Path(out_dir) / BEST_PARAMS).is_file():
        best_epoch, best_acc = old["best_epoch"], old.get("best_accuracy")
        if not isinstance(best_acc, (int, float)):
            best_epoch, best_acc = None, None
    return RunHistory(rows, note, keep_best, best_epoch, None if best_acc is None else float(best_acc))
