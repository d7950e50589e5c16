"""Choose LIF or RevLIF (and its group count) per spiking layer under a byte budget.

Saved bytes are additive over spiking layers (:meth:`ChainModel.layer_option_cost`), so the choice
is a multiple-choice knapsack: minimise the predicted node time subject to the bytes. The
candidates are the choices whose saved bytes fit the budget minus the resident memory (runtime,
parameters, optimizer state, dataset) and the choice-independent saved bytes: all of them up to
:data:`~.choice_search.EXHAUSTIVE_CHOICES` combinations, beyond that those no other beats in both
bytes and time (a dynamic programme over Pareto frontiers along the layer chain,
:mod:`~edgesnn.planner.knapsack`: milliseconds for 50 layers). The peak itself is a replay's
maximum (:mod:`~edgesnn.planner.peak`: the step's gradients and temporaries, or the evaluation
pass, depend on the choice too), so the candidates are replayed fastest first and the first whose
peak fits is taken. The largest batch for a fixed choice is closed form
because every allocation is linear in B (:func:`~edgesnn.planner.peak.largest_batch`).

Beside the step, a training run holds its dataset and evaluates held-out data after every epoch
(:class:`Extras`): the predicted peak is ``resident + dataset + max(step, evaluation pass)``, where
the evaluation pass (:mod:`~edgesnn.planner.evalpass`) runs at its own batch, so it adds one
constant line to the step's lines and the batch stays closed form.

Time model (relative; used to rank choices, not as a promise): one forward+backward of a node
costs ``NS_PER_NEURON_STEP_BY_BACKEND[backend][kind]`` nanoseconds per neuron and time step,
measured on the 2-core x86 host (32 GB/s) for the backend the layer runs, and scaled by
``32 / device.bandwidth_gbs``. RevLIF costs more than LIF (the state walked back in backward,
quantization): about 1.1x on ``numba``, whose fused kernels hide most of it, and about 2x on
``torch`` and ``reference``; each extra group adds a little per-step work.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ..errors import PlanningError
from ..models import parse_neuron_spec
from ..training.micro_batch import smallest_micro_batch
from .choice_search import EXHAUSTIVE_CHOICES, search, starts
from .checks import check_bandwidth, check_batch, check_bytes, check_extras, check_int, check_options, check_plan_args
from .memory_model import ChainModel
from .evalpass import eval_dynamic_peak, eval_lines
from .knapsack import brute_force, pareto_choices, solve_choice
from .peak import largest_batch, peak_lines, simulate_step

__all__ = ["NS_PER_NEURON_STEP", "NS_PER_NEURON_STEP_BY_BACKEND", "Extras", "NO_EXTRAS", "PlanningError",
           "candidates", "node_time_s", "pareto_choices", "solve_choice", "brute_force", "static_resident", "max_batch",
           "max_eval_batch", "max_micro_batch", "plan_model", "predict"]

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


@dataclass(frozen=True)
class Extras:
    """What a training run holds beside its step.

    Attributes:
        dataset_bytes: the dataset held in memory for the whole run (bytes; 0 when streamed or
            memory-mapped, see :mod:`~edgesnn.planner.datasets`).
        eval_batch: the evaluation pass's batch (samples; 0: no evaluation pass counted).
    """

    dataset_bytes: int = 0
    eval_batch: int = 0

    def __post_init__(self) -> None:
        for name in ("dataset_bytes", "eval_batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}: expected an integer >= 0, got {v!r}")

    def eval_peak(self, chain: ChainModel, options: Sequence[str], T: int) -> int:
        """Dynamic bytes of the evaluation pass (0 without one)."""
        return eval_dynamic_peak(chain, options, T, self.eval_batch)


NO_EXTRAS = Extras()


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


def static_resident(chain: ChainModel, runtime_overhead: int, optimizer: str) -> int:
    """Bytes held through the whole step: runtime + parameters + optimizer state + buffers.

    Parameter gradients are not included: the replay allocates them during backward.
    """
    return int(runtime_overhead + chain.static_bytes(optimizer) - 4 * chain.params)


def _held_whatever_the_choice(chain: ChainModel, T: int, B: int, runtime_overhead: int, optimizer: str,
                              extras: Extras) -> int:
    """Bytes the step holds at the end of its forward whichever neurons the layers take: the resident
    memory, the dataset and the choice-independent saved bytes (each choice adds its own saved bytes)."""
    return static_resident(chain, runtime_overhead, optimizer) + chain.fixed_cost().bytes(T, B) + extras.dataset_bytes


def _least_peak(chain: ChainModel, opts, T: int, B: int, runtime_overhead: int, optimizer: str,
                extras: Extras = NO_EXTRAS) -> List[str]:
    """The per-layer choice with the least predicted **peak** at batch ``B`` (not the least saved
    bytes: a RevLIF saves bytes but its backward workspace can raise the peak above an all-LIF
    step); the DP then trades time within the budget."""
    return _least_peak_found(chain, opts, T, B, runtime_overhead, optimizer, extras)[0]


def _least_peak_found(chain: ChainModel, opts, T: int, B: int, runtime_overhead: int, optimizer: str,
                      extras: Extras = NO_EXTRAS) -> Tuple[List[str], bool]:
    """:func:`_least_peak` and whether the search proved it the least (:func:`~.choice_search.search`);
    its bound: every saved byte is held at the step's peak."""
    costs = [[chain.layer_option_cost(i, o).bytes(T, B) for o in layer] for i, layer in enumerate(opts)]
    base = _held_whatever_the_choice(chain, T, B, runtime_overhead, optimizer, extras)
    return search(opts, lambda ch: (_peak(chain, ch, T, B, runtime_overhead, optimizer, extras),),
                  starts(chain, opts, T), lambda picks: base + sum(c[k] for c, k in zip(costs, picks)))


