"""The plan: what the planner chose, as JSON, and how to apply it to a model.

A plan file (``format == "edgesnn-plan"``) holds the model configuration, the device and budget, T, the batch, the
evaluation batch (``eval_batch``, samples), the dataset the run holds (``dataset``: ``name``, ``held``, ``bytes``
counted, ``mapped_bytes``), one entry per spiking layer (``neuron`` spec such as ``"lif"`` or ``"revlif:2"``,
``groups``, saved bytes) and the predicted memory (``predicted``: ``peak_bytes = runtime + parameters, optimizer state
and buffers + dataset_bytes + max(step_bytes, eval_bytes)``, all in bytes), the all-LIF / all-RevLIF comparison rows
(``alternatives``, with the ``neuron`` list each describes) and ``notes`` (a row left out, and why; an automatic
batch that leaves an epoch of a built-in dataset few optimizer steps: :mod:`.epoch_steps`).
:func:`neuron_specs` gives the ``neuron=[...]`` list for :func:`edgesnn.models.build_model`; :func:`apply` swaps the
nodes of an existing model. :meth:`Plan.from_dict` refuses an unknown key at any level (:mod:`.plan_keys`), then
checks every field with its exact JSON type (:mod:`.plan_fields`; an integer is not ``true`` or ``4.7``;
``batchnorm`` is ``true``/``false``), each in one line naming it. ``layers[]`` is what training uses; the top-level ``neuron`` list and
``model.neuron`` repeat it and must agree.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Union

from torch import nn

from ..checkpoint import atomic_write
from ..errors import first_line
from ..json_keys import DuplicateKeyError, loads_unique
from ..models import MODEL_NAMES, parse_neuron_spec, spiking_layers
from ..nn import LIF, RevLIF
from ..training.loop import EVAL_BATCH_SIZE
from .checks import check_batch, check_bytes, check_device, check_path, check_plan_args, check_plan_like
from .datasets import DATASET_SPECS, dataset_memory
from .epoch_steps import few_steps_note
from .memory_model import ChainModel, kernel_runtime_bytes
from .plan_fields import MISSING as _MISSING, WIDTH_FIELD as _WIDTH_FIELD, Fields as _Fields
from .plan_fields import check_layers as _check_layers, check_model as _check_model, check_plan_layers
from .plan_fields import parsed as _parsed, spiking_widths
from .plan_keys import check_plan_keys
from .solver import Extras, max_micro_batch, plan_model

if TYPE_CHECKING:  # pragma: no cover
    from ..devices import DeviceProfile

__all__ = ["FORMAT", "VERSION", "Plan", "make_plan", "plan_extras", "plan_text", "save_plan", "load_plan", "neuron_specs", "apply",
           "spiking_widths", "check_plan_layers", "check_unplanned_dataset"]

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
    notes: List[str] = field(default_factory=list)

    @property
    def neuron(self) -> List[str]:
        """One neuron spec per spiking layer (``"lif"``, ``"revlif:G"``), in model order."""
        return [L["neuron"] for L in self.layers]

    def to_dict(self) -> Dict[str, Any]:
        """The plan as the JSON object :meth:`from_dict` and ``edgesnn train --plan`` read."""
        return copy.deepcopy(dict(
            format=FORMAT, version=VERSION, model=self.model, device=self.device, timesteps=self.timesteps,
            batch=self.batch, budget_bytes=self.budget_bytes, optimizer=self.optimizer, neuron=self.neuron,
            eval_batch=self.eval_batch, dataset=self.dataset, layers=self.layers, predicted=self.predicted,
            alternatives=self.alternatives, notes=self.notes))  # a copy: editing it leaves the plan as it was

    @classmethod
    def from_dict(cls, d: Dict[str, Any], origin: str = "<dict>", label: str = "plan") -> "Plan":
        """Check ``d``'s fields (exact types) and build the plan; ``ValueError`` in one line
        ``"{label}: FIELD: expected ..., got ... in {origin}"`` otherwise."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"{label}: {origin} is not an edgesnn plan (missing format={FORMAT!r})")
        f = _Fields(label, origin)
        version = d.get("version", _MISSING)
        if isinstance(version, bool) or not isinstance(version, int) or version != VERSION:
            raise f.fail("version", f"{VERSION} (the plan version this edgesnn reads)", version)
        check_plan_keys(d, label, origin)  # version 1's keys (a newer version is refused above, unread)
        model = _check_model(f, d.get("model", _MISSING))
        dataset = d.get("dataset")
        dataset = {} if dataset is None else f.typed(dataset, dict, "dataset", "an object (name, held, bytes)")
        name = dataset.get("name")
        if name is not None and (not isinstance(name, str) or name not in DATASET_SPECS):
            raise f.fail("dataset.name", f"null (custom data) or one of {', '.join(DATASET_SPECS)}", name)
        if dataset.get("held", "none") not in ("memory", "mmap", "none"):
            raise f.fail("dataset.held", '"memory", "mmap" or "none"', dataset["held"])
        f.int(dataset, "bytes", "dataset.bytes", minimum=0, default=0)
        predicted = f.typed(d.get("predicted", _MISSING), dict, "predicted", "an object (the predicted bytes)")
        f.int(predicted, "peak_bytes", "predicted.peak_bytes", minimum=0)
        if "micro_batch" in predicted:  # plans written before --micro-batch have none
            f.int(predicted, "micro_batch", "predicted.micro_batch", minimum=0)
        layers = _check_layers(f, d.get("layers", _MISSING), model)
        notes = f.typed(d.get("notes", []), list, "notes", "a list of strings")
        device = f.typed(d.get("device", _MISSING), dict, "device", "an object (the device profile)")
        plan = cls(model=model, device=device,
                   timesteps=f.int(d, "timesteps"), batch=f.int(d, "batch"), budget_bytes=f.int(d, "budget_bytes"),
                   optimizer=f.typed(d.get("optimizer", "adam"), str, "optimizer", 'a string such as "adam"'),
                   layers=layers, predicted=predicted,
                   alternatives=f.typed(d.get("alternatives", {}), dict, "alternatives", "an object"),
                   eval_batch=f.int(d, "eval_batch", default=EVAL_BATCH_SIZE), dataset=dict(dataset),
                   notes=[str(n) for n in notes])
        planned_t = model.get("timesteps", plan.timesteps)
        if type(planned_t) is not int or planned_t != plan.timesteps:  # (4.0 == 4: the type is checked too)
            raise f.fail("model.timesteps", f"{plan.timesteps} (the plan's timesteps)", planned_t)
        want = [parse_neuron_spec(s) for s in plan.neuron]
        for key, given in (("neuron", d.get("neuron", _MISSING)), ("model.neuron", model.get("neuron", _MISSING))):
            if given is not _MISSING and _parsed(given, len(want)) != want:
                raise f.fail(key, f"{plan.neuron} as layers[].neuron says (training uses layers[].neuron; "
                             "this list repeats it)", given)
        return plan


