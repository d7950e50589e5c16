"""Optimizer steps per epoch of a planned batch on a built-in dataset, and the note when they are few.

``edgesnn plan --batch auto`` picks the largest batch that fits the budget (at most ``--max-batch``).
On a small dataset that can leave an epoch with a handful of optimizer steps (digits, 1,348 training
samples, at batch 1,024: 2 steps), which trains poorly per epoch. The planner still maximises the
batch; :func:`few_steps_note` says so in one line when an epoch takes fewer than
:data:`MIN_STEPS_PER_EPOCH` steps, with the ``--max-batch`` that keeps that many, and that ``edgesnn
train --plan`` accepts a smaller ``--batch-size`` (the plan's choices fit every smaller batch).

Steps are counted as ``edgesnn train`` takes them in one process
(:func:`edgesnn.training.lr_schedule.steps_per_epoch`: a last batch of one sample is skipped with
BatchNorm); under ``torchrun`` each rank takes its share, so an epoch has fewer.
"""

from __future__ import annotations

from typing import Optional

from ..training.lr_schedule import steps_per_epoch
from .datasets import DATASET_SPECS

__all__ = ["MIN_STEPS_PER_EPOCH", "largest_batch_with_steps", "few_steps_note"]

#: Fewer optimizer steps per epoch than this at the planned batch: :func:`few_steps_note` speaks.
MIN_STEPS_PER_EPOCH = 10


def largest_batch_with_steps(n_train: int, steps: int, batchnorm: bool, cap: int) -> int:
    """The largest batch (samples, at most ``cap``) whose epoch over ``n_train`` training samples
    takes at least ``steps`` optimizer steps in one process (0 when not even batch 1 does).

    Steps fall as the batch grows (for ``n_train >= 2``), so the answer is bisected."""
    lo, hi = 0, cap
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if steps_per_epoch(n_train, 1, mid, batchnorm) >= steps else (lo, mid - 1)
    return lo


def few_steps_note(dataset: Optional[str], batch: int, batchnorm: bool, memopt: bool = False) -> Optional[str]:
    """One line when ``batch`` (samples) leaves an epoch of built-in ``dataset`` with fewer than
    :data:`MIN_STEPS_PER_EPOCH` optimizer steps, naming the count and the remedies; ``None``
    otherwise (and for custom data, whose sample count the plan does not know). ``memopt``: the
    remedy for ``edgesnn plan --memopt``, whose report ``edgesnn train --plan`` refuses (train with
    ``--memopt --batch-size``)."""
    spec = DATASET_SPECS.get(dataset) if isinstance(dataset, str) else None
    if spec is None:
        return None
    n = spec.train_samples
    steps = steps_per_epoch(n, 1, batch, batchnorm)
    if steps >= MIN_STEPS_PER_EPOCH:
        return None
    cap = largest_batch_with_steps(n, MIN_STEPS_PER_EPOCH, batchnorm, batch)
    ok = cap >= (2 if batchnorm else 1)  # BatchNorm: batches of at least 2 (--max-batch and --batch-size alike)
    smaller = f"--batch-size {cap} or less" if ok else "a smaller --batch-size"
    train = (f"train with --memopt {smaller}" if memopt else
             f"keep this plan and train with {smaller} (edgesnn train --plan accepts a batch below the plan's)")
    fix = f"plan with --max-batch {cap} ({steps_per_epoch(n, 1, cap, batchnorm)} steps), or " if ok else ""
    return (f"batch {batch} leaves {steps} optimizer step{'s' if steps != 1 else ''} per epoch on the {n} training "
            f"samples of {spec.name} (fewer than {MIN_STEPS_PER_EPOCH}): {fix}{train}")
