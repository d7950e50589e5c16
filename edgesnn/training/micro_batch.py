"""Micro-batches: one optimizer step's batch computed a few samples at a time.

A board that holds the activations of 16 samples can still train with batch 64: the step's
forward and backward run on parts of at most ``micro_batch`` samples, each part's loss weighted
by its share of the batch, and the gradients add up in the parameters' ``.grad`` before the one
optimizer step. Without BatchNorm the gradient is the whole batch's (up to float rounding: the
sums are taken in another order). With BatchNorm each part is normalised with its own statistics
and updates the running statistics once, as gradient accumulation does in any PyTorch script.

Peak training memory is that of a batch of ``micro_batch`` samples: only one part's inputs,
activations and graph are alive at a time (the parameter gradients are resident either way).

* :func:`micro_batches`: the parts of a batch (the fewest, of near-equal sizes).
* :func:`effective_micro_batch`: the setting as stored (``None`` when it never splits a batch).
* :func:`check_micro_batch`: the setting checked in one line.
* :func:`accumulate_gradients`: forward and backward of one step's parts (under torchrun the
  training loop averages the gradients over the ranks once, after the last part).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import UsageError

__all__ = ["MIN_BATCHNORM_MICRO_BATCH", "smallest_micro_batch", "effective_micro_batch", "micro_batches", "largest_part",
           "check_micro_batch", "accumulate_gradients"]

#: With BatchNorm every part needs at least two samples. Splitting ``n >= 2`` samples into
#: ``ceil(n / m)`` near-equal parts guarantees that for ``m >= 3`` (``m = 2`` splits 3 as 2 + 1).
MIN_BATCHNORM_MICRO_BATCH = 3


def smallest_micro_batch(batchnorm: bool) -> int:
    """The smallest ``micro_batch`` a model takes: :data:`MIN_BATCHNORM_MICRO_BATCH` with BatchNorm, else 1."""
    return MIN_BATCHNORM_MICRO_BATCH if batchnorm else 1


def effective_micro_batch(micro_batch: Optional[int], batch_size: int) -> Optional[int]:
    """``micro_batch`` where it splits a batch of ``batch_size`` samples, else ``None``: at or above the
    batch every step is one part, exactly as without it. Checkpoints store and resumes compare this,
    so a no-op setting need not be repeated."""
    return None if micro_batch is None or micro_batch >= batch_size else micro_batch


def _part_count(n: int, micro_batch: Optional[int]) -> int:
    """How many parts :func:`micro_batches` makes of ``n`` samples: the fewest of at most ``micro_batch``."""
    return 1 if micro_batch is None or n <= micro_batch else -(-n // micro_batch)


def micro_batches(idx: torch.Tensor, micro_batch: Optional[int]) -> Tuple[torch.Tensor, ...]:
    """Split a batch's sample indices ``[n]`` into the fewest parts of at most ``micro_batch``
    samples, their sizes differing by at most one (``None``, or ``n <= micro_batch``: one part)."""
    parts = _part_count(len(idx), micro_batch)
    return (idx,) if parts == 1 else torch.tensor_split(idx, parts)


def largest_part(n: int, micro_batch: Optional[int]) -> int:
    """Samples in the largest part :func:`micro_batches` makes of a batch of ``n`` (part sizes
    differ by at most one: batch 177 in parts of at most 170 is 89 + 88)."""
    return -(-n // _part_count(n, micro_batch))


def check_micro_batch(micro_batch: Optional[int], batchnorm: bool, name: str = "micro_batch") -> Optional[int]:
    """``micro_batch`` (``None``: no splitting) as an integer >= 1, >= 3 with BatchNorm; else one line naming ``name``."""
    if micro_batch is None:
        return None
    if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1:
        raise UsageError(f"{name}: expected an integer >= 1, got {micro_batch!r}")
    if micro_batch < smallest_micro_batch(batchnorm):
        raise UsageError(f"{name}: BatchNorm needs at least {MIN_BATCHNORM_MICRO_BATCH} samples per micro-batch (so "
                         f"that every part of a batch holds two), got {micro_batch}; train without BatchNorm "
                         "(--no-batchnorm) for smaller parts")
    return micro_batch


def accumulate_gradients(
    net: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    parts: Sequence[torch.Tensor],
    load: Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]],
    zero_grad: Callable[[], None],
    check_loss: Callable[[float], None],
    weights: Optional[Sequence[torch.Tensor]] = None,
) -> float:
    """Forward and backward of one optimizer step whose batch is ``parts`` (int64 index tensors ``[n_k]``).

    ``load(part)`` gives ``(x, y)`` on the model's device. Each part's mean loss is weighted by
    its share of the batch, so the summed gradients are those of the batch's mean loss.
    ``zero_grad`` runs first, so the previous step's gradients are freed before this step's forward
    (as the planner's replay of a step assumes; one part: the gradients are bitwise those of one
    ``loss.backward()``); ``check_loss(value)`` runs before each backward (it raises to stop before
    any gradient of a non-finite loss is added). The gradients stay on this process: under torchrun
    the training loop averages them over the ranks after the last part, one all-reduce per step.

    ``weights`` (one float tensor ``[len(part)]`` per part): the step's loss is then the weighted sum
    ``sum_i w_i * loss_i`` over the batch's samples instead of their mean, and ``loss_fn`` must give
    the per-sample losses ``[len(part)]`` (``reduction="none"``). The training loop uses it for the
    one batch of an epoch that holds the samples :class:`~torch.utils.data.DistributedSampler` repeats
    to pad the epoch to a multiple of the ranks: they weigh 0.

    Returns the batch's mean loss (a float); with ``weights``, the weighted sum.
    """
    n = sum(len(p) for p in parts)
    whole = len(parts) == 1
    value = 0.0
    zero_grad()
    for k, part in enumerate(parts):
        x, y = load(part)
        loss = loss_fn(net(x), y)
        if weights is not None:
            loss = (loss * weights[k].to(device=loss.device, dtype=loss.dtype)).sum()
        part_value = float(loss.detach())
        check_loss(part_value)
        (loss if whole or weights is not None else loss * (len(part) / n)).backward()
        value += part_value if whole or weights is not None else part_value * (len(part) / n)
        x = y = loss = None  # this part's input and graph go before the next part's forward
    return value
