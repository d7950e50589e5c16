"""The field checks of a plan file (:meth:`edgesnn.planner.plan.Plan.from_dict`): each field with its
exact JSON type (an integer is not ``true`` or ``4.7``; ``batchnorm`` is ``true``/``false``), the
``model`` entry a config :func:`edgesnn.models.build_model` can use, one ``layers[]`` entry per spiking
layer with a group count dividing its width; every failure one ``ValueError`` line naming the field.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence

from ..errors import clip
from ..kernels.dispatch import BACKENDS
from ..models import MODEL_NAMES, POOLS, VGG11_CFG, parse_neuron_spec

__all__ = ["MISSING", "WIDTH_FIELD", "Fields", "parsed", "check_model", "check_layers", "spiking_widths",
           "check_plan_layers"]

#: a field the plan file does not hold (``None`` is JSON's ``null``)
MISSING = object()
DEFAULT_WIDTHS = {"hidden": [128, 128], "channels": [16, 32]}  # build_model's and TrainConfig's
#: the config field holding the spiking layers' widths, per model name (vgg11's are fixed)
WIDTH_FIELD = {"mlp": "hidden", "convnet": "channels"}


class Fields:
    """One plan file's field checks: one-line ``ValueError`` s naming the field."""

    def __init__(self, label: str, origin: str) -> None:
        self.label, self.origin = label, origin

    def fail(self, name: str, expected: str, got: Any) -> ValueError:
        """The one-line error (returned, not raised): ``LABEL: NAME: expected EXPECTED, got GOT in ORIGIN``."""
        try:
            shown = "nothing (the field is missing)" if got is MISSING else json.dumps(got)
        except (TypeError, ValueError):
            shown = repr(got)
        return ValueError(f"{self.label}: {name}: expected {expected}, got {clip(shown)} in {self.origin}")

    def typed(self, value: Any, types: Any, name: str, expected: str) -> Any:
        """``value`` if it is an instance of ``types`` (a ``bool`` only where ``types`` is ``bool``), else raise."""
        if isinstance(value, bool) and types is not bool or not isinstance(value, types):
            raise self.fail(name, expected, value)
        return value

    def int(self, d: Dict[str, Any], key: str, name: Optional[str] = None, minimum: int = 1,
            default: Any = MISSING) -> int:
        """``d[key]`` (``default`` when absent) as an integer ``>= minimum`` (not a ``bool``), else raise."""
        v = d.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise self.fail(name or key, f"an integer >= {minimum}", v)
        return v

    def ints(self, v: Any, name: str, what: str) -> List[int]:
        """``v`` if it is a non-empty list of integers >= 1 (no ``bool``), else raise."""
        if not isinstance(v, list) or not v or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in v):
            raise self.fail(name, f"a non-empty list of positive integers ({what})", v)
        return v


def parsed(value: Any, count: int) -> Optional[List[Any]]:
    """A neuron spec (for every layer) or a list of them, parsed; None when it is neither."""
    try:
        if isinstance(value, str):
            return [parse_neuron_spec(value)] * count
        return [parse_neuron_spec(s) for s in value] if isinstance(value, list) else None
    except (TypeError, ValueError):
        return None


def check_model(f: Fields, m: Any) -> Dict[str, Any]:
    """The ``model`` entry: a config :func:`edgesnn.models.build_model` and ``edgesnn train`` can use."""
    f.typed(m, dict, "model", "an object (the model config: name, in_shape, num_classes, ...)")
    name = m.get("name", MISSING)
    if not isinstance(name, str) or name not in MODEL_NAMES:
        raise f.fail("model.name", f"one of {', '.join(MODEL_NAMES)}", name)
    shape = f.ints(m.get("in_shape", MISSING), "model.in_shape", "one sample's shape")
    if name != "mlp" and len(shape) != 3:
        raise f.fail("model.in_shape", f"3 sizes (C, H, W) for {name}", shape)
    f.int(m, "num_classes", "model.num_classes", minimum=2)
    for key in ("hidden", "channels"):
        if key in m:
            f.ints(m[key], f"model.{key}", "layer widths")
    node = f.typed(m.get("node", {}), dict, "model.node", "an object (node settings such as backend)")
    if node.get("backend", "auto") not in BACKENDS:
        raise f.fail("model.node.backend", f"one of {', '.join(BACKENDS)}", node["backend"])
    f.typed(m.get("batchnorm", True), bool, "model.batchnorm", "true or false")
    if m.get("pool", "avg") not in POOLS or (name == "mlp" and m.get("pool", "avg") != "avg"):
        raise f.fail("model.pool", '"avg" or "max" (conv models only)', m.get("pool"))
    f.typed(m.get("revlif", {}), dict, "model.revlif", "an object (RevLIF settings)")
    return m


