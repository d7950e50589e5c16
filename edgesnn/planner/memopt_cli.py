"""``edgesnn plan --memopt``: the plan of :func:`edgesnn.optimize_memory`'s chunked blocks on a device
(the budget split into runtime, parameters and optimizer state, dataset and activations; the largest
batch that fits, or the given one), printed and optionally written as JSON."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Optional, Tuple

from ..atomic import atomic_write
from ..memory_guard import human_bytes as _fmt
from .cli import _dataset_line, _json_text

if TYPE_CHECKING:
    from ..devices import DeviceProfile
    from ..models import SpikingClassifier

__all__ = ["run_memopt"]


def run_memopt(args: argparse.Namespace, model: "SpikingClassifier", shape: Tuple[int, ...], device: "DeviceProfile",
               budget: Optional[int], batch: Optional[int],
               dataset_bytes: Optional[int] = None, eval_batch: int = 256, timesteps: Optional[int] = None,
               max_batch: Optional[int] = None, classes: Optional[int] = None) -> int:
    """``edgesnn plan --memopt``: the chunked-block plan of :func:`edgesnn.optimize_memory` on the device.

    The dataset (bytes) is resident beside the parameters; the evaluation pass (plain ``no_grad``
    forward at ``eval_batch``) must fit beside them as well, and the peak is the larger of the two.
    A model with BatchNorm needs batches of at least 2 samples (as without ``--memopt``).
    ``model``: the built-in model to plan; ``shape``: one sample's input shape; ``budget``: bytes
    (``None``: the device's memory less its reserve); ``batch``: samples (``None``: the largest that fits).
    ``timesteps`` / ``max_batch``: the parsed ``--timesteps`` / ``--max-batch`` (default: ``args``'s).
    """
    import copy

    import torch

    from ..memopt import optimize_memory
    from ..memopt.sequential import EVAL_CHUNK_STEPS
    from .datasets import dataset_memory
    from .evalpass import eval_forward_peak
    from .epoch_steps import few_steps_note
    from .memory_model import NUMBA_RUNTIME_BYTES, OPTIMIZER_STATES, ChainModel
    from .network import PlanningError as NetPlanningError
    from .plan import plan_extras

    from ..kernels.dispatch import numba_available

    T = int(args.timesteps) if timesteps is None else timesteps
    cap = int(args.max_batch) if max_batch is None else max_batch
    from .plan import check_batchnorm_batch

    has_bn = check_batchnorm_batch(model, batch)
    total = budget if budget is not None else device.memory_bytes - device.reserved_bytes
    # what limits the memory: the --budget the user gave, or the device profile's memory - reserved
    limit = "--budget" if budget is not None else f"--device {device.name} (memory - reserved)"
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    runtime = device.runtime_overhead_bytes + (NUMBA_RUNTIME_BYTES if numba_available() else 0)  # memopt's kernels
    static = runtime + param_bytes * (2 + OPTIMIZER_STATES[args.optimizer])
    chain = ChainModel(model)
    data = dataset_memory(args.dataset, T, chain.in_shape, dataset_bytes, model=args.model, num_classes=classes)
    extras = plan_extras(eval_batch, data)
    # an optimized container evaluates EVAL_CHUNK_STEPS steps at a time (memopt/sequential.py)
    eval_fwd = eval_forward_peak(chain, ["lif"] * len(chain.spiking), min(T, EVAL_CHUNK_STEPS),
                                 extras.eval_batch)
    room = total - static - extras.dataset_bytes
    if room <= 0:
        raise ValueError(f"{limit}: {_fmt(total)} does not hold the runtime ({_fmt(runtime)}), "
                         f"the parameters, gradients and optimizer state ({_fmt(static - runtime)})"
                         f" and the dataset ({_fmt(extras.dataset_bytes)})")
    if eval_fwd > room:
        raise ValueError(f"--eval-batch: the evaluation pass at batch {extras.eval_batch} needs {_fmt(eval_fwd)}, "
                         f"more than the {_fmt(room)} left beside the parameters and the dataset; lower --eval-batch")

    from ..memopt.optimize import largest_batch

    def make_input(b: int):  # shapes only (optimize_memory runs it on fake tensors): no [b, ...] memory
        return torch.zeros(()).expand(b, *shape)

    auto = batch is None
    if batch is None:
        batch, plan = largest_batch(model, make_input, room, cap)
        if plan is None:
            raise ValueError(f"{limit}: even batch 1 needs more than {_fmt(total)} with chunked blocks; "
                             "lower --timesteps or pick a device with more memory")
        if has_bn and batch < 2:
            raise ValueError(f"{limit}: only batch 1 fits in {_fmt(total)}, and a model with BatchNorm needs at least "
                             "2 samples per batch; raise the budget or lower --timesteps")
    else:
        try:
            plan = optimize_memory(copy.deepcopy(model), make_input(batch), budget=room)
        except NetPlanningError:
            raise ValueError(f"{limit}: batch {batch} does not fit {_fmt(total)} even with the smallest chunks; "
                             "lower --batch or --timesteps") from None
    print(f"device: {device.name}; budget {_fmt(total)} (runtime {_fmt(runtime)}, parameters, "
          f"gradients and {args.optimizer} state {_fmt(static - runtime)}, activations {_fmt(room)})")
    print(f"model: {args.model} {args.input}, T={T}, all LIF, optimize_memory")
    print(plan)
    peak = static + extras.dataset_bytes + max(plan.peak_bytes, eval_fwd)
    print(_dataset_line(data))
    print(f"evaluation: batch {extras.eval_batch} under no_grad, forward {_fmt(eval_fwd)}; "
          f"training step {_fmt(plan.peak_bytes)}")
    print(f"batch: {batch}; predicted peak {_fmt(peak)} of {_fmt(total)}")
    few = few_steps_note(args.dataset, batch, has_bn, memopt=True) if auto else None
    if few:  # as make_plan's notes: the batch stays the largest that fits
        print(f"  note: {few}")
    if args.json:
        doc = {"format": "edgesnn-memopt-plan", "version": 1, "model": model.config, "device": device.to_dict(),
               "timesteps": T, "batch": batch, "budget_bytes": int(total),
               "static_bytes": int(static), "eval_batch": int(eval_batch), "dataset": data,
               "eval_bytes": int(eval_fwd), "peak_bytes": int(peak), "plan": plan.to_dict()}
        text = _json_text(doc, indent=1)
        atomic_write(args.json, lambda fh: fh.write(text), mode="w")
        print(f"plan written to {args.json}")
    return 0
