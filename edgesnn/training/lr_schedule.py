"""``edgesnn train --lr-schedule``: constant (the default, unchanged) or per-step cosine decay.

The same semantics as the device runner's option (:mod:`edgesnn.export.run_schedule`):

* ``constant``: every optimizer step uses ``--lr``, exactly as before the option existed. Nothing
  about the schedule is stored: a constant run's checkpoint, report and log are what older
  versions wrote, and a checkpoint without a schedule resumes as ``constant``.
* ``cosine``: optimizer step ``k`` (0-based over the whole run, resumed steps included) uses
  ``lr * 0.5 * (1 + cos(pi * k / K))``, computed by
  ``torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=K, eta_min=0)`` stepped once per batch
  (torch's own sequence, bit for bit). The horizon ``K`` (optimizer steps) is fixed by the run that
  starts the schedule: its ``--epochs`` times its steps per epoch (per rank; every rank steps the
  same scheduler, so all ranks use the same rate). ``--max-steps`` stops a run on that curve; it
  does not shorten it.

A cosine checkpoint stores ``train_config["lr_schedule"] = "cosine"`` (older edgesnn refuses to
resume it as another setting) and ``lr_schedule = {"name", "epochs", "steps", "state"}``: the
horizon in epochs and steps and the scheduler's ``state_dict``. ``--resume`` continues that curve
(bit-identical weights to an uninterrupted run); ``train``'s ``--epochs`` is the run's total, and
for a cosine run it may not pass the horizon. Another ``--lr-schedule`` than the checkpoint's is
refused in one line naming the flag.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from ..checkpoint import CheckpointError
from ..errors import UsageError
from ..lr_schedules import KEY, SCHEDULES, check_schedule_name

__all__ = ["SCHEDULES", "KEY", "check_schedule_name", "steps_per_epoch", "check_resume_schedule",
           "horizon_of", "RunSchedule", "start_schedule", "skips_batch"]

def skips_batch(size: int, batchnorm: bool) -> bool:
    """The training loop's rule: a batch of ``size`` samples takes no optimizer step when the model
    has BatchNorm and the batch holds fewer than two samples (BatchNorm needs more than one)."""
    return size < 2 and batchnorm


def steps_per_epoch(n_train: int, world: int, batch_size: int, batchnorm: bool) -> int:
    """Optimizer steps one epoch takes on every rank: ``ceil(n_train / world)`` samples per rank
    (the padded share of :func:`~edgesnn.training.distributed.epoch_order`) in batches of ``batch_size``
    samples, without the batches the loop skips (:func:`skips_batch`)."""
    share = -(-n_train // max(1, world))
    return sum(1 for i in range(0, share, batch_size) if not skips_batch(min(batch_size, share - i), batchnorm))


def _stored_name(ck: Dict) -> str:
    """The schedule a checkpoint was trained with (none stored: ``constant``, older checkpoints)."""
    return (ck.get("train_config") or {}).get(KEY, "constant")


def _horizon(ck: Dict, checkpoint: str) -> Dict[str, Any]:
    """A cosine checkpoint's ``lr_schedule`` entry, checked (epochs, steps >= 1; a state dict)."""
    entry = ck.get(KEY)
    ok = isinstance(entry, dict) and isinstance(entry.get("state"), dict) and all(
        type(entry.get(k)) is int and entry[k] >= 1 for k in ("epochs", "steps"))
    if not ok:
        raise CheckpointError(f"--resume: {checkpoint} was trained with --lr-schedule {_stored_name(ck)} but holds no "
                              "readable schedule (lr_schedule: epochs, steps, state): it cannot be resumed")
    return entry


def horizon_of(ck: Dict) -> Optional[int]:
    """The horizon (epochs) of the cosine run a checkpoint holds; ``None`` for constant."""
    entry = ck.get(KEY) if _stored_name(ck) != "constant" else None
    return entry.get("epochs") if isinstance(entry, dict) else None


