"""Plot predicted peak memory vs T: all-LIF, all-RevLIF, the plan's choice, and the budget."""

from __future__ import annotations

import io
import os
from typing import Sequence, Union

from torch import nn

from ..checkpoint import atomic_write
from .memory_model import ChainModel
from .plan import plan_extras
from .solver import predict

__all__ = ["plot_memory_vs_t"]


def plot_memory_vs_t(model: nn.Module, plan, path: Union[str, os.PathLike], ts: Sequence[int] = ()) -> None:
    """Write a PNG (atomically) of predicted peak bytes vs T at the plan's batch.

    Args:
        model: the planned model. plan: a :class:`~edgesnn.planner.plan.Plan`.
        path: output ``.png``. ts: the T values (default: 1..4 x the plan's T).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chain = ChainModel(model)
    T0, B = plan.timesteps, plan.batch
    ts = list(ts) or sorted(set([1, 2, 4] + list(range(max(1, T0 // 4), 4 * T0 + 1, max(1, T0 // 4)))))
    ovh = plan.device["runtime_overhead_bytes"]
    bw = plan.device["bandwidth_gbs"]
    extras = plan_extras(plan.eval_batch, plan.dataset)  # dataset and evaluation pass, as planned
    rev = [o if o.startswith("revlif") else "revlif:2" for o in plan.neuron]
    series = {"all LIF": ["lif"] * len(plan.neuron), "all RevLIF": rev, "plan": plan.neuron}
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, opts in series.items():
        ys = [predict(chain, opts, t, B, ovh, plan.optimizer, bw, extras)["peak_bytes"] / 2**30 for t in ts]
        ax.plot(ts, ys, marker="o", ms=3, label=label, ls="--" if label == "plan" else "-")
    ax.axhline(plan.budget_bytes / 2**30, color="k", lw=1, label="budget")
    ax.axvline(T0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("time steps T")
    ax.set_ylabel("predicted peak memory (GiB)")
    ax.set_title(f"{plan.model.get('name', 'model')} on {plan.device['name']}, batch {B}")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))
