"""Peak memory of the evaluation pass that ``edgesnn train`` runs after every epoch.

:func:`edgesnn.training.loop.evaluate` runs the model under ``torch.no_grad()`` on batches of
``eval_batch`` held-out samples (``EVAL_BATCH_SIZE`` = 256 unless ``--eval-batch`` says
otherwise). Nothing is saved for backward, so each layer's input is freed as soon as its output
exists; the transient is the largest ``input + output + workspace`` over the layers (all
``[T, B, ...]`` tensors, B the evaluation batch). What the replay counts, in bytes:

* the evaluation batch: inputs ``B x sample`` (activation dtype) and int64 targets ``B x 8``;
* the first layer's expand-and-copy of the input over T (``T x B x sample``), as in training;
* per layer: its output, and what it would save or use as workspace in training (kept as a
  transient of that layer: a conservative bound for kernels that skip them under no_grad);
* the head: mean logits ``B x classes x 4`` and the argmax ``B x 8``;
* the parameter gradients of the last training step (``4 x params``): ``zero_grad`` runs at the
  start of the next step, so they are still allocated while the model is evaluated.

Parameters, optimizer state, buffers and the runtime are resident (the caller adds them), like
the dataset. Every term is linear in B, so the largest evaluation batch under a limit is closed
form (:func:`eval_lines`).
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

from .memory_model import ChainModel, option_cost

__all__ = ["eval_forward_peak", "eval_dynamic_peak", "eval_lines"]


def _events(chain: ChainModel, options: Sequence[str], T: int, B: int) -> List[int]:
    """Live bytes after each allocation of one ``no_grad`` forward at batch ``B``."""
    db = chain.dtype_bytes
    size = lambda per_step: int(round(T * B * per_step))  # noqa: E731  [T, B, ...] tensor bytes
    live = {"data": B * db * math.prod(chain.in_shape) + 8 * B, 0: size(chain.edge_bytes[0])}
    events = [sum(live.values())]
    for j, L in enumerate(chain.layers):
        if L.view:
            continue
        if L.spiking is not None:
            _, _, private, work, _ = option_cost(L, options[L.spiking], db)
        else:
            private, work = L.private, L.work
        live[chain.out_edge[j]] = size(chain.edge_bytes[chain.out_edge[j]])
        events.append(sum(live.values()) + private.bytes(T, B) + work.bytes(T, B))
        live.pop(chain.in_edge[j], None)
    live["head"] = B * (4 * chain.num_classes + 8)  # mean logits and argmax
    events.append(sum(live.values()))
    return events


def eval_forward_peak(chain: ChainModel, options: Sequence[str], T: int, B: int) -> int:
    """Largest live bytes of one ``no_grad`` forward at batch ``B`` (batch, activations, workspace).

    Args:
        chain: the model. options: one neuron option per spiking layer.
        T: time steps. B: evaluation batch (samples).

    Returns:
        bytes, without parameters and parameter gradients (0 when ``B < 1``: no evaluation).
    """
    chain._check(options)
    return int(max(_events(chain, options, T, B))) if B >= 1 else 0


def eval_dynamic_peak(chain: ChainModel, options: Sequence[str], T: int, B: int) -> int:
    """The evaluation pass's peak beside the resident memory: forward peak + parameter gradients (bytes)."""
    if B < 1:
        return 0
    return eval_forward_peak(chain, options, T, B) + 4 * chain.params


def eval_lines(chain: ChainModel, options: Sequence[str], T: int) -> List[Tuple[int, int]]:
    """The pass's live totals (parameter gradients included) as lines ``a * B + c`` in bytes.

    ``eval_dynamic_peak(B) = max(a * B + c)``; :func:`edgesnn.planner.peak.largest_batch` gives
    the largest evaluation batch under a byte limit.
    """
    chain._check(options)
    grads = 4 * chain.params
    e1, e2 = _events(chain, options, T, 1), _events(chain, options, T, 2)
    return [(b - a, 2 * a - b + grads) for a, b in zip(e1, e2)]