def planned_chain(model: nn.Module, dataset: Optional[str]) -> ChainModel:
    """The planner's :class:`ChainModel` of ``model`` for data ``dataset`` (a built-in dataset's name
    or ``None``): an event dataset's batch is ``[T, B, ...]`` as it is, not one input repeated."""
    events = isinstance(dataset, str) and dataset in DATASET_SPECS and DATASET_SPECS[dataset].events
    return ChainModel(model, events=events)


def plan_extras(eval_batch: int, dataset: Dict[str, Any]) -> Extras:
    """The solver's :class:`Extras` for a plan's ``eval_batch`` and ``dataset`` entry.

    The pass is counted at ``min(eval_batch, test samples)`` when the dataset's test split is
    known (:func:`edgesnn.training.loop.evaluate` never makes a larger batch).
    """
    tests = dataset.get("test_samples")
    eb = min(int(eval_batch), int(tests)) if tests else int(eval_batch)
    return Extras(dataset_bytes=int(dataset.get("bytes", 0) or 0), eval_batch=eb)


def check_batchnorm_batch(model: nn.Module, batch: Optional[int], max_batch_cap: Optional[int] = None) -> bool:
    """Whether ``model`` has BatchNorm; for such a model an explicit ``batch`` below 2 is refused in
    one line naming ``--batch`` (``edgesnn train`` skips batches of one sample), and so is a
    ``max_batch_cap`` below 2 for ``--batch auto`` (naming ``--max-batch``, not the budget)."""
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    for flag, value in (("--batch", batch), ("--max-batch", None if batch is not None else max_batch_cap)):
        if has_bn and value is not None and value < 2:
            raise ValueError(f"{flag}: a model with BatchNorm trains on batches of at least 2 samples (edgesnn train "
                             f"skips smaller ones); got {value}")
    return has_bn