def check_layers(f: Fields, layers: Any, model: Dict[str, Any]) -> List[Dict[str, Any]]:
    """``layers``: one object per spiking layer of ``model`` with a neuron its width can take."""
    if not isinstance(layers, list) or not layers or not all(isinstance(L, dict) for L in layers):
        raise f.fail("layers", "a non-empty list of objects, one per spiking layer", layers)
    for i, L in enumerate(layers):
        spec = L.get("neuron", MISSING)
        try:
            kind, groups = parse_neuron_spec(spec)
        except (TypeError, ValueError):
            raise f.fail(f"layers[{i}].neuron", '"lif", "revlif" or "revlif:G" (G >= 2)', spec) from None
        for key, value in (("kind", kind), ("groups", groups)):
            if key in L and (isinstance(L[key], bool) or L[key] != value):
                raise f.fail(f"layers[{i}].{key}", f"{json.dumps(value)} as its neuron {spec!r} says (training uses "
                             "layers[].neuron; kind, groups and the neuron lists repeat it)", L[key])
    widths = spiking_widths(model)
    key = WIDTH_FIELD.get(model["name"])
    check_plan_layers([L["neuron"] for L in layers], widths,
                      f"the planned {model['name']}" + (f" (model.{key} {widths})" if key else ""),
                      f.label, f" in {f.origin}")
    for i, (L, width) in enumerate(zip(layers, widths)):  # the figures are for the planned widths
        if "channels" in L and (isinstance(L["channels"], bool) or L["channels"] != width):
            source = f"model.{key}" if key else f"the {model['name']} model"
            raise f.fail(f"layers[{i}].channels", f"{width}, this layer's width in {source} (the plan's figures are "
                         "for the layers it lists; edit the model in a new plan instead)", L["channels"])
    return layers


def spiking_widths(config: Dict[str, Any]) -> List[int]:
    """Channel widths of the spiking layers of a :func:`edgesnn.models.build_model` config, in order."""
    name = config.get("name")
    if name == "vgg11":
        return [c for c in VGG11_CFG if c != "M"]
    key = WIDTH_FIELD.get(name)
    if key is None:
        raise ValueError(f"model: unknown model {name!r}; expected one of {MODEL_NAMES}")
    return [int(w) for w in config.get(key, DEFAULT_WIDTHS[key])]


def check_plan_layers(specs: Sequence[str], widths: Sequence[Optional[int]], desc: str, label: str = "plan",
                      where: str = "") -> None:
    """One neuron spec per spiking layer (``len(widths)``), each RevLIF group count dividing its
    layer's width (``None``: unknown, not checked); ``ValueError`` in one line naming ``layers``.

    ``edgesnn train --plan`` (through :meth:`Plan.from_dict`, against the planned widths) and
    :func:`apply` (against the model's) both check with this.
    """
    if len(specs) != len(widths):
        raise ValueError(f"{label}: layers: expected {len(widths)} entries, one per spiking layer of {desc}, got "
                         f"{len(specs)} spiking layers{where}; plan the same model (edgesnn plan --model ...)")
    for i, (spec, width) in enumerate(zip(specs, widths)):
        kind, groups = parse_neuron_spec(spec)
        if kind == "revlif" and width is not None and width % groups:
            raise ValueError(f"{label}: layers[{i}].neuron: expected a group count that divides the {width} channels "
                             f"of spiking layer {i} of {desc}, got {spec!r}{where}")
