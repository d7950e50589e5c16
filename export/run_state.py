"""What both device-runner loops share about a run's progress: the epoch's batch order, the run's
settings (recorded in the state; ``--resume`` refuses other ones), the output folder written after
every epoch, and interruption (Ctrl-C, SIGTERM). NumPy and the standard library only.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, TypeVar

import numpy as np

from edgesnn.atomic import replace_dir
from edgesnn.output_guard import GuardedDir
from edgesnn.signals import deferred_signals
from edgesnn.errors import UsageError

__all__ = ["epoch_batches", "run_settings", "check_settings", "OutputDir", "RunInterrupted", "Terminated",
           "deferred_signals", "sigterm_interrupts", "Progress"]

R = TypeVar("R")


# ----------------------------------------------------------------------------- data order


def epoch_batches(n: int, batch: int, seed: int, epoch: int) -> Tuple[np.ndarray, int]:
    """``(indices [steps, batch], padded)``: epoch ``epoch``'s shuffled order of ``n`` samples in
    batches of exactly ``batch`` (the graphs' fixed batch size). The order is
    ``default_rng([seed, epoch])``'s permutation (independent streams for every seed and epoch; a
    resumed run, which knows its epoch, continues the same orders). A last partial batch is filled
    with the first ``padded`` samples of the same permutation, as ``torch``'s ``DistributedSampler``
    pads: every sample is trained on at least once per epoch, ``padded < batch`` extra (when
    ``n < batch`` some samples appear three or more times)."""
    if n < 1 or batch < 1:
        raise ValueError(f"epoch_batches: expected n >= 1 and batch >= 1, got {n}, {batch}")
    order = np.random.default_rng([seed, epoch]).permutation(n)
    steps = math.ceil(n / batch)
    padded = steps * batch - n
    if padded:
        order = np.concatenate([order, np.resize(order, padded)])  # np.resize repeats when padded > n
    return order.reshape(steps, batch), padded


# ----------------------------------------------------------------------------- settings


#: Fields of the recorded settings and the flag that sets each (for the one-line refusal).
_FLAGS = {"seed": "--seed", "holdout": "--holdout", "lr": "--lr", "batch_size": "batch size (export)",
          "optimizer": "optimizer (export)", "data": "--data", "eval_data": "--eval-data", "keep_best": "--keep-best",
          "accumulate": "--accumulate"}


def run_settings(seed: int, holdout: float, lr: float, batch_size: int, optimizer: Dict[str, Any],
                 data: Dict[str, Any], eval_data: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The settings a resumed run must share with the run it continues (stored as JSON in the state).

    ``holdout``: the fraction actually held out (0.0 with ``--eval-data``); ``lr``: the learning
    rate used (``--lr`` or the manifest's); ``optimizer``: name and hyper-parameters; ``data`` /
    ``eval_data``: :func:`~edgesnn.export.run_data.data_fingerprint` of the files.
    """
    return {"seed": int(seed), "holdout": float(holdout), "lr": float(lr), "batch_size": int(batch_size),
            "optimizer": dict(optimizer), "data": dict(data), "eval_data": None if eval_data is None else dict(eval_data)}


def _comparable(field: str, value: Any) -> Any:
    if field in ("data", "eval_data") and isinstance(value, dict):
        return (value.get("samples"), value.get("sha256"))  # the arrays, not where the file lies
    if field == "keep_best":  # recorded only when on (absent: off, as older runners wrote)
        return bool(value)
    if field == "accumulate":  # recorded only above 1 (absent: 1)
        return 1 if value is None else value
    return value


def _show(field: str, value: Any) -> str:
    if field == "keep_best":
        return "on" if value else "off"
    if field == "accumulate":
        return str(1 if value is None else value)
    if field in ("data", "eval_data") and isinstance(value, dict):
        return f"{value.get('path')} ({value.get('samples')} samples, sha256 {value.get('sha256')})"
    if field == "optimizer" and isinstance(value, dict):
        return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(value.items()))
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def check_settings(recorded: Optional[str], current: Dict[str, Any], state: Path) -> None:
    """Refuse to resume ``state`` (whose recorded settings are the JSON ``recorded``) with other
    settings: one line naming every field that differs, then and now. A state without recorded
    settings (written by an older runner) is not checked."""
    if recorded is None:
        return
    try:
        old = json.loads(recorded)
        if not isinstance(old, dict):  # (a number, a list: valid JSON, but no settings)
            raise ValueError("not a JSON object")
    except (ValueError, RecursionError):
        raise UsageError(f"--resume: {state} holds unreadable run settings; pass --force instead of --resume "
                         "to start again") from None
    diffs: List[str] = []
    for field, flag in _FLAGS.items():
        a, b = old.get(field), current.get(field)
        if _comparable(field, a) != _comparable(field, b):
            diffs.append(f"{flag} {_show(field, a)} (now {_show(field, b)})")
    if diffs:
        raise UsageError(f"--resume: {state} was trained with other settings: {'; '.join(diffs)}; resume with the "
                         "same ones, or pass --force instead of --resume to start again")


