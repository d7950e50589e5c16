"""A layer's output shape for one sample, without building a sample larger than the machine.

The planner (:mod:`edgesnn.planner.memory_model`) and the NIR import (:mod:`edgesnn.nir.from_nir`)
learn each layer's output shape by running one sample of zeros through it. A sample above
:data:`~edgesnn.memory_guard.META_PROBE_BYTES` runs on PyTorch's ``meta`` device (shapes only,
nothing allocated: an input of ``[3, 12000, 12000]`` is sized, not built); smaller ones run for
real, because the first meta call loads PyTorch machinery worth ~150 MiB of RSS on a CUDA build,
which a training process that plans its layers would otherwise carry.
"""

from __future__ import annotations

import math
from typing import Any, Tuple

import torch
from torch import nn
from torch.func import functional_call

from .fork_safe_lock import ForkSafeLock
from .memory_guard import META_PROBE_BYTES
from .user_state import evaluating

__all__ = ["probe_output"]

#: One probe at a time in the process: a probe sets the module (and its children) to eval mode and
#: back, and two threads probing one model at once (planning it twice) left it in eval mode. A
#: forked child gets it unlocked.
_PROBE_LOCK = ForkSafeLock(reentrant=True)


def probe_output(module: nn.Module, in_shape: Tuple[int, ...], dtype: torch.dtype = torch.float32, *,
                 real_if_meta_fails: bool = False) -> Any:
    """``module(zeros([1, *in_shape], dtype))`` in eval mode without gradients (every submodule's
    mode is restored): a ``meta`` tensor when the sample is above ``META_PROBE_BYTES``, else a real one.

    A module meta tensors cannot run raises its own error, or with ``real_if_meta_fails`` runs the
    real sample instead (a custom layer the planner must still measure). Errors of the module or of
    the sample's shape (e.g. a 64-bit size overflow) propagate unchanged. Probes run one at a time
    (:data:`_PROBE_LOCK`); the module must not be running in another thread meanwhile.
    """
    with _PROBE_LOCK:
        return _probe(module, in_shape, dtype, real_if_meta_fails)


def _probe(module: nn.Module, in_shape: Tuple[int, ...], dtype: torch.dtype, real_if_meta_fails: bool) -> Any:
    big = math.prod(in_shape) * torch.empty(0, dtype=dtype).element_size() > META_PROBE_BYTES
    with evaluating(module), torch.no_grad():
        if big:
            try:
                meta = {k: v.to("meta") for k, v in module.state_dict(keep_vars=True).items()}
                return functional_call(module, meta, (torch.zeros(1, *in_shape, dtype=dtype, device="meta"),))
            except Exception:  # noqa: BLE001 - e.g. a kernel without a meta implementation
                if not real_if_meta_fails:
                    raise
        return module(torch.zeros(1, *in_shape, dtype=dtype))
