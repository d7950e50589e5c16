"""Argument checks of the planner's Python entry points (:func:`~edgesnn.planner.solver.plan_model`,
:func:`~edgesnn.planner.solver.predict`, :func:`~edgesnn.planner.plan.make_plan`).

Each check raises a one-line ``ValueError`` that starts with the parameter's name and says what
was expected, before any planning: a bad argument never gives a silently wrong plan. Integers are
exact Python ``int`` s (not ``bool``); byte counts may also be integral finite floats (``2.5e9``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, List, Optional, Tuple

import numpy as np

from ..errors import clip
from ..models import parse_neuron_spec

if TYPE_CHECKING:  # pragma: no cover
    from .memory_model import ChainModel

__all__ = ["KINDS", "check_int", "check_bytes", "check_batch", "check_bandwidth", "check_kinds", "check_groups",
           "check_options", "check_plan_args", "check_extras", "check_in_shape", "unsupported_layer", "SUPPORTED_LAYERS"]

#: The neuron kinds the planner chooses between.
KINDS = ("lif", "revlif")


def _shown(value: Any) -> str:
    return clip(repr(value))


def check_int(value: Any, name: str, minimum: int = 1, what: str = "") -> int:
    """``value`` as an ``int >= minimum``: a Python or NumPy integer (as the nodes and ``optimize_memory``
    take), not a bool or float; else ``ValueError`` naming ``name``."""
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}{what}, got {_shown(value)}")
    return value


def check_bytes(value: Any, name: str, minimum: int = 0) -> int:
    """A byte count: an int (or integral finite float) ``>= minimum``; returned as ``int``."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected a whole number of bytes >= {minimum}, got {_shown(value)}")
    return value


def check_batch(batch: Any, name: str = "batch") -> Optional[int]:
    """``None`` or ``"auto"`` (the largest batch that fits) -> ``None``; else an ``int >= 1``."""
    if batch is None or (isinstance(batch, str) and batch.strip().lower() == "auto"):
        return None
    return check_int(batch, name, 1, " or 'auto' (None)")


