"""Memory-budget planner: predict peak training memory and choose LIF or RevLIF per spiking layer.

* :mod:`~edgesnn.planner.memory_model`: bytes saved for backward per layer, from shapes and dtypes.
* :mod:`~edgesnn.planner.peak`: peak of a training step by replaying its allocations.
* :mod:`~edgesnn.planner.solver`: exact multiple-choice knapsack over the layer chain; largest batch.
* :mod:`~edgesnn.planner.plan`: the plan JSON, :func:`apply` and :func:`load_plan`.
* :mod:`~edgesnn.planner.cli`: ``edgesnn plan``.
"""

from .memory_model import ChainModel, Cost
from .plan import Plan, apply, load_plan, make_plan, neuron_specs, save_plan
from .solver import PlanningError, plan_model, predict

__all__ = ["ChainModel", "Cost", "Plan", "PlanningError", "apply", "load_plan", "make_plan", "neuron_specs",
           "plan_model", "predict", "save_plan"]
