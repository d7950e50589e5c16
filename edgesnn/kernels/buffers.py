"""Reused output buffers for the CPU kernels: no fresh, page-faulting memory on every call.

A training step hands out the same large tensors every step (a layer's output ``[T, B, N]``, the
gradient of its input). Served by the C allocator, each one above glibc's mmap threshold is fresh
memory from the kernel every time: on the 2-core test VM writing 16.8 MB of fresh pages cost ~5 ms,
more than the fused kernel that fills them. The pool keeps the storage of such outputs and hands it
out again once nothing else references it any more (the storage's reference count is back to the
pool's own), so the next step writes into pages that are already mapped.

Safety: a buffer is reused only when no tensor, view, saved-for-backward value, ``.grad`` or NumPy
array refers to its storage; a tensor handed out is an ordinary (non-view) tensor. What the pool
keeps idle is capped (:func:`set_pool_limit`, default 64 MiB, ``EDGESNN_BUFFER_POOL_MB``; 0 turns
the pool off); :func:`release` frees every idle buffer. Outputs below 1 MiB come from the allocator
as usual (its free lists already reuse them).
"""

from __future__ import annotations

import math
import os
import threading
from typing import Dict, List, Optional, Tuple

import torch

__all__ = ["empty", "set_pool_limit", "pool_limit", "release", "pool_bytes"]

_MIN_BYTES = 1 << 20
_lock = threading.Lock()
_pool: Dict[Tuple[int, torch.dtype], List[torch.UntypedStorage]] = {}
_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _env_limit() -> int:
    raw = os.environ.get("EDGESNN_BUFFER_POOL_MB", "64")
    try:
        mb = float(raw)
    except ValueError:
        mb = 64.0
    return max(0, int(mb * (1 << 20)))


_limit = _env_limit() if _use_count is not None else 0


def _idle(st: torch.UntypedStorage) -> bool:
    # the pool's own Python storage object is the only reference
    return _use_count(st._cdata) == 1


def pool_limit() -> int:
    """Bytes of idle buffers the pool may keep (0: off)."""
    return _limit


def set_pool_limit(max_bytes: int) -> None:
    """Cap what the pool keeps (bytes; 0 turns it off and frees every idle buffer)."""
    global _limit
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise ValueError(f"max_bytes: expected an integer >= 0, got {max_bytes!r}")
    _limit = max_bytes if _use_count is not None else 0
    if _limit == 0:
        release()


def pool_bytes() -> int:
    """Bytes of storage the pool holds (in use or idle)."""
    with _lock:
        return sum(st.nbytes() for lst in _pool.values() for st in lst)


def _drop_idle(limit: Optional[int] = None) -> int:
    """Free idle buffers (all of them, or until the pool holds at most ``limit`` bytes); returns
    the bytes the pool still holds. Caller holds ``_lock``."""
    total = sum(st.nbytes() for lst in _pool.values() for st in lst)
    for key in list(_pool):
        keep = []
        for st in _pool[key]:
            if (limit is None or total > limit) and _idle(st):
                total -= st.nbytes()
            else:
                keep.append(st)
        if keep:
            _pool[key] = keep
        else:
            del _pool[key]
    return total


def release() -> int:
    """Free every idle buffer; returns the bytes freed (buffers still in use stay pooled)."""
    with _lock:
        before = sum(st.nbytes() for lst in _pool.values() for st in lst)
        return before - _drop_idle()


def _make_room(nbytes: int) -> bool:
    """Drop idle buffers until ``nbytes`` more fit under the limit."""
    return _drop_idle(_limit - nbytes) + nbytes <= _limit


def empty(shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised contiguous CPU tensor, from the pool when it is large enough."""
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    itemsize = torch.empty((), dtype=dtype).element_size() if dtype != torch.float32 else 4
    nbytes = n * itemsize
    if _limit == 0 or nbytes < _MIN_BYTES:
        return torch.empty(shape, dtype=dtype)
    key = (nbytes, dtype)
    with _lock:
        st = None
        for cand in _pool.get(key, ()):
            if _idle(cand):
                st = cand
                break
        if st is None:
            st = torch.UntypedStorage(nbytes)
            if _make_room(nbytes):
                _pool.setdefault(key, []).append(st)
        return torch.empty(0, dtype=dtype).set_(st, 0, shape)
