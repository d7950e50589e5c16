"""Input validation shared by the functional core, the modules and the kernels.

Every error names the parameter and says what was expected.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Iterable, Optional, Tuple

import numpy as np
import torch

from ..float32_range import FLOAT32_MAX

__all__ = [
    "check_sequence", "check_state", "check_finite", "NonFiniteInputError", "NonFiniteGradientError",
    "all_finite", "eager", "autocast_on", "check_finite_input", "check_finite_grads", "is_real_number", "shown_number", "is_integer", "check_int", "check_flag",
    "check_params", "check_tensor",
]


def is_real_number(v: object) -> bool:
    """A finite real number within the float32 range: a Python or NumPy int or float, not a bool."""
    if not isinstance(v, numbers.Real) or isinstance(v, (bool, np.bool_)):
        return False
    f = float(v)
    return math.isfinite(f) and abs(f) <= FLOAT32_MAX


def shown_number(v: object) -> str:
    """``repr(v)`` for the error of a setting that must be a plain number (:func:`is_real_number`);
    for a tensor it says so and how to pass its value (settings are Python numbers, not tensors)."""
    if hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, numbers.Real):  # torch / NumPy array
        return f"{v!r} (a {type(v).__module__.split('.')[0]}.{type(v).__name__}: pass a Python number, e.g. value.item())"
    return repr(v)


def is_integer(v: object) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_int(value: object, name: str, minimum: int = 1, error: type = ValueError) -> int:
    """``value`` as an ``int >= minimum``: a Python or NumPy integer (anything with ``__index__``),
    not a bool, float or string; else ``error`` (one line naming ``name``)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        v = operator.index(value)
    except TypeError:
        v = None
    if v is None or v < minimum:
        raise error(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(v)


def check_flag(v: object, name: str) -> bool:
    """``v`` as a bool: a Python or NumPy bool, or the integers 0 / 1; anything else is an error
    naming ``name`` (a string such as ``'no'`` would otherwise count as true)."""
    if isinstance(v, (bool, np.bool_)) or (is_integer(v) and int(v) in (0, 1)):
        return bool(v)
    raise TypeError(f"{name}: expected True or False, got {v!r}")


def check_params(p: object, cls: type, expected: str, name: str = "p") -> None:
    """``TypeError`` naming ``name`` unless ``p`` is a ``cls`` (``expected`` names the class users
    pass: ``LIFParams`` / ``RevLIFParams``): a ``RevLIFParams`` where a ``LIFParams`` belongs (or a
    dict, or None) otherwise fails deep inside with an ``AttributeError``."""
    if not isinstance(p, cls):
        hint = " (its .lif holds the LIF part)" if hasattr(p, "lif") and expected == "LIFParams" else ""
        raise TypeError(f"{name}: expected a {expected}{hint}, got {type(p).__name__}")


def check_tensor(x: object, name: str) -> None:
    """``TypeError`` naming ``name`` unless ``x`` is a ``torch.Tensor`` (``torch.as_tensor`` converts
    NumPy arrays and lists)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor (torch.as_tensor converts arrays), got {type(x).__name__}")


_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_sequence(x: torch.Tensor, name: str = "x_seq", *, dtypes: Tuple[torch.dtype, ...] = _FLOAT_DTYPES) -> None:
    """Check a multi-step input ``[T, B, ...]`` (at least 3 dims, T >= 1, a floating dtype)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape [T, B, ...], got {type(x).__name__}")
    if x.dim() < 3:
        raise ValueError(
            f"{name}: expected a multi-step tensor of shape [T, B, N] or [T, B, C, ...] (at least 3 dims), "
            f"got shape {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name}: the number of time steps T (dim 0) must be >= 1, got shape {tuple(x.shape)}")
    check_dtype(x, name, dtypes)


def check_dtype(x: torch.Tensor, name: str, dtypes: Tuple[torch.dtype, ...] = _FLOAT_DTYPES) -> None:
    """One-line ``TypeError`` naming ``name`` unless the tensor ``x`` (any shape) has one of ``dtypes``."""
    if x.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        hint = ""
        if x.is_floating_point() and torch.float32 in dtypes:  # float16 / bfloat16 where only wider ones run
            hint = "; cast it with .float() (inside torch.autocast the edgesnn nodes do so themselves)"
        raise TypeError(f"{name}: expected a floating dtype ({allowed}), got {str(x.dtype).replace('torch.', '')}{hint}")


def check_state(v: Optional[torch.Tensor], x: torch.Tensor, name: str = "v0") -> None:
    """Check an initial state against its input: shape ``x.shape[1:]``, same dtype and device."""
    if v is None:
        return
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or None, got {type(v).__name__}")
    if tuple(v.shape) != tuple(x.shape[1:]):
        raise ValueError(f"{name}: expected shape {tuple(x.shape[1:])} (the input without its time dim), got {tuple(v.shape)}")
    if v.dtype != x.dtype or v.device != x.device:
        raise TypeError(f"{name}: expected dtype {x.dtype} on {x.device} like the input, got {v.dtype} on {v.device}")


def check_finite(x: torch.Tensor, name: str = "x_seq") -> None:
    """Raise :class:`NonFiniteInputError` (a ``ValueError``) if ``x`` (any shape) holds NaN or +-Inf (an O(numel)
    scan; modules call it when ``check_finite=True``): the class every backend raises for such an
    input, so ``check_finite=True`` does not change what a caller catches."""
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise NonFiniteInputError(f"{name}: expected finite values, found {bad} NaN/Inf element(s)")


# ----------------------------------------------------------------------------- numerics safety
#
# Every backend (reference, torch, numba, cuda) treats a non-finite input the same way: the forward
# raises NonFiniteInputError before any work. Every hand-written backward (torch, numba, cuda)
# checks its gradient outputs and raises NonFiniteGradientError rather than return NaN/Inf.
# Both scans are one ``torch.aminmax`` reduction (one read pass, no allocation; NaN propagates
# through min/max and +-Inf shows up as an extreme), about the cost of a memory copy.


class NonFiniteInputError(ValueError):
    """A layer's input or initial state holds NaN or +-Inf."""


class NonFiniteGradientError(FloatingPointError):
    """A backward pass produced (or received) NaN or +-Inf; no gradient is returned."""


def all_finite(x: torch.Tensor) -> bool:
    """``True`` if ``x`` holds no NaN/+-Inf: one ``aminmax`` reduction (no temporary tensor). A
    ``meta`` tensor (shapes only, e.g. for counting memory) has no values to check: ``True``."""
    if x.numel() == 0 or x.device.type == "meta":
        return True
    lo, hi = torch.aminmax(x.detach())
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def eager() -> bool:
    """``False`` while tracing, scripting, exporting to ONNX or compiling, where a data-dependent
    Python check would break the graph (the custom ops check inside themselves instead)."""
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
        return False
    compiler = getattr(torch, "compiler", None)
    return not (compiler is not None and compiler.is_compiling())


def autocast_on(x: torch.Tensor) -> bool:
    """``True`` inside ``torch.autocast`` for ``x``'s device type (``False`` for a device type
    autocast does not know); only ``x.device`` is read (any shape)."""
    try:
        return bool(torch.is_autocast_enabled(x.device.type))
    except (RuntimeError, TypeError):
        return False


def check_finite_input(x: torch.Tensor, name: str = "x_seq", layer: str = "LIF") -> None:
    """Raise :class:`NonFiniteInputError` (one line naming ``layer`` and ``name``) if ``x`` (any shape)
    holds NaN/+-Inf."""
    if not all_finite(x):
        xd = x.detach()
        nan = int(torch.isnan(xd).sum())
        inf = int(torch.isinf(xd).sum())
        raise NonFiniteInputError(
            f"{layer}: {name} holds non-finite values ({nan} NaN, {inf} +-Inf of {x.numel()} elements); "
            f"the layer input must be finite (check the preceding layer, the learning rate or the data)"
        )


def check_finite_grads(
    layer: str,
    grads: Iterable[Tuple[str, Optional[torch.Tensor]]],
    incoming: Iterable[Tuple[str, Optional[torch.Tensor]]] = (),
) -> None:
    """Raise :class:`NonFiniteGradientError` if any of ``grads`` (``(name, tensor)`` pairs, tensors of
    any shape, ``None`` skipped) holds NaN/+-Inf. ``incoming`` are the ``(name, tensor)`` gradients the backward
    received; they are scanned only on failure, to say where the non-finite values came from."""
    bad = [name for name, g in grads if g is not None and not all_finite(g)]
    if not bad:
        return
    came_in = [name for name, g in incoming if g is not None and not all_finite(g)]
    cause = (
        f"the incoming gradient ({', '.join(came_in)}) was already non-finite (a later layer or the loss produced it)"
        if came_in
        else "it arose inside this layer's backward (overflow of the surrogate gradient or a non-finite saved value)"
    )
    raise NonFiniteGradientError(f"{layer} backward: NaN/Inf in the gradient of {' and '.join(bad)}; {cause}")
