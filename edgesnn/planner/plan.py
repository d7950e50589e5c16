"""The plan: what the planner chose, as JSON, and how to apply it to a model.

A plan file (``format == "edgesnn-plan"``) holds the model configuration, the device and budget,
T, the batch, the evaluation batch (``eval_batch``, samples), the dataset the run holds
(``dataset``: ``name``, ``held``, ``bytes`` counted, ``mapped_bytes``), one entry per spiking layer
(``neuron`` spec such as ``"lif"`` or ``"revlif:2"``, ``groups``, saved bytes) and the predicted
memory (``predicted``: ``peak_bytes = runtime + parameters, optimizer state and buffers +
dataset_bytes + max(step_bytes, eval_bytes)``, all in bytes). :func:`neuron_specs` gives the ``neuron=[...]``
list for :func:`edgesnn.models.build_model`; :func:`apply` swaps the nodes of an existing model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from torch import nn

from ..checkpoint import atomic_write
from ..models import parse_neuron_spec, spiking_layers
from ..nn import LIF, RevLIF
from ..training.loop import EVAL_BATCH_SIZE
from .datasets import dataset_memory
from .memory_model import ChainModel, kernel_runtime_bytes
from .solver import Extras, plan_model

__all__ = ["FORMAT", "VERSION", "Plan", "make_plan", "plan_extras", "save_plan", "load_plan", "neuron_specs", "apply"]

FORMAT = "edgesnn-plan"
VERSION = 1
PathLike = Union[str, os.PathLike]


@dataclass
class Plan:
    """A plan (see the module docstring); ``to_dict``/``from_dict`` round-trip the JSON."""

    model: Dict[str, Any]
    device: Dict[str, Any]
    timesteps: int
    batch: int
    budget_bytes: int
    optimizer: str
    layers: List[Dict[str, Any]]
    predicted: Dict[str, Any]
    alternatives: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    eval_batch: int = EVAL_BATCH_SIZE
    dataset: Dict[str, Any] = field(default_factory=dict)

    @property
    def neuron(self) -> List[str]:
        return [L["neuron"] for L in self.layers]

    def to_dict(self) -> Dict[str, Any]:
        return dict(format=FORMAT, version=VERSION, model=self.model, device=self.device, timesteps=self.timesteps,
                    batch=self.batch, budget_bytes=self.budget_bytes, optimizer=self.optimizer, neuron=self.neuron,
                    eval_batch=self.eval_batch, dataset=self.dataset, layers=self.layers, predicted=self.predicted,
                    alternatives=self.alternatives)

    @classmethod
    def from_dict(cls, d: Dict[str, Any], origin: str = "<dict>") -> "Plan":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"plan: {origin} is not an edgesnn plan (missing format={FORMAT!r})")
        if d.get("version") != VERSION:
            raise ValueError(f"plan: {origin} has version {d.get('version')!r}; this edgesnn reads version {VERSION}")
        try:
            plan = cls(model=d["model"], device=d["device"], timesteps=int(d["timesteps"]), batch=int(d["batch"]),
                       budget_bytes=int(d["budget_bytes"]), optimizer=d.get("optimizer", "adam"), layers=list(d["layers"]),
                       predicted=d["predicted"], alternatives=d.get("alternatives", {}),
                       eval_batch=d.get("eval_batch", EVAL_BATCH_SIZE), dataset=dict(d.get("dataset") or {}))
        except KeyError as exc:
            raise ValueError(f"plan: {origin} lacks field {exc}") from None
        if isinstance(plan.eval_batch, bool) or not isinstance(plan.eval_batch, int) or plan.eval_batch < 1:
            raise ValueError(f"plan: {origin} has eval_batch {plan.eval_batch!r}; expected an integer >= 1")
        for L in plan.layers:
            parse_neuron_spec(L.get("neuron"))
        return plan


def plan_extras(eval_batch: int, dataset: Dict[str, Any]) -> Extras:
    """The solver's :class:`Extras` for a plan's ``eval_batch`` and ``dataset`` entry.

    The pass is counted at ``min(eval_batch, test samples)`` when the dataset's test split is
    known (:func:`edgesnn.training.loop.evaluate` never makes a larger batch).
    """
    tests = dataset.get("test_samples")
    eb = min(int(eval_batch), int(tests)) if tests else int(eval_batch)
    return Extras(dataset_bytes=int(dataset.get("bytes", 0) or 0), eval_batch=eb)


def make_plan(model: nn.Module, device, T: int, batch: Optional[int], budget: Optional[int] = None,
              optimizer: str = "adam", kinds: Sequence[str] = ("lif", "revlif"), groups: Sequence[int] = (2,),
              max_batch_cap: int = 1024, dataset: Optional[str] = None, dataset_bytes: Optional[int] = None,
              eval_batch: int = EVAL_BATCH_SIZE) -> Plan:
    """Plan ``model`` for a :class:`edgesnn.devices.DeviceProfile`.

    Args:
        model: a model from :func:`edgesnn.models.build_model`.
        device: the device profile. T: time steps. batch: batch size or None (largest that fits).
        budget: peak bytes the training process may hold; default ``memory - reserved`` of the device.
        dataset: a built-in dataset of ``edgesnn train`` (its resident bytes are known; see
            :mod:`~edgesnn.planner.datasets`). dataset_bytes: resident bytes of custom data
            instead. Neither: no dataset counted.
        eval_batch: the batch of the evaluation pass after every epoch (samples; ``edgesnn
            train``'s default is ``EVAL_BATCH_SIZE``).
    """
    if isinstance(eval_batch, bool) or not isinstance(eval_batch, int) or eval_batch < 1:
        raise ValueError(f"--eval-batch: expected an integer >= 1, got {eval_batch!r}")
    budget = int(device.memory_bytes - device.reserved_bytes) if budget is None else int(budget)
    chain = ChainModel(model)
    data = dataset_memory(dataset, T, chain.in_shape, dataset_bytes)
    extras = plan_extras(eval_batch, data)
    runtime = device.runtime_overhead_bytes + kernel_runtime_bytes(chain)  # + Numba when the nodes run it
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn and batch is not None and batch < 2:
        raise ValueError(f"--batch: a model with BatchNorm trains on batches of at least 2 samples (edgesnn train "
                         f"skips smaller ones); got {batch}")
    res = plan_model(chain, T, budget, runtime, batch, device.bandwidth_gbs, optimizer, kinds,
                     groups, max_batch_cap, extras)
    if has_bn and res["batch"] < 2:
        raise ValueError("--budget: only batch 1 fits, and a model with BatchNorm needs at least 2 samples per batch; "
                         "raise the budget or lower --timesteps")
    from .solver import predict

    layers = []
    for i, (L, opt, nbytes) in enumerate(zip(chain.spiking, res["options"], res["layer_bytes"])):
        kind, g = parse_neuron_spec(opt)
        layers.append(dict(index=i, name=L.name, neurons=L.in_elems, channels=L.channels, neuron=opt, kind=kind,
                           groups=g, saved_bytes=nbytes))
    alts = {}
    for label, kind in (("all-lif", "lif"), ("all-revlif", "revlif")):
        opts = ["lif" if kind == "lif" else f"revlif:{min([g for g in groups if L.channels % g == 0] or [2])}"
                for L in chain.spiking]
        p = predict(chain, opts, T, res["batch"], runtime, optimizer, device.bandwidth_gbs, extras)
        alts[label] = {k: p[k] for k in ("activation_bytes", "peak_bytes", "time_s")}
    predicted = {k: res[k] for k in ("activation_bytes", "static_bytes", "runtime_overhead_bytes", "dataset_bytes",
                                     "step_bytes", "eval_bytes", "eval_batch", "peak_bytes", "peak_phase", "time_s")}
    predicted["fixed_activation_bytes"] = chain.fixed_cost().bytes(T, res["batch"])
    cfg = dict(getattr(model, "config", {}) or {})
    cfg["neuron"] = res["options"]
    return Plan(model=cfg, device=device.to_dict(), timesteps=T, batch=res["batch"], budget_bytes=budget,
                optimizer=optimizer, layers=layers, predicted=predicted, alternatives=alts, eval_batch=eval_batch,
                dataset=data)


def save_plan(plan: Plan, path: PathLike) -> Path:
    """Write the plan JSON atomically."""
    text = json.dumps(plan.to_dict(), indent=2) + "\n"
    return atomic_write(path, lambda fh: fh.write(text), mode="w")


def load_plan(path: PathLike) -> Plan:
    """Read and validate a plan file (``FileNotFoundError``, or ``ValueError`` naming the problem)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"plan: {path} is a directory; expected a plan JSON file")
    if not path.is_file():
        raise FileNotFoundError(f"plan: no such file: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"plan: {path} is not valid JSON ({exc})") from None
    if isinstance(data, dict) and data.get("format") == "edgesnn-memopt-plan":
        raise ValueError(f"plan: {path} is an `edgesnn plan --memopt` report (for reading); `edgesnn train --memopt` "
                         "plans its chunks itself: train with --memopt and the report's --batch instead of --plan")
    return Plan.from_dict(data, origin=str(path))


def neuron_specs(plan: Union[Plan, Dict[str, Any]]) -> List[str]:
    """The ``neuron=[...]`` list for :func:`edgesnn.models.build_model` (one spec per spiking layer)."""
    if isinstance(plan, dict):
        plan = Plan.from_dict(plan)
    return plan.neuron


def _node_kwargs(node: nn.Module) -> Dict[str, Any]:
    p = node.params.lif if isinstance(node, RevLIF) else node.params
    return dict(tau=p.tau, v_threshold=p.v_threshold, v_reset=p.v_reset, decay_input=p.decay_input,
                surrogate=p.surrogate, detach_reset=p.detach_reset, backend=node.backend, check_finite=node.check_finite)


def apply(model: nn.Module, plan: Union[Plan, Dict[str, Any], PathLike]) -> nn.Module:
    """Swap each spiking node of ``model`` in place for the plan's choice; returns ``model``.

    Nodes that already match (same kind and group count) are kept. New nodes keep the old node's
    LIF parameters (tau, threshold, reset, surrogate, backend). ``model.config["neuron"]`` is
    updated so a checkpoint rebuilds the planned model. Nodes hold no parameters, so trained
    weights are untouched.
    """
    if isinstance(plan, (str, os.PathLike)):
        plan = load_plan(plan)
    specs = neuron_specs(plan)
    nodes = spiking_layers(model)
    if len(nodes) != len(specs):
        raise ValueError(f"plan: the plan has {len(specs)} spiking layers, the model {len(nodes)}; "
                         "plan the same model (edgesnn plan --model ...)")
    for (name, node), spec in zip(nodes, specs):
        kind, groups = parse_neuron_spec(spec)
        if kind == "lif" and isinstance(node, LIF):
            continue
        if kind == "revlif" and isinstance(node, RevLIF) and node.groups == groups:
            continue
        kw = _node_kwargs(node)
        if kind == "lif":
            new = LIF(**kw)
        else:
            extra = {}
            if isinstance(node, RevLIF):
                p = node.params
                extra = dict(alpha=p.alpha, beta=p.beta, gamma=p.gamma, mode=p.mode)
            new = RevLIF(groups=groups, **kw, **extra)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    if isinstance(getattr(model, "config", None), dict):
        model.config["neuron"] = list(specs)
    return model
