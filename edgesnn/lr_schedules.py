"""The learning rates and schedules ``--lr`` and ``--lr-schedule`` take, shared by ``edgesnn train``,
``edgesnn export`` and the device runner ``edgesnn-device`` (standard library only: the runner imports
it without torch).

* A rate is a number that float32 holds and does not round to 0 (:func:`is_float32_rate`): the
  parameters are float32, so ``1e-50`` would update nothing, silently.

* ``constant``: every optimizer step at the run's learning rate.
* ``cosine``: step ``k`` of a horizon of ``K`` steps at ``lr * 0.5 * (1 + cos(pi * k / K))``, what
  ``torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=K, eta_min=0)`` gives stepped once per batch.

How each tool fixes and records the horizon: :mod:`edgesnn.training.lr_schedule` (host training)
and :mod:`edgesnn.export.run_schedule` (device runner).
"""

from __future__ import annotations

import math
import numbers
import struct
from typing import Any

from .errors import UsageError
from .float32_range import FLOAT32_MAX

__all__ = ["SCHEDULES", "KEY", "check_schedule_name", "cosine_rate", "is_float32_rate", "RATE_RANGE",
           "ADAM_RATE_MAX", "ADAM_RATE_RANGE"]

#: What a learning rate must be, as the errors say it.
RATE_RANGE = "a number > 0 that float32 holds (1.4e-45 to 3.4e+38)"

#: The largest rate ``edgesnn train`` takes: its Adam (``beta1 = 0.9``) moves the first step by
#: ``lr / (1 - 0.9) = 10 x lr``, a float32 scalar of PyTorch's update (``--lr 1e38`` failed there
#: with a traceback: "value cannot be converted to type float without overflow").
ADAM_RATE_MAX = 3.4e37
ADAM_RATE_RANGE = ("a number > 0 that float32 holds, from 1.4e-45 to 3.4e+37 (Adam's first step is 10 x the rate, which "
                   "float32 must hold too)")


def is_float32_rate(v: object, most: float = FLOAT32_MAX) -> bool:
    """``v`` is a usable learning rate: a real number (not a bool), finite, > 0, at most ``most``
    (float32's largest by default) and not rounded to 0 as a float32 (``1e-50`` is; training would
    silently do nothing)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return False
    f = float(v)
    if not (math.isfinite(f) and 0 < f <= min(most, FLOAT32_MAX)):
        return False
    return struct.unpack("f", struct.pack("f", f))[0] > 0

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