def _largest_batch_choice(chain: ChainModel, opts, T: int, budget: int, runtime_overhead: int, optimizer: str,
                          extras: Extras = NO_EXTRAS) -> Tuple[List[str], int]:
    """``(choice, B)``: the per-layer choice that fits the largest batch ``B`` under ``budget`` (0: none fits B = 1)."""
    def score(ch):
        return (-max_batch(chain, ch, T, budget, runtime_overhead, optimizer, extras),)

    # every sample holds at least its saved bytes at the step's peak: B <= (limit - const) / per sample
    limit = budget - static_resident(chain, runtime_overhead, optimizer) - extras.dataset_bytes
    fixed = chain.fixed_cost()
    costs = [[chain.layer_option_cost(i, o) for o in layer] for i, layer in enumerate(opts)]

    def bound(picks) -> float:
        rate = fixed.per_sample(T) + sum(c[k].per_sample(T) for c, k in zip(costs, picks))
        const = fixed.const + sum(c[k].const for c, k in zip(costs, picks))
        return -max(1, (limit - const) // rate) if rate > 0 else -math.inf

    best = search(opts, score, starts(chain, opts, T), bound)[0]
    return best, -score(best)[0]


def max_batch(chain: ChainModel, options: Sequence[str], T: int, budget: int, runtime_overhead: int,
              optimizer: str = "adam", extras: Extras = NO_EXTRAS) -> int:
    """Largest B whose predicted peak for ``options`` fits ``budget`` (closed form; 0 if B = 1 does not).

    The dataset lowers the limit by ``extras.dataset_bytes``; the evaluation pass, whose batch is
    fixed, is one more line with slope 0 (when it alone does not fit, no B does).
    """
    limit = budget - static_resident(chain, runtime_overhead, optimizer) - extras.dataset_bytes
    lines = peak_lines(chain, options, T, optimizer)
    if extras.eval_batch:
        lines.append((0, extras.eval_peak(chain, options, T)))
    return largest_batch(lines, limit)


def max_eval_batch(chain: ChainModel, options: Sequence[str], T: int, budget: int, runtime_overhead: int,
                   optimizer: str = "adam", dataset_bytes: int = 0) -> int:
    """Largest evaluation batch whose pass fits ``budget`` beside the resident memory and the dataset (bytes)."""
    limit = budget - static_resident(chain, runtime_overhead, optimizer) - dataset_bytes
    return largest_batch(eval_lines(chain, options, T), limit)


def _peak(chain, options, T, B, runtime_overhead, optimizer, extras: Extras = NO_EXTRAS) -> int:
    step = simulate_step(chain, options, T, B, optimizer).dynamic_peak
    return (static_resident(chain, runtime_overhead, optimizer) + extras.dataset_bytes
            + max(step, extras.eval_peak(chain, options, T)))


def _impossible(chain, opts, T, B, budget, runtime_overhead, optimizer, bandwidth_gbs: float,
                extras: Extras = NO_EXTRAS) -> PlanningError:
    least, exact = _least_peak_found(chain, opts, T, B, runtime_overhead, optimizer, extras)
    need = _peak(chain, least, T, B, runtime_overhead, optimizer, extras)
    choice, bmax = _largest_batch_choice(chain, opts, T, budget, runtime_overhead, optimizer, extras)
    tmax, lo, hi = 0, 1, max(1, T)
    while lo <= hi:  # largest T that fits at batch B (bytes grow with T)
        mid = (lo + hi) // 2
        if _peak(chain, _least_peak(chain, opts, mid, B, runtime_overhead, optimizer, extras), mid, B, runtime_overhead,
                 optimizer, extras) <= budget:
            tmax, lo = mid, mid + 1
        else:
            hi = mid - 1
    hints = []
    if bmax >= 1:
        # the part the plan at bmax (``edgesnn plan --batch bmax``) holds: that plan picks the fastest
        # choice that fits, which may hold fewer samples per part than ``choice``; a later part holds
        # every parameter gradient as well, so it may fit fewer samples than one plain step
        at_bmax = _least_peak(chain, opts, T, bmax, runtime_overhead, optimizer, extras)
        if _peak(chain, at_bmax, T, bmax, runtime_overhead, optimizer, extras) > budget:
            at_bmax = choice  # coordinate descent can miss the least peak; ``choice`` fits bmax
        at_bmax = _fastest_fitting(chain, opts, T, bmax, at_bmax, budget, runtime_overhead, optimizer,
                                   bandwidth_gbs, extras)
        mmax = max_micro_batch(chain, at_bmax, T, bmax, budget, runtime_overhead, optimizer, bandwidth_gbs, extras)
        parts = (f" (edgesnn train --micro-batch {mmax} still steps on batches of {B}, {mmax} samples at a time)"
                 if mmax >= smallest_micro_batch(chain.has_batchnorm) else "")
        hints.append(f"use --batch {bmax} or less{parts}")
    if tmax >= 1:
        hints.append(f"use --timesteps {tmax} or less")
    step = simulate_step(chain, least, T, B, optimizer).dynamic_peak
    if extras.eval_batch and extras.eval_peak(chain, least, T) > step:
        emax = max_eval_batch(chain, least, T, budget, runtime_overhead, optimizer, extras.dataset_bytes)
        if 1 <= emax < extras.eval_batch:
            hints.append(f"use --eval-batch {emax} or less (the evaluation pass at batch {extras.eval_batch} "
                         "needs more than the training step)")
    hints.append("raise --budget, pick a device with more memory or a smaller model")
    held = f", {extras.dataset_bytes} bytes of dataset" if extras.dataset_bytes else ""
    found = "" if exact else f" found (a local search over {math.prod(len(layer) for layer in opts)} combinations)"
    return PlanningError(
        f"budget: {budget} bytes ({budget / 2**30:.2f} GiB) is too small for T={T}, batch={B}: even the "
        f"least-peak choice of neurons{found} needs {need} bytes ({need / 2**30:.2f} GiB) at its peak, "
        f"including {runtime_overhead} bytes of runtime overhead{held} and {chain.static_bytes(optimizer)} bytes of "
        f"parameters, gradients and optimizer state; " + "; ".join(hints))


def plan_model(chain: ChainModel, T: int, budget: int, runtime_overhead: int, batch: Optional[int] = None,
               bandwidth_gbs: float = HOST_BANDWIDTH_GBS, optimizer: str = "adam",
               kinds: Sequence[str] = ("lif", "revlif"), groups: Sequence[int] = (2,), max_batch_cap: int = 1024,
               extras: Extras = NO_EXTRAS) -> dict:
    """Plan one training configuration.

    Args:
        chain: the model's :class:`ChainModel`.
        T: time steps (int >= 1). budget: bytes the training process may hold at its peak (RSS;
            an int > 0).
        runtime_overhead: bytes of the process before its tensors (device profile; int >= 0).
        batch: batch size (int >= 1), or None / ``"auto"`` for the largest that fits (at most
            ``max_batch_cap``, an int >= 1).
        bandwidth_gbs: device bandwidth for the time model (GB/s, finite > 0). optimizer:
            ``adam``, ``adamw``, ``sgd`` or ``sgd-momentum``.
        kinds: allowed neuron kinds, a non-empty list or tuple drawn from ``"lif"``, ``"revlif"``.
        groups: RevLIF group counts to consider, a non-empty list or tuple of ints >= 2.
        extras: the dataset held in memory and the evaluation batch (default: neither counted).

    Returns:
        dict with ``options``, ``batch``, ``activation_bytes``, ``peak_bytes`` (predicted peak
        RSS, at most ``budget``), ``time_s``, the per-layer ``layer_bytes`` and the terms of
        :func:`predict` (``step_bytes``, ``eval_bytes``, ``dataset_bytes``...).

    Raises:
        ValueError: a bad argument, in one line naming it.
        PlanningError: the budget cannot hold even the least-memory choice at batch 1 (or ``batch``).
    """
    if not isinstance(chain, ChainModel):
        raise TypeError(f"chain: expected the model's ChainModel (ChainModel(model)), got {type(chain).__name__}")
    T, budget, runtime_overhead, bandwidth_gbs, kinds, groups, max_batch_cap = check_plan_args(
        T, budget, runtime_overhead, bandwidth_gbs, kinds, groups, max_batch_cap)
    batch = check_batch(batch)
    check_extras(extras, Extras)
    chain.static_bytes(optimizer)  # checks the optimizer's name
    opts = candidates(chain, kinds, groups)
    if batch is None:
        least, B = _largest_batch_choice(chain, opts, T, budget, runtime_overhead, optimizer, extras)
        B = min(B, max_batch_cap)
        if B < 1:
            raise _impossible(chain, opts, T, 1, budget, runtime_overhead, optimizer, bandwidth_gbs, extras)
    else:
        B = batch
        least = _least_peak(chain, opts, T, B, runtime_overhead, optimizer, extras)
    if _peak(chain, least, T, B, runtime_overhead, optimizer, extras) > budget:
        raise _impossible(chain, opts, T, B, budget, runtime_overhead, optimizer, bandwidth_gbs, extras)
    options = _fastest_fitting(chain, opts, T, B, least, budget, runtime_overhead, optimizer, bandwidth_gbs, extras)
    return dict(options=list(options), batch=B, timesteps=T, budget_bytes=int(budget),
                **predict(chain, options, T, B, runtime_overhead, optimizer, bandwidth_gbs, extras))


#: :func:`_fastest_fitting` replays at most this many layers in all (``// layers`` choices, at least
#: 512): 2000 of VGG-11's choices (a replay costs ~0.4-1.2 ms there).
MAX_FIT_LAYER_REPLAYS = 16_000


def _fastest_fitting(chain: ChainModel, opts, T: int, B: int, least: List[str], budget: int, runtime_overhead: int,
                     optimizer: str, bandwidth_gbs: float, extras: Extras = NO_EXTRAS) -> List[str]:
    """The per-layer choice a plan at batch ``B`` takes: the least predicted node time whose
    replayed peak fits ``budget`` (bytes); ``least`` (a choice whose peak fits) when none is found.

    Saved bytes add up over the layers, but the peak is a replay's maximum (the step's gradients
    and temporaries, or the evaluation pass, depend on the choice as well), so the knapsack over
    saved bytes only orders the search: the choices whose saved bytes fit at all (the step holds
    every saved byte at the end of its forward) are replayed fastest first (fewer saved bytes first
    among equal times), and the first that fits is taken (:data:`MAX_FIT_LAYER_REPLAYS`). Up to
    :data:`~.choice_search.EXHAUSTIVE_CHOICES` combinations that is every one of them; beyond, the
    Pareto frontier of (saved bytes, time), which drops a choice beaten in both that might have fitted.
    Lowering one knapsack capacity by each overshoot, as before, stalled on overshoots smaller than
    the spare capacity and on evaluation-pass peaks, and fell back to ``least``: up to 1.5x slower
    than a choice that fit."""
    costs = [[(chain.layer_option_cost(i, o).bytes(T, B),
               node_time_s(o, T * B * chain.spiking[i].in_elems, bandwidth_gbs, _layer_backend(chain, i)))
              for o in layer] for i, layer in enumerate(opts)]
    capacity = budget - _held_whatever_the_choice(chain, T, B, runtime_overhead, optimizer, extras)
    if math.prod(len(layer) for layer in opts) <= EXHAUSTIVE_CHOICES:
        totals = [(sum(costs[i][k][1] for i, k in enumerate(ks)), sum(costs[i][k][0] for i, k in enumerate(ks)), ks)
                  for ks in itertools.product(*[range(len(layer)) for layer in opts])]
        order = [ks for t, b, ks in sorted(totals) if b <= capacity]
    else:
        order = [picks for picks, _, _ in pareto_choices(costs, capacity)]
    for picks in order[:max(512, MAX_FIT_LAYER_REPLAYS // max(1, len(opts)))]:
        cand = [opts[i][k] for i, k in enumerate(picks)]
        if _peak(chain, cand, T, B, runtime_overhead, optimizer, extras) <= budget:
            return cand
    return list(least)


def max_micro_batch(chain: ChainModel, options: Sequence[str], T: int, batch: int, budget: int, runtime_overhead: int,
                    optimizer: str = "adam", bandwidth_gbs: float = HOST_BANDWIDTH_GBS, extras: Extras = NO_EXTRAS) -> int:
    """The most samples per part (at most ``batch``) when a larger batch steps in parts
    (``edgesnn train --micro-batch``): a later part runs with every parameter gradient resident
    (:func:`predict` with ``accumulate=True``), so it may fit fewer samples than one plain step
    (0: not even one)."""
    lo, hi = 0, batch  # the peak grows with the part's size: bisect
    while lo < hi:
        mid = (lo + hi + 1) // 2
        peak = predict(chain, options, T, mid, runtime_overhead, optimizer, bandwidth_gbs, extras, accumulate=True)
        lo, hi = (mid, hi) if peak["peak_bytes"] <= budget else (lo, mid - 1)
    return lo


def predict(chain: ChainModel, options: Sequence[str], T: int, B: int, runtime_overhead: int, optimizer: str = "adam",
            bandwidth_gbs: float = HOST_BANDWIDTH_GBS, extras: Extras = NO_EXTRAS, accumulate: bool = False) -> dict:
    """Predicted bytes and node time of one choice: activation, static, peak RSS.

    ``peak_bytes = resident + dataset_bytes + max(step_bytes, eval_bytes)``: ``step_bytes`` is the
    replayed training step's dynamic peak, ``eval_bytes`` the evaluation pass's at
    ``eval_batch`` (both beside the resident runtime, parameters, optimizer state and buffers);
    ``peak_phase`` is ``"eval"`` when the evaluation pass is the larger.

    ``options``: one spec per spiking layer (``"lif"``, ``"revlif"``, ``"revlif:G"`` with G dividing
    the layer's channels); ``T``, ``B``: ints >= 1; ``runtime_overhead``: bytes >= 0;
    ``bandwidth_gbs``: finite > 0. A bad argument raises a one-line ``ValueError`` naming it.
    ``accumulate``: the step of a micro-batch ``B`` after the first (``edgesnn train --micro-batch``:
    the parameter gradients are resident throughout, each new one a temporary added into them).
    """
    options = check_options(chain, options)
    if not isinstance(accumulate, bool):
        raise ValueError(f"accumulate: expected True or False, got {accumulate!r}")
    T, B = check_int(T, "T (timesteps)"), check_int(B, "B (batch)")
    runtime_overhead = check_bytes(runtime_overhead, "runtime_overhead")
    bandwidth_gbs = check_bandwidth(bandwidth_gbs)
    check_extras(extras, Extras)
    chain.static_bytes(optimizer)  # checks the optimizer's name
    step = simulate_step(chain, options, T, B, optimizer, accumulate)
    ev = extras.eval_peak(chain, options, T)
    time_s = sum(node_time_s(o, T * B * chain.spiking[i].in_elems, bandwidth_gbs, _layer_backend(chain, i))
                 for i, o in enumerate(options))
    resident = static_resident(chain, runtime_overhead, optimizer)
    return dict(activation_bytes=step.activations, static_bytes=chain.static_bytes(optimizer),
                runtime_overhead_bytes=int(runtime_overhead), dataset_bytes=int(extras.dataset_bytes),
                step_bytes=int(step.dynamic_peak), eval_bytes=int(ev), eval_batch=int(extras.eval_batch),
                peak_bytes=int(resident + extras.dataset_bytes + max(step.dynamic_peak, ev)),
                peak_phase="eval" if ev > step.dynamic_peak else step.phase, time_s=time_s,
                layer_bytes=[chain.layer_option_cost(i, o).bytes(T, B) for i, o in enumerate(options)])
