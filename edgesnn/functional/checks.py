"""Input validation shared by the functional core, the modules and the kernels.

Every error names the parameter and says what was expected.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["check_sequence", "check_state", "check_finite"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_sequence(x: torch.Tensor, name: str = "x_seq", *, dtypes=_FLOAT_DTYPES) -> None:
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
    if x.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name}: expected a floating dtype ({allowed}), got {str(x.dtype).replace('torch.', '')}")


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
    """Raise if ``x`` holds NaN or +-Inf (an O(numel) scan; modules call it when ``check_finite=True``)."""
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name}: expected finite values, found {bad} NaN/Inf element(s)")
