"""The learning-rate schedules ``--lr-schedule`` names, shared by ``edgesnn train`` and the device
runner ``edgesnn-device`` (standard library only: the runner imports it without torch).

* ``constant``: every optimizer step at the run's learning rate.
* ``cosine``: step ``k`` of a horizon of ``K`` steps at ``lr * 0.5 * (1 + cos(pi * k / K))``, what
  ``torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=K, eta_min=0)`` gives stepped once per batch.

How each tool fixes and records the horizon: :mod:`edgesnn.training.lr_schedule` (host training)
and :mod:`edgesnn.export.run_schedule` (device runner).
"""

from __future__ import annotations

import math
from typing import Any

from .errors import UsageError

__all__ = ["SCHEDULES", "KEY", "check_schedule_name", "cosine_rate"]

#: The accepted ``--lr-schedule`` values.
SCHEDULES = ("constant", "cosine")

#: The key under which a run records a non-constant schedule (checkpoint, state settings, reports).
KEY = "lr_schedule"


def check_schedule_name(name: Any) -> str:
    """``name`` if it is a known schedule, else a one-line :class:`UsageError` naming ``--lr-schedule``."""
    if not isinstance(name, str) or name not in SCHEDULES:
        raise UsageError(f"--lr-schedule: expected one of {', '.join(SCHEDULES)}, got {name!r}")
    return name


def cosine_rate(base: float, k: int, steps: int) -> float:
    """The cosine schedule's rate at optimizer step ``k`` (0-based) of a ``steps``-step horizon
    (the optimizer's learning-rate unit, like ``base``)."""
    return base * 0.5 * (1.0 + math.cos(math.pi * k / steps))
