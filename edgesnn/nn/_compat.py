"""SpikingJelly habits: the ``surrogate_function=`` keyword, SpikingJelly surrogate instances, and
the node attributes (``tau``, ``v_threshold``, ...) SpikingJelly code reads and assigns.

Nothing here imports SpikingJelly: its surrogate modules are recognised by their class's module
(``spikingjelly.*``) and name, and mapped to the edgesnn surrogate with the same gradient formula
and the same ``alpha``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Optional

from ..functional import surrogate as _sg
from ..functional.surrogate import Surrogate, get_surrogate

if TYPE_CHECKING:  # pragma: no cover
    from ..functional.lif import LIFParams

__all__ = ["resolve_surrogate", "from_spikingjelly_surrogate", "SPIKINGJELLY_SURROGATES", "LIFAttributes"]

#: SpikingJelly surrogate class name -> the edgesnn class with the same ``sg'`` and default alpha.
SPIKINGJELLY_SURROGATES = {
    "Sigmoid": _sg.Sigmoid,
    "ATan": _sg.ATan,
    "PiecewiseQuadratic": _sg.PiecewiseQuadratic,
    "PiecewiseExp": _sg.PiecewiseExp,
    "SoftSign": _sg.SoftSign,
    "SuperSpike": _sg.SuperSpike,
    "Erf": _sg.Erf,
    "NonzeroSignLogAbs": _sg.NonzeroSignLogAbs,
}


def _is_spikingjelly_class(cls: type) -> bool:
    return cls.__module__.split(".")[0] == "spikingjelly"


def _is_spikingjelly_object(obj: Any) -> bool:
    return _is_spikingjelly_class(type(obj))


def from_spikingjelly_surrogate(obj: Any, name: str = "surrogate_function") -> Surrogate:
    """The edgesnn :class:`Surrogate` equal to a SpikingJelly surrogate instance (same formula, same alpha).

    ``name`` is the parameter the errors name (``surrogate_function`` or ``surrogate``).

    Raises:
        TypeError: a SpikingJelly surrogate edgesnn does not implement (e.g. several parameters).
        ValueError: the instance is in ``spiking=False`` mode (it would not emit spikes in SpikingJelly).
    """
    cls_name = type(obj).__name__
    target = SPIKINGJELLY_SURROGATES.get(cls_name)
    if target is None:
        raise TypeError(
            f"{name}: SpikingJelly's {cls_name} has no edgesnn equivalent; supported: "
            f"{sorted(SPIKINGJELLY_SURROGATES)} (or pass an edgesnn Surrogate)"
        )
    if getattr(obj, "spiking", True) is not True:
        raise ValueError(f"{name}: {cls_name}(spiking=False) outputs the primitive function, not spikes; use spiking=True")
    alpha = getattr(obj, "alpha", None)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"{name}: {cls_name}.alpha must be a number, got {alpha!r}")
    return target(float(alpha))


def _resolve_one(spec: Any, name: str) -> Surrogate:
    """One surrogate spec (name, edgesnn or SpikingJelly instance); errors name the parameter ``name``."""
    if _is_spikingjelly_object(spec):
        return from_spikingjelly_surrogate(spec, name)
    if not isinstance(spec, Surrogate):
        sj_base = next((c for c in type(spec).__mro__[1:] if _is_spikingjelly_class(c)), None)
        if sj_base is not None:  # a user's subclass of a SpikingJelly surrogate: its gradient may differ
            raise TypeError(
                f"{name}: {type(spec).__name__} subclasses SpikingJelly's {sj_base.__name__}; SpikingJelly surrogates are "
                f"mapped by exact class (a subclass may override the gradient), so pass SpikingJelly's {sj_base.__name__} "
                "itself or subclass edgesnn.functional.surrogate.Surrogate"
            )
    return get_surrogate(spec, name)


def resolve_surrogate(surrogate: Optional[Any], surrogate_function: Optional[Any] = None) -> Surrogate:
    """The node's :class:`Surrogate` from ``surrogate=`` and/or its SpikingJelly alias ``surrogate_function=``.

    Each accepts a name (``"sigmoid"``, ``"atan"``, ...), an edgesnn :class:`Surrogate` or a
    SpikingJelly surrogate instance (mapped by exact class: a subclass of one is refused, as it may
    override the gradient). Neither given: ``Sigmoid(alpha=4)``. Both given: an error. Errors name
    the parameter that was passed.
    """
    if surrogate is not None and surrogate_function is not None:
        raise TypeError("give the surrogate once: surrogate= or its SpikingJelly alias surrogate_function=, not both")
    if surrogate is not None:
        return _resolve_one(surrogate, "surrogate")
    if surrogate_function is not None:
        return _resolve_one(surrogate_function, "surrogate_function")
    return _sg.Sigmoid()


def _lif_attribute(field: str, doc: str, name: Optional[str] = None) -> property:
    """A SpikingJelly-named attribute ``name`` (default ``field``) backed by the node's ``LIFParams`` field ``field``."""
    attr = field if name is None else name

    def get(self):
        return getattr(self._lif_params(), field)

    def set(self, value) -> None:
        if field == "surrogate":
            value = _resolve_one(value, attr)
        self._update_lif_params(**{field: value})

    return property(get, set, doc=doc)


class LIFAttributes:
    """SpikingJelly's node attributes as live views of the node's parameters: reading gives the
    value in use, assigning rebuilds (and re-validates) the parameters, as assigning
    ``LIFNode.v_threshold`` changes a SpikingJelly node. Used by :class:`LIF`, :class:`RevLIF` and
    :class:`ParametricLIF` (which overrides :meth:`_update_lif_params` for its learned parameters)."""

    tau = _lif_attribute("tau", "Membrane time constant (time steps, > 1).")
    v_threshold = _lif_attribute("v_threshold", "Firing threshold.")
    v_reset = _lif_attribute("v_reset", "Hard-reset potential, or None for a soft reset.")
    decay_input = _lif_attribute("decay_input", "Whether the input is divided by tau too.")
    detach_reset = _lif_attribute("detach_reset", "No gradient through the spike in the reset.")
    surrogate_function = _lif_attribute("surrogate", "The surrogate (an edgesnn Surrogate; SpikingJelly's are mapped).",
                                        "surrogate_function")
    surrogate = _lif_attribute("surrogate", "edgesnn's name of ``surrogate_function`` (the constructor's ``surrogate=``).")

    def __setattr__(self, name: str, value: Any) -> None:
        # the attribute properties (also for a module value, a SpikingJelly surrogate); a frozenset
        # test, not vars(), so torch.compile (dynamo, torch 2.5 too) can trace state writes in forward
        if name in _ATTRIBUTE_NAMES:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def _fresh_value(self) -> float:
        return self._lif_params().charge_reset

    def _lif_params(self) -> "LIFParams":
        raise NotImplementedError

    def _set_lif_params(self, lif: "LIFParams") -> None:
        raise NotImplementedError

    def _update_lif_params(self, **changes: Any) -> None:
        """Assign ``changes`` (``LIFParams`` fields), re-validated as the constructor would."""
        self._set_lif_params(dataclasses.replace(self._lif_params(), **changes))


#: Names of :class:`LIFAttributes`' properties (assigned through the property, not nn.Module's setattr).
_ATTRIBUTE_NAMES = frozenset(k for k, v in vars(LIFAttributes).items() if isinstance(v, property))
