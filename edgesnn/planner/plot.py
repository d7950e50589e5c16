"""Plot predicted peak memory vs T: all-LIF, all-RevLIF, the plan's choice, and the budget.

matplotlib is optional (the ``dev`` extra): :func:`require_matplotlib` and :func:`plot_format`
let a command line refuse ``--plot`` in one line before it plans or writes anything.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence, Union

from torch import nn

from ..checkpoint import atomic_write
from ..errors import DependencyError
from .plan import Plan, plan_extras, planned_chain
from .solver import predict

__all__ = ["PLOT_FORMATS", "plot_format", "require_matplotlib", "render_memory_vs_t", "plot_memory_vs_t"]

#: File suffixes the plot can be written as (matplotlib's own vector and raster writers, no extras).
PLOT_FORMATS = ("png", "pdf", "svg")


def plot_format(path: Union[str, os.PathLike], flag: str = "--plot") -> str:
    """The format ``path``'s suffix names (``"png"``, ``"pdf"`` or ``"svg"``); other suffixes are refused."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in PLOT_FORMATS:
        raise ValueError(f"{flag}: expected a file ending in {', '.join('.' + f for f in PLOT_FORMATS)} "
                         f"(the format is taken from the suffix), got {os.fspath(path)!r}")
    return fmt


def require_matplotlib(flag: str = "--plot") -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend, or a one-line
    :class:`~edgesnn.errors.DependencyError` naming ``flag`` when matplotlib cannot be imported."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DependencyError(f"{flag}: needs matplotlib (pip install matplotlib)") from None
    return plt


def render_memory_vs_t(model: nn.Module, plan: Plan, fmt: str = "png", ts: Sequence[int] = ()) -> bytes:
    """The plot of predicted peak bytes vs T at the plan's batch, as the bytes of a ``fmt`` file.

    Args:
        model: the planned model. plan: a :class:`~edgesnn.planner.plan.Plan`.
        fmt: one of :data:`PLOT_FORMATS`. ts: the T values (default: 1..4 x the plan's T).
    """
    if fmt not in PLOT_FORMATS:
        raise ValueError(f"plot: format must be one of {', '.join(PLOT_FORMATS)}, got {fmt!r}")
    plt = require_matplotlib()
    chain = planned_chain(model, plan.dataset.get("name"))
    T0, B = plan.timesteps, plan.batch
    ts = list(ts) or sorted(set([1, 2, 4] + list(range(max(1, T0 // 4), 4 * T0 + 1, max(1, T0 // 4)))))
    # the runtime the plan counted: the device's and, where the nodes run on Numba, the kernels'
    ovh = plan.predicted.get("runtime_overhead_bytes", plan.device["runtime_overhead_bytes"])
    bw = plan.device["bandwidth_gbs"]
    extras = plan_extras(plan.eval_batch, plan.dataset)  # dataset and evaluation pass, as planned
    series = {"all LIF": ["lif"] * len(plan.neuron)}
    rev = plan.alternatives.get("all-revlif", {}).get("neuron")
    if rev is not None:  # left out (plan.notes) when no planned group count divides some layer
        series["all RevLIF"] = list(rev)
    series["plan"] = plan.neuron
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    try:
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
        fig.savefig(buf, format=fmt, dpi=110)
    finally:
        plt.close(fig)
    return buf.getvalue()


def plot_memory_vs_t(model: nn.Module, plan: Plan, path: Union[str, os.PathLike], ts: Sequence[int] = ()) -> None:
    """Write the plot of :func:`render_memory_vs_t` to ``path`` (atomically), in the format its
    suffix names (``.png``, ``.pdf`` or ``.svg``; others raise ``ValueError``)."""
    data = render_memory_vs_t(model, plan, plot_format(path), ts)
    atomic_write(path, lambda fh: fh.write(data))