def make_plan(model: nn.Module, device: DeviceProfile, T: int, batch: Optional[int], budget: Optional[int] = None,
              optimizer: str = "adam", kinds: Sequence[str] = ("lif", "revlif"), groups: Sequence[int] = (2,),
              max_batch_cap: int = 1024, dataset: Optional[str] = None, dataset_bytes: Optional[int] = None,
              eval_batch: int = EVAL_BATCH_SIZE) -> Plan:
    """Plan ``model`` for a :class:`edgesnn.devices.DeviceProfile`.

    Args:
        model: a model from :func:`edgesnn.models.build_model`.
        device: the device profile. T: time steps. batch: batch size (int >= 1) or None / ``"auto"``
            (the largest that fits, at most ``max_batch_cap``).
        budget: peak bytes the training process may hold (int > 0); default ``memory - reserved``
            of the device.
        kinds, groups, optimizer: as in :func:`~edgesnn.planner.solver.plan_model` (a bad value is a
            one-line ``ValueError`` naming it).
        dataset: a built-in dataset of ``edgesnn train`` (its resident bytes are known; see
            :mod:`~edgesnn.planner.datasets`). dataset_bytes: resident bytes of custom data
            instead. Neither: no dataset counted. With ``batch`` automatic, a built-in dataset
            whose epoch the chosen batch leaves fewer than 10 optimizer steps gets a line in
            ``notes`` (:func:`~edgesnn.planner.epoch_steps.few_steps_note`; the batch stays the largest).
        eval_batch: the batch of the evaluation pass after every epoch (samples; ``edgesnn
            train``'s default is ``EVAL_BATCH_SIZE``).
    """
    if isinstance(eval_batch, bool) or not isinstance(eval_batch, int) or eval_batch < 1:
        raise ValueError(f"--eval-batch: expected an integer >= 1, got {eval_batch!r}")
    batch, device = check_batch(batch), check_device(device)  # before the BatchNorm check: a bad type is named
    budget = int(device.memory_bytes - device.reserved_bytes) if budget is None else check_bytes(budget, "budget", 1)
    check_plan_args(T, budget, device.runtime_overhead_bytes, device.bandwidth_gbs, kinds, groups, max_batch_cap)
    chain = planned_chain(model, dataset)
    cfg = dict(getattr(model, "config", {}) or {})
    if cfg.get("timesteps", T) != T:  # the model repeats its input cfg["timesteps"] times: training runs that T
        raise ValueError(f"T (timesteps): expected {cfg['timesteps']} (the model was built with timesteps="
                         f"{cfg['timesteps']}), got {T}; plan the T the model runs, or rebuild it")
    data = dataset_memory(dataset, T, chain.in_shape, dataset_bytes, model=cfg.get("name"),
                          num_classes=cfg.get("num_classes"))
    extras = plan_extras(eval_batch, data)
    runtime = device.runtime_overhead_bytes + kernel_runtime_bytes(chain)  # + Numba when the nodes run it
    has_bn = check_batchnorm_batch(model, batch, max_batch_cap)
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
    alts, notes = {}, []
    for label, kind in (("all-lif", "lif"), ("all-revlif", "revlif")):
        fits = [[g for g in groups if g >= 2 and L.channels % g == 0] for L in chain.spiking]
        stuck = [L for L, gs in zip(chain.spiking, fits) if not gs]
        if kind == "revlif" and stuck:  # that model cannot be built with these group counts
            notes.append(f"all-revlif left out: none of --groups {','.join(map(str, groups))} divides the "
                         f"{stuck[0].channels} channels of {stuck[0].name}")
            continue
        opts = ["lif" if kind == "lif" else f"revlif:{min(gs)}" for gs in fits]
        p = predict(chain, opts, T, res["batch"], runtime, optimizer, device.bandwidth_gbs, extras)
        alts[label] = {k: p[k] for k in ("activation_bytes", "peak_bytes", "time_s")}
        alts[label]["neuron"] = opts
    if batch is None:  # --batch auto: the largest batch that fits can leave an epoch few steps (still chosen)
        few = few_steps_note(dataset, res["batch"], has_bn)
        if few:
            notes.append(few)
    predicted = {k: res[k] for k in ("activation_bytes", "static_bytes", "runtime_overhead_bytes", "dataset_bytes",
                                     "step_bytes", "eval_bytes", "eval_batch", "peak_bytes", "peak_phase", "time_s")}
    predicted["fixed_activation_bytes"] = chain.fixed_cost().bytes(T, res["batch"])
    predicted["micro_batch"] = max_micro_batch(chain, res["options"], T, res["batch"], budget, runtime, optimizer,
                                               device.bandwidth_gbs, extras)
    cfg["neuron"] = res["options"]
    return Plan(model=cfg, device=device.to_dict(), timesteps=T, batch=res["batch"], budget_bytes=budget,
                optimizer=optimizer, layers=layers, predicted=predicted, alternatives=alts, eval_batch=eval_batch,
                dataset=data, notes=notes)