def check_resume_schedule(ck: Dict, name: str, epochs: int, checkpoint: str) -> None:
    """Before any data is read: refuse (one line) resuming ``ck`` with another ``--lr-schedule``
    (``name``) than it was trained with, or a cosine run with ``--epochs`` (the run's total)
    past the horizon it stored. A checkpoint without a schedule resumes as ``constant``, whose
    ``--epochs`` may grow as before."""
    old = _stored_name(ck)
    if old != name:
        raise UsageError(f"--lr-schedule: {checkpoint} was trained with --lr-schedule {old} (now {name}); resume with "
                         f"--lr-schedule {old}, or use a new --checkpoint (or --force) to start again")
    if name == "constant":
        return
    horizon = _horizon(ck, checkpoint)["epochs"]
    if epochs > horizon:
        raise UsageError(f"--epochs: {checkpoint} is a --lr-schedule {name} run over {horizon} epoch(s); --epochs "
                         f"{epochs} would go past the end of its schedule (pass --epochs {horizon} or fewer, or "
                         "start a new run)")


class RunSchedule:
    """The learning rate of a training run, stepped once per optimizer step.

    ``scheduler``: a ``CosineAnnealingLR`` (cosine), or ``None`` (constant: nothing is touched).
    ``epochs`` / ``steps``: the horizon of a cosine run (epochs, optimizer steps; 0 for constant).
    """

    def __init__(self, name: str, opt: torch.optim.Optimizer, scheduler: Optional[Any] = None,
                 epochs: int = 0, steps: int = 0) -> None:
        self.name, self.opt, self.scheduler, self.epochs, self.steps = name, opt, scheduler, epochs, steps
        self.last: Optional[float] = None  # the rate of the last step this run took (``--lr`` units)

    def step(self) -> None:
        """After ``opt.step()``: note the rate that step used and move to the next one."""
        if self.scheduler is not None:
            self.last = float(self.opt.param_groups[0]["lr"])
            self.scheduler.step()

    def row(self) -> Dict[str, float]:
        """The per-epoch report fields: ``{"lr": the rate of the epoch's last step}`` (cosine only)."""
        return {} if self.scheduler is None or self.last is None else {"lr": self.last}

    def log_suffix(self) -> str:
        """What the epoch line adds: ``"  lr 0.0005"`` (cosine only; empty for constant)."""
        row = self.row()
        return f"  lr {row['lr']:.4g}" if row else ""

    def checkpoint(self) -> Dict[str, Any]:
        """The checkpoint entries (``{}`` for constant: the checkpoint is what older versions wrote)."""
        if self.scheduler is None:
            return {}
        return {KEY: {"name": self.name, "epochs": self.epochs, "steps": self.steps,
                      "state": self.scheduler.state_dict()}}

    def report(self) -> Dict[str, Any]:
        """The report's top-level entries: ``lr_schedule``, ``lr_schedule_epochs``, ``lr_schedule_steps``
        (cosine only; a constant run's report is unchanged)."""
        if self.scheduler is None:
            return {}
        return {KEY: self.name, "lr_schedule_epochs": self.epochs, "lr_schedule_steps": self.steps}


def start_schedule(name: str, opt: torch.optim.Optimizer, epochs: int, per_epoch: int,
                   ck: Optional[Dict] = None, checkpoint: Optional[str] = None) -> RunSchedule:
    """The schedule of a run of ``epochs`` epochs of ``per_epoch`` optimizer steps.

    A new run (``ck`` None) starts a horizon of ``epochs x per_epoch`` steps. A resumed run
    (``ck`` loaded into ``opt`` already, :func:`check_resume_schedule` passed) takes the stored
    horizon and scheduler state, so its next step uses the rate an uninterrupted run would."""
    name = check_schedule_name(name)
    if name == "constant":
        return RunSchedule(name, opt)
    if ck is not None:
        entry = _horizon(ck, str(checkpoint))
        horizon, steps = entry["epochs"], entry["steps"]
        if horizon * per_epoch != steps:
            raise UsageError(f"--resume: {checkpoint}'s --lr-schedule {name} spans {steps} steps over {horizon} "
                             f"epochs, but this run takes {per_epoch} steps per epoch; use a new --checkpoint")
    else:
        horizon, steps = epochs, epochs * per_epoch
        if steps < 1:
            raise UsageError(f"--lr-schedule {name}: the run takes no optimizer steps (too few samples per batch)")
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=0.0)
    if ck is not None:
        try:
            scheduler.load_state_dict(dict(ck[KEY]["state"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"--resume: {checkpoint}'s lr_schedule state is unreadable ({exc})") from None
    return RunSchedule(name, opt, scheduler, horizon, steps)
