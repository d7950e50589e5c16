"""Peak memory of a training step, by replaying the step's allocations storage by storage.

The step is ``zero_grad(set_to_none=True)``; forward; loss; backward; ``optimizer.step()``. The
replay follows what PyTorch does on the CPU:

* forward: each layer allocates its output (unless it is a view) and what it saves; its input is
  freed when no layer saved it. The expand-and-copy of the input happens in the first layer
  (not in a ``torch`` / ``reference`` spiking node, which reads the expanded input step by step,
  nor in a node on the Numba kernels, which read its one step at every step); an
  event input (``ChainModel(events=True)``) is ``[T, B, ...]`` already and is not copied. (One
  sample's expanded view reshapes without a copy, so its *saved* bytes are one step's,
  :attr:`Cost.repeat`; the replay keeps the copy's bytes there, a few KiB at most above the
  RSS, so that every event stays linear in B.) Layers before the first one with a trainable
  parameter record no graph (:meth:`ChainModel.records`): they save nothing and have no
  backward, and what they would save is a forward temporary (as under ``no_grad``:
  :func:`~edgesnn.planner.evalpass.no_grad_cost`).
* backward (reverse order): a layer that records allocates its input gradient (not the first
  one: its input needs none) and its parameter gradients (kept until the optimizer step); the
  output gradient is freed after it, and each saved storage is freed after the last layer that
  saved it has run.
* optimizer step: all gradients and states live; Adam's ``foreach`` update adds about one
  parameter-sized temporary.
* ``accumulate=True``: a later micro-batch of a step (``edgesnn train --micro-batch``): every
  parameter gradient is already resident from the forward on, and each layer's new parameter
  gradient is a temporary added into it.

The result is the *dynamic* peak (activations, gradients, temporaries); the caller adds
parameters, optimizer state and the runtime's own overhead. Predicting peak RSS with this needs
an allocator that returns freed blocks to the OS: the planner's measurements pin glibc's
``M_MMAP_THRESHOLD`` (see :func:`edgesnn.planner.runtime.lean_allocator`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from .costs import ZERO
from .evalpass import no_grad_cost
from .memory_model import ChainModel, option_cost, placeholder_cost

__all__ = ["StepPeak", "simulate_step", "peak_lines", "largest_batch"]


@dataclass(frozen=True)
class StepPeak:
    """Bytes of one training step (all at the given T and B).

    Attributes:
        activations: everything saved for backward at the end of the forward.
        dynamic_peak: the largest live total of activations + gradients + temporaries + the
            data batch (parameter gradients included, parameters and optimizer state not).
        phase: where the peak happens (``"forward"``, ``"backward"`` or ``"step"``).
    """

    activations: int
    dynamic_peak: int
    phase: str
    events: Tuple[int, ...] = ()


def simulate_step(chain: ChainModel, options: Sequence[str], T: int, B: int, optimizer: str = "adam",
                  accumulate: bool = False) -> StepPeak:
    """Replay one training step of ``chain`` with one neuron option per spiking layer (``B``
    samples; ``accumulate``: a micro-batch after the first, gradients added into resident ones)."""
    chain._check(options)
    db = chain.dtype_bytes
    layers = chain.layers
    size = lambda per_step: int(round(T * B * per_step))  # noqa: E731  [T, B, ...] tensor bytes

    # which layers save each edge; options decide the spiking layers'
    savers: Dict[int, list] = {}
    priv: Dict[int, int] = {}
    work: Dict[int, int] = {}
    bwork: Dict[int, int] = {}
    for j, L in enumerate(layers):
        if not chain.records(j):  # no graph: nothing saved, no backward; its temporaries live in its forward
            si, so, p, bw = False, False, ZERO, ZERO
            w = no_grad_cost(L, options[L.spiking] if L.spiking is not None else "", db, T)
        elif L.spiking is not None:
            si, so, p, w, bw = option_cost(L, options[L.spiking], db)
            p = p + placeholder_cost(L, options[L.spiking], db)
        else:
            si, so, p, w, bw = L.saves_input, L.saves_output, L.private, L.work, L.bwork
        if si:
            savers.setdefault(chain.in_edge[j], []).append(j)
        if so:
            savers.setdefault(chain.out_edge[j], []).append(j)
        priv[j] = p.bytes(T, B)
        work[j] = w.bytes(T, B)
        bwork[j] = bw.bytes(T, B)

    data = B * db * _prod(chain.in_shape) * (T if chain.events else 1) + 8 * B  # the input batch and int64 targets
    live: Dict[object, int] = {"data": data, 0: size(chain.input_copy_bytes(options))}
    if accumulate:  # the earlier parts' parameter gradients
        live.update({("pgrad", j): 4 * L.params for j, L in enumerate(layers) if L.params})
    peak, phase = sum(live.values()), "forward"
    events: List[int] = [peak]

    def bump(extra: int, name: str) -> None:
        nonlocal peak, phase
        total = sum(live.values()) + extra
        events.append(total)
        if total > peak:
            peak, phase = total, name

    for j, L in enumerate(layers):
        e_in, e_out = chain.in_edge[j], chain.out_edge[j]
        if not L.view:
            live[e_out] = size(chain.edge_bytes[e_out])
        if priv[j]:
            live[("priv", j)] = priv[j]
        bump(work[j], "forward")
        if not L.view and e_in not in savers:
            live.pop(e_in, None)
    # head: mean over T -> logits [B, classes]; the loss saves log_softmax; body output freed
    head = B * (4 * chain.num_classes) * 2 + 4
    live[("head",)] = head
    bump(0, "forward")
    last = chain.out_edge[-1] if layers else 0
    if last not in savers:
        live.pop(last, None)
    activations = chain.activation_cost(options).bytes(T, B)

    # backward
    grad = size(chain.edge_bytes[last])
    live[("grad",)] = grad
    bump(0, "backward")
    for j in range(len(layers) - 1, -1, -1):
        L = layers[j]
        if L.view or not chain.records(j):
            continue
        e_in = chain.in_edge[j]
        # the first layer that records has an input without a gradient: no input gradient
        g_in = 0 if j == chain.first_recording else size(chain.edge_bytes[e_in])
        added = 0
        if L.params and accumulate:
            added = 4 * L.params  # the new gradient, before it is added into the resident one
        elif L.params:
            live[("pgrad", j)] = 4 * L.params
        live[("gin",)] = g_in
        bump(bwork[j] + added, "backward")
        live.pop(("priv", j), None)
        for e, users in list(savers.items()):
            if e in live and isinstance(e, int) and min(users) >= j:
                live.pop(e)
        live[("grad",)] = g_in
        live.pop(("gin",))
    live.pop(("grad",), None)
    live.pop(("head",), None)
    # optimizer step: Adam's foreach update keeps ~1 parameter-sized temporary
    tmp = 4 * chain.params if optimizer in ("adam", "adamw") else 0
    bump(tmp, "step")
    return StepPeak(activations=int(activations), dynamic_peak=int(peak), phase=phase, events=tuple(events))


def peak_lines(chain: ChainModel, options: Sequence[str], T: int, optimizer: str = "adam") -> List[Tuple[int, int]]:
    """The step's live totals as lines ``a * B + c`` (bytes): every allocation is linear in B.

    ``dynamic_peak(B) = max(a * B + c)``, so the largest B under a byte limit L is the closed form
    ``min over lines of floor((L - c) / a)``.
    """
    e1 = simulate_step(chain, options, T, 1, optimizer).events
    e2 = simulate_step(chain, options, T, 2, optimizer).events
    return [(b - a, 2 * a - b) for a, b in zip(e1, e2)]


def largest_batch(lines: Sequence[Tuple[int, int]], limit: int) -> int:
    """Largest B with ``a * B + c <= limit`` for every line (0 when B = 1 does not fit)."""
    best = None
    for a, c in lines:
        if c > limit:
            return 0
        if a > 0:
            b = (limit - c) // a
            best = b if best is None else min(best, b)
    return int(best) if best is not None else 2**31


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
