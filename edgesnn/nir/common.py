"""What the NIR exporter and importer share: the ``nir`` import, the error type, the default ``dt``,
the ``dt`` check and the threshold conversion between NIR's ``v > thr`` and edgesnn's ``v >= thr``."""

from __future__ import annotations

import math
import numbers
from types import ModuleType
from typing import Any, Optional, Tuple

import numpy as np
import torch

from ..errors import DependencyError, UsageError, clip, first_line
from ..float32_range import FLOAT32_MAX


__all__ = ["DEFAULT_DT", "NIRError", "nir_module", "to_numpy", "check_dt", "check_finite_node", "int_values",
           "threshold_to_nir", "threshold_from_nir"]

#: Seconds per time step unless told otherwise (SpikingJelly's and most NIR tools' default).
DEFAULT_DT = 1e-4


class NIRError(UsageError):
    """The model or graph cannot be converted faithfully (the message says which layer and why)."""


def nir_module() -> ModuleType:
    """The ``nir`` package, or a one-line error naming the extra that installs it."""
    try:
        import nir
    except ImportError:
        raise DependencyError("NIR interchange needs the nir package: pip install 'edgesnn[nir]' (nir 1.0.8)") from None
    return nir


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A float32 NumPy copy of ``t``, same shape (what NIR nodes store)."""
    return t.detach().cpu().to(torch.float32).numpy().copy()


def check_dt(dt: Any, what: str = "dt") -> float:
    """``dt`` as a float: a finite real number > 0 (Python or NumPy scalar; ``bool`` is refused).

    Raises :class:`NIRError` naming ``what`` otherwise.
    """
    if isinstance(dt, (bool, np.bool_)) or not isinstance(dt, numbers.Real):
        raise NIRError(f"{what}: expected seconds per time step (a finite number > 0), got {dt!r}")
    value = float(dt)
    if not (math.isfinite(value) and value > 0):
        raise NIRError(f"{what}: expected seconds per time step (a finite number > 0), got {dt!r}")
    return value


#: The numeric fields of NIR nodes that edgesnn reads or writes (weights, biases, neuron parameters).
_NUMERIC_FIELDS = ("weight", "bias", "tau", "tau_mem", "tau_syn", "r", "w_in", "v_leak", "v_threshold", "v_reset")


def check_finite_node(key: str, node: Any) -> None:
    """Refuse a node whose weights, bias or neuron parameters hold NaN or Inf (one line naming node and field).

    A non-finite value would silently give a model whose outputs are all NaN (or never spike).
    """
    for field in _NUMERIC_FIELDS:
        value = getattr(node, field, None)
        if value is None:  # a field this node kind does not have
            continue
        try:
            raw = np.asarray(value)
            if raw.dtype.kind not in "iuf":  # complex (its imaginary part would be dropped), bool, text, objects
                raise TypeError(f"{type(value).__name__} of {raw.dtype}")
            arr = raw.astype(np.float64)
        except (TypeError, ValueError) as e:
            raise NIRError(f"node {key}: nir.{type(node).__name__} {field} is not real numbers ({first_line(e, 100)})") from None
        if not np.isfinite(arr).all():
            bad = int(arr.size - np.isfinite(arr).sum())
            raise NIRError(f"node {key}: nir.{type(node).__name__} {field} holds {bad} NaN/Inf value(s) of {arr.size}; "
                           "only finite weights and neuron parameters are loaded or exported")
        big = int((np.abs(arr) > FLOAT32_MAX).sum())
        if big:  # float32 (what edgesnn computes in) would turn them into Inf
            raise NIRError(f"node {key}: nir.{type(node).__name__} {field} holds {big} value(s) of {arr.size} beyond the "
                           f"float32 range (|x| <= {FLOAT32_MAX:.4g}); edgesnn computes in float32")


def int_values(what: str, value: Any, minimum: Optional[int] = None, sizes: Tuple[int, ...] = (1, 2)) -> Tuple[int, ...]:
    """The integers ``value`` (an int, list or array) holds, or a one-line :class:`NIRError` naming ``what``.

    Refuses what is not whole numbers (``2.5`` is not truncated to 2), booleans, text, ``None``,
    values below ``minimum`` and a count of values not in ``sizes``.
    """
    try:
        arr = np.ravel(np.asarray(value))
    except Exception:  # noqa: BLE001 - ragged lists and the like
        arr = np.asarray([None])
    ok = arr.dtype.kind in "iuf" and arr.size in sizes
    if ok:
        f = arr.astype(np.float64)
        ok = bool(np.all(np.isfinite(f)) and np.all(f == np.round(f)) and (minimum is None or np.all(f >= minimum)))
    if not ok:
        text = clip(repr(value.tolist() if isinstance(value, np.ndarray) else value))
        want = "an integer" if sizes == (1,) else (" or ".join(str(n) for n in sizes) if len(sizes) <= 2
                                                   else f"{sizes[0]} to {sizes[-1]}") + " integers"
        low = f" >= {minimum}" if minimum is not None else ""
        raise NIRError(f"{what}: expected {want}{low}, got {text}")
    return tuple(int(v) for v in arr)


def threshold_to_nir(v_threshold: float) -> float:
    """NIR's ``v_threshold`` for an edgesnn threshold.

    edgesnn fires when the float32 potential ``v >= float32(v_threshold)``; NIR fires when
    ``v > thr``. With ``thr`` the largest float32 below ``float32(v_threshold)`` the two conditions
    agree for every float32 ``v``.
    """
    return float(np.nextafter(np.float32(v_threshold), np.float32(-np.inf)))


def threshold_from_nir(thr: float) -> float:
    """edgesnn's ``v_threshold`` (``v >= t``) for a NIR threshold (``v > thr``).

    ``t`` is the smallest float32 strictly greater than ``thr``, so ``v >= t`` is ``v > thr`` for
    every float32 ``v``. Inverts :func:`threshold_to_nir` exactly.
    """
    t = np.float32(thr)
    if float(t) <= thr:  # thr is a float32 (or rounded down to one): step one float32 up
        t = np.nextafter(t, np.float32(np.inf))
    return float(t)