def plan_text(plan: Plan) -> str:
    """The plan file's text, as :func:`save_plan` writes it: ``plan.to_dict()`` as JSON indented by 2,
    one newline at the end. ``ValueError`` for a NaN or Infinity, which JSON cannot hold."""
    return json.dumps(plan.to_dict(), indent=2, allow_nan=False) + "\n"


def save_plan(plan: Plan, path: PathLike) -> Path:
    """Write the plan JSON (:func:`plan_text`) atomically."""
    check_plan_like(plan, Plan, dicts=False), check_path(path)
    text = plan_text(plan)
    return atomic_write(path, lambda fh: fh.write(text), mode="w")


def load_plan(path: PathLike, label: str = "plan") -> Plan:
    """Read and validate a plan file (``FileNotFoundError``, or ``ValueError`` naming the problem).

    Messages start with ``label`` (``edgesnn train`` passes ``"--plan"``).
    """
    path = Path(check_path(path, label))
    if path.is_dir():
        raise IsADirectoryError(f"{label}: {path} is a directory; expected a plan JSON file")
    if not path.is_file():
        raise FileNotFoundError(f"{label}: no such file: {path}")
    try:
        data = loads_unique(path.read_text())
    except DuplicateKeyError as exc:
        raise ValueError(f"{label}: {path}: {exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{label}: {path} is not valid JSON ({exc})") from None
    except (ValueError, RecursionError) as exc:  # an integer of > 4300 digits; arrays nested thousands deep
        raise ValueError(f"{label}: {path} is not a plan JSON file edgesnn can read ({first_line(exc, 80, at_word=True)})"
                         ) from None
    if isinstance(data, dict) and data.get("format") == "edgesnn-memopt-plan":
        raise ValueError(f"{label}: {path} is an `edgesnn plan --memopt` report (for reading); "
                         "`edgesnn train --memopt` plans its chunks itself: train with --memopt and the report's "
                         "--batch instead of --plan")
    return Plan.from_dict(data, origin=str(path), label=label)


def neuron_specs(plan: Union[Plan, Dict[str, Any]]) -> List[str]:
    """The ``neuron=[...]`` list for :func:`edgesnn.models.build_model` (one spec per spiking layer)."""
    if isinstance(check_plan_like(plan, Plan), dict):
        plan = Plan.from_dict(plan)
    return plan.neuron


def check_unplanned_dataset(plan: Plan, name: str, origin: str, label: str = "--plan") -> Optional[str]:
    """A plan that counted no dataset, for a run that holds built-in dataset ``name``.

    Returns None when the plan counted a dataset (built-in or ``--dataset-bytes``), else a one-line
    warning; raises ``ValueError`` (one line) when the plan's predicted peak plus the bytes ``name``
    holds (:mod:`~edgesnn.planner.datasets`) exceed the plan's budget.
    """
    if plan.dataset.get("name") or plan.dataset.get("held", "none") != "none" or plan.dataset.get("bytes"):
        return None
    spec = DATASET_SPECS.get(name)
    if spec is None:  # an image folder: its size is known once loaded
        return (f"warning: {label}: {origin} counted no dataset, and {name} holds its images in memory beside the "
                "predicted peak; re-plan with --dataset-bytes SIZE")
    held = spec.resident_bytes(plan.timesteps)
    peak = int(plan.predicted["peak_bytes"])
    what = f"{name} holds {held} bytes ({held / 2**20:.1f} MiB) in memory"
    if peak + held > plan.budget_bytes:
        raise ValueError(f"{label}: {origin} counted no dataset, but {what}: the predicted peak {peak} + {held} bytes "
                         f"exceeds the plan's budget {plan.budget_bytes}; re-plan with --dataset {name}")
    return (f"warning: {label}: {origin} counted no dataset; {what} (peak {peak} + {held} = {peak + held} bytes, "
            f"within the budget {plan.budget_bytes}); re-plan with --dataset {name} for exact figures")