# ----------------------------------------------------------------------------- the output folder


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` a hard link of ``src`` (a copy where links fail); folders recursively."""
    def one(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True, copy_function=one)
    elif src.is_symlink():
        os.symlink(os.readlink(src), dst)
    else:
        one(str(src), str(dst))


class OutputDir:
    """The runner's ``--out``. Every :meth:`save` builds a complete output set in a temp folder
    beside it and swaps it in (:func:`edgesnn.atomic.replace_dir`): never new parameters beside an
    old state. Other files in the folder are kept (hard-linked into the new set) by a resumed run
    and by every save after the first; the first save of a ``--force`` run replaces it as a whole.
    A save never replaces what another process put there (:class:`~edgesnn.output_guard.GuardedDir`:
    ``guard``, recorded when ``--out`` was checked, or else now): it stops with
    :class:`~edgesnn.errors.OutputChanged` and keeps its new set beside ``--out``.
    """

    def __init__(self, path: Path, keep_others: bool, guard: Optional[GuardedDir] = None) -> None:
        self.path = Path(path)
        self.keep_others = keep_others
        self.saves = 0
        self.guard = GuardedDir(self.path, "--out") if guard is None else guard

    def save(self, write: Callable[[Path], R], then: Optional[Callable[[], None]] = None) -> R:
        """``write(tmp_dir)`` writes the run's files; returns what it returned. Signals wait until
        the swap is done and ``then()`` (the caller's bookkeeping) has run (:func:`deferred_signals`),
        so an interrupt never leaves a temp folder, a half-swapped ``--out`` or a wrong count."""
        keep = self.keep_others or self.saves > 0

        def build(tmp: Path) -> R:
            result = write(tmp)
            if keep and self.path.is_dir():
                for entry in self.path.iterdir():
                    if not os.path.lexists(tmp / entry.name):
                        _link_or_copy(entry, tmp / entry.name)
            return result

        with deferred_signals():
            result = replace_dir(self.guard, build)
            self.saves += 1
            if then is not None:
                then()
        return result


# ----------------------------------------------------------------------------- interruption


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an interrupt by :func:`sigterm_interrupts` so that cleanup runs."""


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM; ``message`` says where it stopped and what ``--out`` holds."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message, self.exit_code = message, exit_code


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated("SIGTERM")


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``) inside the block instead of
    killing the process outright, so ``finally`` clauses and temp-folder cleanup run. Main thread only."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class Progress:
    """Where a run is, for the message when it is interrupted."""

    def __init__(self, out: Path, epochs: int, resumed_epochs: int, resuming: bool) -> None:
        """``out``: the output folder; ``epochs``: asked for in this run; ``resumed_epochs``: the
        epochs the resumed state already holds; ``resuming``: whether it continues a state."""
        self.out, self.epochs, self.resumed_epochs, self.resuming = out, epochs, resumed_epochs, resuming
        self.done = 0  # epochs of this run finished and saved
        self.step = 0  # steps of the current epoch taken
        self.steps_per_epoch = 0

    def saved(self) -> None:
        """One more epoch is in ``out`` (called inside the save's signal deferral)."""
        self.done += 1
        self.step = 0

    def interrupted(self, exc: KeyboardInterrupt) -> RunInterrupted:
        """The :class:`RunInterrupted` to raise for ``exc`` (exit code 130 for SIGINT, 143 for SIGTERM)."""
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        code = 143 if isinstance(exc, Terminated) else 130
        total = self.resumed_epochs + self.epochs  # numbered over the whole run, as the epoch lines are
        where = (f"{what} in epoch {self.resumed_epochs + self.done + 1}/{total} ({self.step} of its "
                 f"{self.steps_per_epoch} steps done)"
                 if self.done < self.epochs else f"{what} after the last epoch")
        return RunInterrupted(f"{where}; {self.holds()}", code)

    def holds(self) -> str:
        """What ``out`` holds now (after the last saved epoch) and how to finish the run."""
        total = self.resumed_epochs + self.done
        if self.done == 0 and not self.resuming:
            return f"nothing was written to {self.out}"
        saved = f"{self.out} holds the state after epoch {total}"
        left = self.epochs - self.done
        if left > 0:
            saved += f"; --resume --epochs {left} finishes the run"
        return saved
