"""The arguments of :func:`edgesnn.training.train` beside its config, checked before anything runs.

A flag passed as a string or a number means nothing definite (``force="no"`` was true and overwrote
a checkpoint, ``resume="no"`` resumed), and ``device=0`` (PyTorch reads it as ``cuda:0``) trained on
the CPU: each is one line naming the argument instead.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import torch

from ..errors import UsageError
from ..functional.checks import check_flag

__all__ = ["check_train_call"]


def check_train_call(
    *, resume: Any, progress: Any, force: Any, sync_batchnorm: Any, device: Any, log: Any,
    before_training: Optional[Callable[[], None]], planned_model: Optional[Dict], eval_batch_size: Any,
    max_steps: Any,
) -> Tuple[bool, bool, bool, bool]:
    """``(resume, progress, force, sync_batchnorm)`` as bools; raises one line naming a bad argument:
    flags must be bools, ``device`` a name (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``), a
    ``torch.device`` or ``None`` (the CPU), ``log`` and ``before_training`` callables, ``planned_model``
    a dict (a plan's ``model`` config), ``eval_batch_size`` / ``max_steps`` integers >= 1."""
    flags = tuple(check_flag(v, name) for v, name in ((resume, "resume"), (progress, "progress"), (force, "force"),
                                                      (sync_batchnorm, "sync_batchnorm")))
    if device is not None and not isinstance(device, (str, torch.device)):
        raise UsageError(f"device: expected 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device, got {device!r:.80}")
    if not callable(log):
        raise TypeError(f"log: expected a callable taking one str (e.g. print), got {log!r:.80}")
    if before_training is not None and not callable(before_training):
        raise TypeError(f"before_training: expected a callable taking no arguments, got {before_training!r:.80}")
    if planned_model is not None and not isinstance(planned_model, dict):
        raise TypeError(f"planned_model: expected a plan's model config (a dict, plan['model']), got "
                        f"{type(planned_model).__name__}")
    if isinstance(eval_batch_size, bool) or not isinstance(eval_batch_size, int) or eval_batch_size < 1:
        raise UsageError(f"eval_batch_size: expected an integer >= 1, got {eval_batch_size!r}")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise UsageError(f"max_steps: expected an integer >= 1, got {max_steps!r}")
    return flags  # type: ignore[return-value]
