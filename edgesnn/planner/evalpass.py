"""Peak memory of the evaluation pass that ``edgesnn train`` runs after every epoch.

:func:`edgesnn.training.loop.evaluate` runs the model under ``torch.no_grad()`` on batches of
``eval_batch`` held-out samples (``EVAL_BATCH_SIZE`` = 256 unless ``--eval-batch`` says
otherwise). Nothing is saved for backward, so each layer's input is freed as soon as its output
exists; the transient is the largest ``input + output + workspace`` over the layers (all
``[T, B, ...]`` tensors, B the evaluation batch). What the replay counts, in bytes:

* the evaluation batch: inputs ``B x sample`` (activation dtype; ``T x B x sample`` for event data)
  and int64 targets ``B x 8``;
* the first layer's expand-and-copy of the input over T (``T x B x sample``), as in training
  (:meth:`~edgesnn.planner.memory_model.ChainModel.input_copy_bytes`: none for event data, nor
  for a ``torch`` / ``reference`` node fed the input, which reads it step by step, nor for a node
  on the Numba kernels, which read its one step at every step);
* per layer: its output, and the transient it allocates under ``no_grad`` beside its input and
  output (:func:`eval_option_cost` for the spiking layers; a stateless layer's training private
  bytes and workspace, a conservative bound);
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

import torch

from ..nn import RevLIF
from .memory_model import ChainModel, Cost, Layer, node_as, option_cost, resolved_backend

__all__ = ["eval_option_cost", "no_grad_cost", "eval_forward_peak", "eval_dynamic_peak", "eval_lines"]


def eval_option_cost(layer: Layer, option: str, dtype_bytes: int, T: int) -> Cost:
    """Bytes a spiking layer allocates under ``no_grad`` beside its input and output (a :class:`Cost`).

    Nothing is saved, so what it allocates lives only while the layer runs. What the kernels
    allocate (``n`` neurons per sample, ``db`` bytes per activation element):

    * RevLIF on ``numba`` / ``cuda`` (:func:`edgesnn.kernels.numba_revlif.revlif_forward`): the
      initial state ``v0`` and ``v_T`` (``[B, n]`` each) and, in exact mode, the packed bits
      ``uint8 [ceil(T/8), B, n]`` (float mode: int32 spike counts ``[B, n]``); the input is
      quantized inside the kernel.
    * RevLIF on ``torch`` (:func:`edgesnn.functional.revlif_autograd.torch_forward`), exact mode:
      ``v0``, then ``quantize_input`` holds 3 input-sized temporaries before the output exists
      (counted as the output + 2 x input), after which the quantized input, the output, the bits
      and 8 ``[B, n]`` states and per-step temporaries are live (peak RSS of ``evaluate`` on the
      16,32 conv net, torch backend, B = 256: 6.3 and 7.5 of them at T = 1 and 2; the quantize
      phase exactly at T = 8: 1059 MiB); the larger of the two at ``T``. Float mode: int32 counts
      and ~10 per-step temporaries.
    * LIF (every backend) and the ``reference`` loops: the training step's saved and workspace
      bytes (a bound: LIF's is exact against measurement on ``numba``).

    Returns bytes as a :class:`Cost` (``T`` only picks between the torch exact-mode phases).
    """
    kind = option.split(":", 1)[0]
    n = layer.in_elems
    db = dtype_bytes
    mod = layer.module
    if kind == "revlif":
        probe = node_as(mod, RevLIF)
        backend = resolved_backend(probe, torch.float64 if db == 8 else torch.float32)
        exact = probe.params.mode == "exact"
        if backend in ("numba", "cuda"):
            return Cost(sample=2 * n * db, packed=n) if exact else Cost(sample=2 * n * db + 4 * n)
        if backend == "torch":
            if not exact:
                return Cost(sample=10 * n * db + 4 * n)
            quantize = Cost(step=2 * n * db, sample=n * db)
            loop = Cost(step=n * db, sample=8 * n * db, packed=n)
            return max(quantize, loop, key=lambda c: c.per_sample(T))
    _, _, private, work, _ = option_cost(layer, option, db)
    return private + work


def no_grad_cost(layer: Layer, option: str, dtype_bytes: int, T: int) -> Cost:
    """Bytes a layer allocates beside its input and output when it records no graph (under
    ``no_grad``, or before the first layer that records: :meth:`ChainModel.records`), as a :class:`Cost`:
    :func:`eval_option_cost` for a spiking layer under ``option``, a stateless layer's training
    private bytes and workspace otherwise (a conservative bound). Nothing is saved: it lives only
    while the layer runs."""
    if layer.spiking is not None:
        return eval_option_cost(layer, option, dtype_bytes, T)
    return layer.private + layer.work


def _events(chain: ChainModel, options: Sequence[str], T: int, B: int) -> List[int]:
    """Live bytes after each allocation of one ``no_grad`` forward at batch ``B``."""
    db = chain.dtype_bytes
    size = lambda per_step: int(round(T * B * per_step))  # noqa: E731  [T, B, ...] tensor bytes
    data = B * db * math.prod(chain.in_shape) * (T if chain.events else 1) + 8 * B  # inputs and int64 targets
    live = {"data": data, 0: size(chain.input_copy_bytes(options))}
    events = [sum(live.values())]
    for j, L in enumerate(chain.layers):
        if L.view:
            continue
        extra = no_grad_cost(L, options[L.spiking] if L.spiking is not None else "", db, T)
        live[chain.out_edge[j]] = size(chain.edge_bytes[chain.out_edge[j]])
        events.append(sum(live.values()) + extra.bytes(T, B))
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
