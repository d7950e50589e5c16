"""The device runner's learning-rate schedule (``edgesnn-device --lr-schedule``). Standard library only.

* ``constant`` (the default): every step uses the run's learning rate, as before this option existed.
  Nothing about the schedule is added to the recorded run settings, so a constant run's state is
  what older runners wrote, and a state without a recorded schedule resumes as ``constant``.
* ``cosine``: step ``k`` (0-based, counted over the whole run, resumed steps included) uses
  ``lr * 0.5 * (1 + cos(pi * k / K))`` for ``k = 0..K-1``: what
  ``torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=K, eta_min=0)`` gives when stepped once
  per batch. The horizon ``K`` (optimizer steps) is fixed when the run starts: ``--epochs`` of that
  first run times its steps per epoch, and recorded in the state with the settings
  (``lr_schedule``: name, horizon epochs and steps). A resumed cosine run continues along that
  recorded curve: its ``--epochs`` still counts the epochs it adds, which together with the epochs
  already done must not pass the horizon (so an interrupted run resumed with the ``--epochs`` it had
  left equals the uninterrupted run, bit for bit); a resume of a finished cosine run, or one with
  another ``--lr-schedule``, is refused in one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from edgesnn.errors import UsageError
from edgesnn.lr_schedules import KEY, SCHEDULES, check_schedule_name, cosine_rate

__all__ = ["SCHEDULES", "LrSchedule", "check_schedule_name", "resolve_schedule"]


@dataclass(frozen=True)
class LrSchedule:
    """A run's learning rate per optimizer step.

    ``name``: one of :data:`SCHEDULES`; ``base``: the learning rate (``--lr`` or the manifest's;
    the optimizer's unit, e.g. parameter change per unit gradient for SGD); ``epochs`` /
    ``steps``: the horizon of a cosine run in epochs and optimizer steps (0 for constant).
    """

    name: str
    base: float
    epochs: int = 0
    steps: int = 0

    @property
    def varies(self) -> bool:
        """Whether the rate changes from step to step (the runner then sets it before every step)."""
        return self.name != "constant"

    def lr(self, k: int) -> float:
        """The learning rate of optimizer step ``k`` (0-based over the whole run), as a Python float."""
        if self.name == "constant":
            return self.base
        if not 0 <= k < self.steps:
            raise ValueError(f"cosine schedule: step {k} is outside its horizon of {self.steps} steps")
        return cosine_rate(self.base, k, self.steps)

    def record(self) -> Optional[Dict[str, Any]]:
        """The settings entry recorded in the state (``None`` for constant: nothing is recorded)."""
        if self.name == "constant":
            return None
        return {"name": self.name, "epochs": int(self.epochs), "steps": int(self.steps)}

    def with_settings(self, settings: Dict[str, Any]) -> Dict[str, Any]:
        """``settings`` (:func:`~.run_state.run_settings`) with this schedule recorded (a copy; for
        constant, ``settings`` as they are, so a constant run's state is unchanged)."""
        entry = self.record()
        return dict(settings) if entry is None else {**settings, KEY: entry}

    def metrics(self) -> Dict[str, Any]:
        """The schedule part of ``metrics.json``: ``lr_schedule`` and (cosine) ``lr_schedule_epochs``
        / ``lr_schedule_steps``, the horizon (``None`` for constant)."""
        return {KEY: self.name, "lr_schedule_epochs": self.epochs or None, "lr_schedule_steps": self.steps or None}


def _recorded(recorded: Optional[str], state: Path) -> Dict[str, Any]:
    """The schedule entry of the recorded settings JSON; ``{"name": "constant"}`` when there is none
    (a constant run, or an output folder of a runner without schedules)."""
    try:
        entry = json.loads(recorded).get(KEY) if recorded is not None else None
    except (ValueError, AttributeError):
        entry = None  # unreadable settings are refused by check_settings, which runs first
    if entry is None:
        return {"name": "constant"}
    ok = (isinstance(entry, dict) and entry.get("name") in SCHEDULES
          and all(isinstance(entry.get(f), int) and entry.get(f) > 0 for f in ("epochs", "steps")))
    if not ok:
        raise UsageError(f"--resume: {state} records an unreadable --lr-schedule ({entry!r}); pass --force instead "
                         "of --resume to start again")
    return entry


def resolve_schedule(name: str, base: float, epochs: int, steps_per_epoch: int, resuming: bool,
                     recorded: Optional[str], resumed_epochs: int, state: Path) -> LrSchedule:
    """The schedule of a run of ``epochs`` epochs of ``steps_per_epoch`` steps at learning rate ``base``.

    A new run (``resuming`` false) starts a new horizon: ``epochs`` epochs. A resumed run takes the
    schedule recorded in ``state``'s settings (the JSON ``recorded``; none recorded: constant) and
    refuses, in one line, another ``--lr-schedule``, a cosine run whose ``resumed_epochs`` done plus
    ``epochs`` pass its horizon (``--epochs``), or a horizon that no longer fits the data.
    """
    name = check_schedule_name(name)
    if not resuming:
        if name == "constant":
            return LrSchedule(name, base)
        return LrSchedule(name, base, epochs, epochs * steps_per_epoch)
    old = _recorded(recorded, state)
    if old["name"] != name:
        raise UsageError(f"--resume: {state} was trained with --lr-schedule {old['name']} (now {name}); resume with "
                         f"--lr-schedule {old['name']}, or pass --force instead of --resume to start again")
    if name == "constant":
        return LrSchedule(name, base)
    horizon, steps = int(old["epochs"]), int(old["steps"])
    if horizon * steps_per_epoch != steps:
        raise UsageError(f"--resume: {state}'s --lr-schedule {name} spans {steps} steps over {horizon} epochs, but "
                         f"the data now give {steps_per_epoch} steps per epoch; pass --force instead of --resume to "
                         "start again")
    left = horizon - resumed_epochs
    if left <= 0:
        raise UsageError(f"--epochs: {state} holds a finished --lr-schedule {name} run ({horizon} epochs); a resume "
                         "would go past its end: pass --force instead of --resume to start a new run")
    if epochs > left:
        raise UsageError(f"--epochs: {state} is a --lr-schedule {name} run of {horizon} epochs with {resumed_epochs} "
                         f"done; --epochs {epochs} would go past its end (pass --epochs {left} or fewer)")
    return LrSchedule(name, base, horizon, steps)
