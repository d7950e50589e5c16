"""Memory-budget planner: predict peak training memory and choose LIF or RevLIF per spiking layer.

* :mod:`~edgesnn.planner.memory_model`: bytes saved for backward per layer, from shapes and dtypes
  (:mod:`~edgesnn.planner.costs`: its :class:`Cost` and :class:`~edgesnn.planner.costs.Layer`).
* :mod:`~edgesnn.planner.checks`: the argument checks of the entry points (one-line errors naming the argument).
* :mod:`~edgesnn.planner.peak`: peak of a training step by replaying its allocations.
* :mod:`~edgesnn.planner.evalpass`: peak of the evaluation pass (``no_grad``, its own batch).
* :mod:`~edgesnn.planner.datasets`: bytes each built-in dataset holds in memory.
* :mod:`~edgesnn.planner.network`: peak and chunk plan of a model rewritten by ``edgesnn.optimize_memory``.
* :mod:`~edgesnn.planner.bptt_peak`: peak of the unoptimized baselines (BPTT, SpikingJelly memopt), replayed by
  :mod:`~edgesnn.planner.step_replay`.
* :mod:`~edgesnn.planner.solver`: exact multiple-choice knapsack over the layer chain; largest batch.
* :mod:`~edgesnn.planner.plan`: the plan JSON, :func:`apply` and :func:`load_plan`.
* :mod:`~edgesnn.planner.cli`: ``edgesnn plan``.
"""

from .memory_model import ChainModel, Cost
from .plan import Plan, apply, load_plan, make_plan, neuron_specs, save_plan
from .solver import Extras, PlanningError, plan_model, predict

__all__ = ["ChainModel", "Cost", "Extras", "Plan", "PlanningError", "apply", "load_plan", "make_plan", "neuron_specs",
           "plan_model", "predict", "save_plan"]