def check_bandwidth(value: Any, name: str = "bandwidth_gbs") -> float:
    """A finite number of GB/s ``> 0``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a finite number of GB/s > 0, got {_shown(value)}")
    return float(value)


def _collection(value: Any, name: str, expected: str) -> List[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, set, frozenset)) or not value:
        raise ValueError(f"{name}: expected {expected}, got {_shown(value)}")
    return list(value)


def check_kinds(kinds: Any) -> Tuple[str, ...]:
    """A non-empty list / tuple / set drawn from :data:`KINDS` (lower case), e.g. ``("lif", "revlif")``."""
    expected = "a non-empty list or tuple of 'lif' and/or 'revlif' (e.g. ('lif', 'revlif') or ['revlif'])"
    items = _collection(kinds, "kinds", expected)
    if any(not isinstance(k, str) or k not in KINDS for k in items):
        raise ValueError(f"kinds: expected {expected}, got {_shown(kinds)}")
    return tuple(k for k in KINDS if k in items)


def check_groups(groups: Any) -> Tuple[int, ...]:
    """A non-empty list / tuple / set of RevLIF group counts, each an ``int >= 2``."""
    expected = "a non-empty list or tuple of integers >= 2 (RevLIF group counts, e.g. (2,) or [2, 4])"
    items = _collection(groups, "groups", expected)
    if any(isinstance(g, bool) or not isinstance(g, int) or g < 2 for g in items):
        raise ValueError(f"groups: expected {expected}, got {_shown(groups)}")
    return tuple(sorted(set(items)))


def check_options(chain: "ChainModel", options: Any) -> List[str]:
    """One neuron spec per spiking layer of ``chain`` (``"lif"``, ``"revlif"``, ``"revlif:G"`` with
    G dividing the layer's channels); ``ValueError`` naming ``options``."""
    count = len(chain.spiking)
    if isinstance(options, (str, bytes)) or not isinstance(options, (list, tuple)):
        raise ValueError(f"options: expected a list of {count} neuron specs ('lif', 'revlif' or 'revlif:G'), one per "
                         f"spiking layer, got {_shown(options)}")
    if len(options) != count:
        raise ValueError(f"options: the model has {count} spiking layers, got {len(options)} options")
    out = []
    for i, (spec, L) in enumerate(zip(options, chain.spiking)):
        try:
            kind, groups = parse_neuron_spec(spec)
        except (TypeError, ValueError):
            raise ValueError(f"options[{i}]: expected 'lif', 'revlif' or 'revlif:G' (G >= 2), got {_shown(spec)}") from None
        if kind == "revlif" and L.channels % groups:
            raise ValueError(f"options[{i}]: {groups} groups do not divide the {L.channels} channels of {L.name}; "
                             f"expected a group count that divides {L.channels}, got {spec!r}")
        out.append(spec)
    return out


def check_plan_args(T: Any, budget: Any, runtime_overhead: Any, bandwidth_gbs: Any, kinds: Any, groups: Any,
                    max_batch_cap: Any) -> Tuple[int, int, int, float, Tuple[str, ...], Tuple[int, ...], int]:
    """The arguments :func:`~edgesnn.planner.solver.plan_model` and
    :func:`~edgesnn.planner.plan.make_plan` share, checked in their order: ``T`` (time steps),
    ``budget`` and ``runtime_overhead`` (bytes), ``bandwidth_gbs`` (GB/s), ``kinds``, ``groups`` and
    ``max_batch_cap`` (samples)."""
    return (check_int(T, "T (timesteps)"), check_bytes(budget, "budget", 1), check_bytes(runtime_overhead, "runtime_overhead"),
            check_bandwidth(bandwidth_gbs), check_kinds(kinds), check_groups(groups),
            check_int(max_batch_cap, "max_batch_cap"))


def check_extras(extras: Any, cls: type) -> Any:
    """``extras`` when it is a ``cls`` (:class:`~edgesnn.planner.Extras`), else a one-line ``ValueError``."""
    if not isinstance(extras, cls):
        raise ValueError(f"extras: expected an edgesnn.planner.Extras (dataset bytes, evaluation batch), got "
                         f"{_shown(extras)}")
    return extras



#: What :class:`~edgesnn.planner.memory_model.ChainModel` reads, for its "unsupported layer" errors.
SUPPORTED_LAYERS = ("LIF / RevLIF nodes directly in model.body, and stateless layers mapping one tensor to one tensor "
                    "(SeqToANN-wrapped Linear, ConvNd, BatchNormNd, pooling, Flatten, activations, Dropout...)")


def check_in_shape(shape: Any, name: str = "in_shape") -> Tuple[int, ...]:
    """One sample's shape: a non-empty list / tuple / ``torch.Size`` of ints >= 1."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (list, tuple)) or not shape \
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"{name}: expected one sample's shape, a non-empty tuple of integers >= 1 such as (784,) or "
                         f"(3, 32, 32), got {_shown(shape)}")
    return tuple(int(s) for s in shape)


def unsupported_layer(name: str, module: Any, in_shape: Tuple[int, ...], why: str) -> ValueError:
    """The one-line error for a ``model.body`` entry the planner cannot read."""
    why = " ".join(str(why).split())
    why = why if len(why) <= 120 else why[:117] + "..."
    return ValueError(f"model: {name} ({type(module).__name__}) on a sample of shape {in_shape}: unsupported layer "
                      f"type or wrong in_shape ({why}); the planner reads {SUPPORTED_LAYERS}")


def check_device(device: Any) -> Any:
    """``device`` for :func:`~edgesnn.planner.plan.make_plan`: an :class:`edgesnn.devices.DeviceProfile`."""
    from edgesnn.devices import DeviceProfile

    if not isinstance(device, DeviceProfile):
        raise ValueError(f"device: expected an edgesnn.devices.DeviceProfile (edgesnn.devices.load_device(name), e.g. "
                         f"load_device('raspberry-pi-4-4gb')), got {_shown(device)}")
    return device


def check_path(path: Any, name: str = "path") -> Any:
    """A file path: a ``str`` or ``os.PathLike`` (not bytes, not empty)."""
    import os

    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)) or not os.fspath(path).strip():
        raise ValueError(f"{name}: expected a file path (a non-empty str or os.PathLike), got {_shown(path)}")
    return path


def check_plan_like(plan: Any, cls: type, paths: bool = False, dicts: bool = True, name: str = "plan") -> Any:
    """``plan``: a ``cls`` (:class:`~edgesnn.planner.plan.Plan`), with ``dicts`` a plan dict, with
    ``paths`` a path to a plan JSON file."""
    import os

    if isinstance(plan, cls) or (dicts and isinstance(plan, dict)) or (paths and isinstance(plan, (str, os.PathLike))):
        return plan
    what = ", a plan dict or a path to a plan JSON file" if paths else " or a plan dict" if dicts else ""
    raise ValueError(f"{name}: expected an edgesnn.planner.Plan (make_plan / load_plan){what}, got {_shown(plan)}")
