"""``edgesnn export --format checkpoint``: the checks a device runner's ``params.npz`` passes before
its arrays become the weights of a new edgesnn checkpoint.

The runners write every trainable parameter and the frozen BatchNorm statistics
(``running_mean`` / ``running_var``) as float32, by their PyTorch ``state_dict`` names. So the file
must hold **every trainable parameter** of the checkpoint's model; a buffer it lacks (such as
BatchNorm's ``num_batches_tracked``, which no graph reads) keeps the checkpoint's value. A name the
model does not have, another shape, a dtype that is not real floating point (integer for an
integer buffer), or a NaN / Inf value is refused in one line naming the array and the file.
"""

from __future__ import annotations

from typing import Dict, Iterable, List

import numpy as np
import torch
from torch import nn

from ..errors import UsageError

__all__ = ["merged_state"]


def _names(names: List[str], limit: int = 4) -> str:
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _refuse_unknown(arrays: Iterable[str], state: Dict[str, torch.Tensor], source: str) -> None:
    unknown = sorted(set(arrays) - set(state))
    if unknown:
        raise UsageError(f"{source}: holds arrays the model does not have: {_names(unknown)}")


def _refuse_missing(arrays: Iterable[str], trainable: List[str], source: str) -> None:
    given = set(arrays)
    missing = [n for n in trainable if n not in given]
    if missing:
        raise UsageError(f"{source}: lacks {len(missing)} of the model's {len(trainable)} trainable parameters "
                         f"({_names(missing)}); expected the params.npz the device runner writes (it holds them all)")


def _check_kind(arr: np.ndarray, ref: torch.Tensor, where: str) -> None:
    """Real floating point for a floating tensor, integer for an integer buffer."""
    if ref.is_floating_point():
        if arr.dtype.kind != "f":
            raise UsageError(f"{where}: expected real floating-point values (the model holds {ref.dtype}), "
                             f"got dtype {arr.dtype}")
    elif arr.dtype.kind not in "iu":
        raise UsageError(f"{where}: expected integer values (the model holds {ref.dtype}), got dtype {arr.dtype}")


def _tensor(arr: np.ndarray, ref: torch.Tensor, where: str) -> torch.Tensor:
    """``arr`` as a tensor of ``ref``'s dtype, after the kind, shape and finiteness checks."""
    _check_kind(arr, ref, where)
    if tuple(arr.shape) != tuple(ref.shape):
        raise UsageError(f"{where}: shape {tuple(arr.shape)}, the model expects {tuple(ref.shape)}")
    native = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))  # torch reads native byte order only
    value = torch.from_numpy(native).to(ref.dtype)
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise UsageError(f"{where}: holds {bad} NaN or Inf value{'s' * (bad > 1)} (as {ref.dtype}); "
                         "refusing to import diverged weights")
    return value


def merged_state(model: nn.Module, arrays: Dict[str, np.ndarray], source: str) -> Dict[str, torch.Tensor]:
    """``model``'s ``state_dict`` with the checked ``arrays`` in place of its values.

    Args:
        model: the checkpoint's model (its state supplies the names, shapes, dtypes and the
            values of buffers ``arrays`` lacks).
        arrays: name -> array, as read from the ``.npz``.
        source: names the file in errors, e.g. ``"--params DIR/params.npz"``.
    """
    state = model.state_dict()
    _refuse_unknown(arrays, state, source)
    _refuse_missing(arrays, [n for n, _ in model.named_parameters()], source)
    return {name: _tensor(arrays[name], value, f"{source}: array {name}") if name in arrays else value
            for name, value in state.items()}