def _node_kwargs(node: nn.Module) -> Dict[str, Any]:
    p = node.params.lif if isinstance(node, RevLIF) else node.params
    return dict(tau=p.tau, v_threshold=p.v_threshold, v_reset=p.v_reset, decay_input=p.decay_input,
                surrogate=p.surrogate, detach_reset=p.detach_reset, backend=node.backend, check_finite=node.check_finite)


def _check_same_input(cfg: Dict[str, Any], plan: Plan) -> None:
    """One line when ``plan`` was made for another input shape, class count, T, pooling or BatchNorm
    than the model config ``cfg`` (the plan's memory figures hold for its model only; ``edgesnn train
    --plan`` refuses the same). Pooling and BatchNorm are stored only where they are not the default."""
    pairs = (("in_shape", cfg.get("in_shape"), plan.model.get("in_shape")),
             ("num_classes", cfg.get("num_classes"), plan.model.get("num_classes")),
             ("timesteps", cfg.get("timesteps"), plan.timesteps),
             ("pool", cfg.get("pool", "avg"), plan.model.get("pool", "avg")),
             ("batchnorm", cfg.get("batchnorm", True), plan.model.get("batchnorm", True)))
    for key, mine, planned in pairs:
        if mine is None or planned is None:
            continue
        if (list(mine) if isinstance(mine, (list, tuple)) else mine) != \
                (list(planned) if isinstance(planned, (list, tuple)) else planned):
            raise ValueError(f"plan: {key}: expected {mine} (the model's), got {planned}; the plan's memory figures "
                             f"hold for its own model: plan this model (edgesnn plan ...)")


def apply(model: nn.Module, plan: Union[Plan, Dict[str, Any], PathLike]) -> nn.Module:
    """Swap each spiking node of ``model`` in place for the plan's choice; returns ``model``.

    Nodes that already match (same kind and group count) are kept. New nodes keep the old node's
    LIF parameters (tau, threshold, reset, surrogate, backend). ``model.config["neuron"]`` is
    updated so a checkpoint rebuilds the planned model. Nodes hold no parameters, so trained
    weights are untouched.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module (e.g. from edgesnn.models.build_model), got {model!r:.60}")
    if isinstance(check_plan_like(plan, Plan, paths=True), (str, os.PathLike)):
        plan = load_plan(plan)
    elif isinstance(plan, dict):
        plan = Plan.from_dict(plan)
    specs = plan.neuron
    nodes = spiking_layers(model)
    cfg = getattr(model, "config", None)
    mine = cfg.get("name") if isinstance(cfg, dict) and cfg.get("name") in MODEL_NAMES else None
    planned = plan.model.get("name") if isinstance(plan.model, dict) else None
    if mine and planned != mine:
        raise ValueError(f"plan: model.name: expected {mine!r} (the model's), got {planned!r}; plan this model "
                         f"(edgesnn plan --model {mine} ...)")
    if mine:
        widths: List[Optional[int]] = list(spiking_widths(cfg))
    elif isinstance(getattr(model, "body", None), nn.Sequential) and hasattr(model, "in_shape"):
        widths = [L.channels for L in ChainModel(model).spiking]
    else:
        widths = []
    if len(widths) != len(nodes):  # a model whose nodes the config does not describe: count them only
        widths = [None] * len(nodes)
    check_plan_layers(specs, widths, f"the model ({mine or type(model).__name__}, widths {widths})")
    if mine:
        _check_same_input(cfg, plan)
    if mine in _WIDTH_FIELD and spiking_widths(plan.model) != widths:
        key = _WIDTH_FIELD[mine]
        raise ValueError(f"plan: model.{key}: expected {widths} (the model's), got {spiking_widths(plan.model)}; "
                         f"plan this model (edgesnn plan --{key} ...)")
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
