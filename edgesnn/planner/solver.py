"""Choose LIF or RevLIF (and its group count) per spiking layer under a byte budget.

Saved bytes are additive over spiking layers (:meth:`ChainModel.layer_option_cost`), so the choice
is a multiple-choice knapsack: minimise the predicted node time subject to the bytes. It is solved
exactly by a dynamic programme over Pareto frontiers of (bytes, time) along the layer chain; a
50-layer chain takes milliseconds. The knapsack capacity is the budget minus the resident memory
(runtime, parameters, optimizer state), the choice-independent saved bytes and the step's
transient (gradients, temporaries) taken from the replay (:mod:`~edgesnn.planner.peak`); the
chosen plan is replayed and, if its transient was larger than assumed, the capacity is lowered by
the excess and the knapsack solved again. The largest batch for a fixed choice is closed form
because every allocation is linear in B (:func:`~edgesnn.planner.peak.largest_batch`).

Time model (relative; used to rank choices, not as a promise): one forward+backward of a node
costs ``NS_PER_NEURON_STEP_BY_BACKEND[backend][kind]`` nanoseconds per neuron and time step,
measured on the 2-core x86 host (32 GB/s) for the backend the layer runs, and scaled by
``32 / device.bandwidth_gbs``. RevLIF costs about
twice LIF (recompute in backward, quantization); each extra group adds a little per-step work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ..models import parse_neuron_spec
from .memory_model import ChainModel
from .peak import largest_batch, peak_lines, simulate_step

__all__ = ["NS_PER_NEURON_STEP", "NS_PER_NEURON_STEP_BY_BACKEND", "Solution", "PlanningError", "candidates", "node_time_s", "solve_choice",
           "brute_force", "static_resident", "max_batch", "plan_model", "predict"]

#: Measured forward+backward time per neuron-step (ns) on the 2-core x86 host, per backend:
#: torch at T = 8-32; numba from tools/bench_kernels.py (b), layer [64, 16, 4096], 2 threads
#: (LIF 8.8 ms, RevLIF 9.8 ms for 4.19M neuron-steps in the run whose torch LIF took 40.6 ms).
NS_PER_NEURON_STEP_BY_BACKEND = {
    "torch": {"lif": 12.5, "revlif": 26.0},
    "reference": {"lif": 40.0, "revlif": 80.0},
    "numba": {"lif": 2.1, "revlif": 2.3},
}
#: The default backend's figures (``auto`` runs ``numba`` on CPU float32).
NS_PER_NEURON_STEP = NS_PER_NEURON_STEP_BY_BACKEND["numba"]
GROUP_COST = 0.02  # relative extra per group beyond 2 (more, smaller per-group operations)
HOST_BANDWIDTH_GBS = 32.0


class PlanningError(ValueError):
    """No choice fits the budget; the message says the minimum bytes and what to change."""


@dataclass(frozen=True)
class Solution:
    """Result of :func:`solve_choice` at fixed T and B (bytes are saved activation bytes)."""

    options: Tuple[str, ...]
    option_bytes: Tuple[int, ...]
    activation_bytes: int
    time_s: float


def node_time_s(option: str, neuron_steps: float, bandwidth_gbs: float = HOST_BANDWIDTH_GBS,
                backend: str = "numba") -> float:
    """Predicted forward+backward seconds of one node over ``neuron_steps`` (= T x B x neurons) on
    ``backend`` (``numba``, ``torch``, ``reference``; ``cuda`` is timed as ``numba``)."""
    kind, groups = parse_neuron_spec(option)
    table = NS_PER_NEURON_STEP_BY_BACKEND.get(backend, NS_PER_NEURON_STEP)
    ns = table[kind] * (1.0 + GROUP_COST * max(0, groups - 2))
    return ns * 1e-9 * neuron_steps * HOST_BANDWIDTH_GBS / bandwidth_gbs


def _layer_backend(chain: ChainModel, i: int) -> str:
    """The backend spiking layer ``i`` runs on (its module's ``backend`` resolved for CPU float32)."""
    from .memory_model import resolved_backend

    return resolved_backend(getattr(chain.spiking[i], "module", None))


def candidates(chain: ChainModel, kinds: Sequence[str] = ("lif", "revlif"), groups: Sequence[int] = (2,)) -> List[List[str]]:
    """Options per spiking layer: ``"lif"`` and ``"revlif:G"`` for each G that divides its channels."""
    out = []
    for L in chain.spiking:
        opts = ["lif"] if "lif" in kinds else []
        if "revlif" in kinds:
            opts += [f"revlif:{g}" for g in groups if g >= 2 and L.channels % g == 0]
        if not opts:
            raise PlanningError(f"groups: none of {list(groups)} divides the {L.channels} channels of {L.name}, "
                                "and LIF is not allowed; allow 'lif' or give another --groups")
        out.append(opts)
    return out


def solve_choice(costs: Sequence[Sequence[Tuple[int, float]]], capacity: int) -> Optional[Tuple[List[int], int, float]]:
    """Exact multiple-choice knapsack: pick one ``(bytes, time)`` per layer, bytes <= capacity, least time.

    Returns ``(option index per layer, total bytes, total time)`` or None when nothing fits. Ties
    in time go to fewer bytes. Keeps, after each layer, the Pareto frontier of partial choices.
    """
    frontier: List[Tuple[int, float, int, int]] = [(0, 0.0, -1, -1)]  # bytes, time, parent, option
    history: List[List[Tuple[int, float, int, int]]] = []
    for layer in costs:
        cand = []
        for pi, (b, t, _, _) in enumerate(frontier):
            for oi, (ob, ot) in enumerate(layer):
                nb = b + ob
                if nb <= capacity:
                    cand.append((nb, t + ot, pi, oi))
        if not cand:
            return None
        cand.sort(key=lambda c: (c[0], c[1]))
        pruned, best = [], math.inf
        for c in cand:
            if c[1] < best - 1e-15:
                pruned.append(c)
                best = c[1]
        history.append(pruned)
        frontier = pruned
    end = min(range(len(frontier)), key=lambda i: (frontier[i][1], frontier[i][0]))
    total_b, total_t = frontier[end][0], frontier[end][1]
    choice: List[int] = []
    idx = end
    for level in range(len(history) - 1, -1, -1):
        _, _, parent, opt = history[level][idx]
        choice.append(opt)
        idx = parent
    return choice[::-1], total_b, total_t


def brute_force(costs: Sequence[Sequence[Tuple[int, float]]], capacity: int) -> Optional[Tuple[List[int], int, float]]:
    """Enumerate every choice (for tests on small chains)."""
    import itertools

    best = None
    for combo in itertools.product(*[range(len(c)) for c in costs]):
        b = sum(costs[i][o][0] for i, o in enumerate(combo))
        t = sum(costs[i][o][1] for i, o in enumerate(combo))
        if b <= capacity and (best is None or (t, b) < (best[2], best[1])):
            best = (list(combo), b, t)
    return best


def static_resident(chain: ChainModel, runtime_overhead: int, optimizer: str) -> int:
    """Bytes held through the whole step: runtime + parameters + optimizer state + buffers.

    Parameter gradients are not included: the replay allocates them during backward.
    """
    return int(runtime_overhead + chain.static_bytes(optimizer) - 4 * chain.params)


def _least_memory(chain: ChainModel, opts, T: int) -> List[str]:
    return [min(layer, key=lambda o: (chain.layer_option_cost(i, o).per_sample(T), o)) for i, layer in enumerate(opts)]


def _least_peak(chain: ChainModel, opts, T: int, B: int, runtime_overhead: int, optimizer: str) -> List[str]:
    """The per-layer choice with the least predicted **peak** (not the least saved bytes: a RevLIF
    saves bytes but its backward workspace can raise the peak above an all-LIF step).

    The candidates: the least-saved-bytes choice and each uniform choice (every layer LIF, every
    layer RevLIF with G groups); the DP then trades time within the budget.
    """
    starts = [_least_memory(chain, opts, T)]
    for o in {o for layer in opts for o in layer}:
        if all(o in layer for layer in opts):
            starts.append([o] * len(opts))
    best = min(starts, key=lambda ch: _peak(chain, ch, T, B, runtime_overhead, optimizer))
    return best


def max_batch(chain: ChainModel, options: Sequence[str], T: int, budget: int, runtime_overhead: int,
              optimizer: str = "adam") -> int:
    """Largest B whose predicted peak for ``options`` fits ``budget`` (closed form; 0 if B = 1 does not)."""
    limit = budget - static_resident(chain, runtime_overhead, optimizer)
    return largest_batch(peak_lines(chain, options, T, optimizer), limit)


def _peak(chain, options, T, B, runtime_overhead, optimizer) -> int:
    return static_resident(chain, runtime_overhead, optimizer) + simulate_step(chain, options, T, B, optimizer).dynamic_peak


def _impossible(chain, opts, T, B, budget, runtime_overhead, optimizer) -> PlanningError:
    least = _least_peak(chain, opts, T, B, runtime_overhead, optimizer)
    need = _peak(chain, least, T, B, runtime_overhead, optimizer)
    bmax = max_batch(chain, least, T, budget, runtime_overhead, optimizer)
    tmax, lo, hi = 0, 1, max(1, T)
    while lo <= hi:  # largest T that fits at batch B (bytes grow with T)
        mid = (lo + hi) // 2
        if _peak(chain, _least_peak(chain, opts, mid, B, runtime_overhead, optimizer), mid, B, runtime_overhead,
                 optimizer) <= budget:
            tmax, lo = mid, mid + 1
        else:
            hi = mid - 1
    hints = []
    if bmax >= 1:
        hints.append(f"use --batch {bmax} or less")
    if tmax >= 1:
        hints.append(f"use --timesteps {tmax} or less")
    hints.append("raise --budget, pick a device with more memory or a smaller model")
    return PlanningError(
        f"budget: {budget} bytes ({budget / 2**30:.2f} GiB) is too small for T={T}, batch={B}: even the "
        f"least-peak choice of neurons needs {need} bytes ({need / 2**30:.2f} GiB) at its peak, "
        f"including {runtime_overhead} bytes of runtime overhead and {chain.static_bytes(optimizer)} bytes of "
        f"parameters, gradients and optimizer state; " + "; ".join(hints))


def plan_model(chain: ChainModel, T: int, budget: int, runtime_overhead: int, batch: Optional[int] = None,
               bandwidth_gbs: float = HOST_BANDWIDTH_GBS, optimizer: str = "adam",
               kinds: Sequence[str] = ("lif", "revlif"), groups: Sequence[int] = (2,), max_batch_cap: int = 1024) -> dict:
    """Plan one training configuration.

    Args:
        chain: the model's :class:`ChainModel`.
        T: time steps. budget: bytes the training process may hold at its peak (RSS).
        runtime_overhead: bytes of the process before its tensors (device profile).
        batch: batch size, or None for the largest that fits (at most ``max_batch_cap``).
        bandwidth_gbs: device bandwidth for the time model. optimizer: ``adam``, ``sgd``...
        kinds, groups: allowed neuron kinds and RevLIF group counts.

    Returns:
        dict with ``options``, ``batch``, ``activation_bytes``, ``peak_bytes`` (predicted peak
        RSS, at most ``budget``), ``time_s`` and the per-layer ``layer_bytes``.

    Raises:
        PlanningError: the budget cannot hold even the least-memory choice at batch 1 (or ``batch``).
    """
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"timesteps: expected an integer >= 1, got {T!r}")
    opts = candidates(chain, kinds, groups)
    if batch is None:
        least = _least_peak(chain, opts, T, 64, runtime_overhead, optimizer)
        B = min(max_batch(chain, least, T, budget, runtime_overhead, optimizer), max_batch_cap)
        if B >= 1:  # refine the least-peak choice at the batch found, then the batch again
            least = _least_peak(chain, opts, T, B, runtime_overhead, optimizer)
            B = min(max(B, max_batch(chain, least, T, budget, runtime_overhead, optimizer)), max_batch_cap)
        if B < 1:
            raise _impossible(chain, opts, T, 1, budget, runtime_overhead, optimizer)
    else:
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch: expected an integer >= 1 or 'auto', got {batch!r}")
        B = batch
        least = _least_peak(chain, opts, T, B, runtime_overhead, optimizer)
    if _peak(chain, least, T, B, runtime_overhead, optimizer) > budget:
        raise _impossible(chain, opts, T, B, budget, runtime_overhead, optimizer)
    costs = [[(chain.layer_option_cost(i, o).bytes(T, B),
               node_time_s(o, T * B * chain.spiking[i].in_elems, bandwidth_gbs, _layer_backend(chain, i)))
              for o in layer] for i, layer in enumerate(opts)]
    base = static_resident(chain, runtime_overhead, optimizer) + chain.fixed_cost().bytes(T, B)
    # transient = replayed peak - resident - saved bytes (gradients, temporaries); start from the
    # smaller of the two extreme choices and lower the capacity by any excess of the replayed plan
    transient = None
    fastest = [layer[min(range(len(layer)), key=lambda k: costs[i][k][1])] for i, layer in enumerate(opts)]
    for ch in (least, fastest):
        t = _peak(chain, ch, T, B, runtime_overhead, optimizer) - base \
            - sum(chain.layer_option_cost(i, o).bytes(T, B) for i, o in enumerate(ch))
        transient = t if transient is None else min(transient, t)
    capacity = budget - base - transient
    options = least
    for _ in range(16):
        sol = solve_choice(costs, capacity)
        if sol is None:
            break
        cand = [opts[i][k] for i, k in enumerate(sol[0])]
        over = _peak(chain, cand, T, B, runtime_overhead, optimizer) - budget
        if over <= 0:
            options = cand
            break
        capacity -= over
    return dict(options=list(options), batch=B, timesteps=T, budget_bytes=int(budget),
                **predict(chain, options, T, B, runtime_overhead, optimizer, bandwidth_gbs))


def predict(chain: ChainModel, options: Sequence[str], T: int, B: int, runtime_overhead: int, optimizer: str = "adam",
            bandwidth_gbs: float = HOST_BANDWIDTH_GBS) -> dict:
    """Predicted bytes and node time of one choice: activation, static, peak RSS (replayed step)."""
    step = simulate_step(chain, options, T, B, optimizer)
    time_s = sum(node_time_s(o, T * B * chain.spiking[i].in_elems, bandwidth_gbs, _layer_backend(chain, i))
                 for i, o in enumerate(options))
    return dict(activation_bytes=step.activations, static_bytes=chain.static_bytes(optimizer),
                runtime_overhead_bytes=int(runtime_overhead),
                peak_bytes=int(static_resident(chain, runtime_overhead, optimizer) + step.dynamic_peak),
                peak_phase=step.phase, time_s=time_s,
                layer_bytes=[chain.layer_option_cost(i, o).bytes(T, B) for i, o in enumerate(options)])
