"""Reused output buffers for the CPU kernels: no fresh, page-faulting memory on every call.

A training step hands out the same large tensors every step (a layer's output ``[T, B, N]``, the
gradient of its input). Served by the C allocator, each one above glibc's mmap threshold is fresh
memory from the kernel every time: on the 2-core test VM writing 16.8 MB of fresh pages cost ~5 ms,
more than the fused kernel that fills them. The pool keeps the storage of such outputs and hands it
out again once nothing else references it any more (the storage's reference count is back to the
pool's own), so the next step writes into pages that are already mapped.

Safety: a buffer is reused only when no tensor, view, saved-for-backward value, ``.grad``, NumPy
array or kept ``tensor.untyped_storage()`` object refers to its storage (both the C++ use count and
the Python reference count of the pool's storage object are the pool's own), and only while it is
still the plain CPU memory the pool allocated: a storage moved into shared memory (what
``share_memory_()`` does, in place, when a DataLoader worker or a ``multiprocessing`` queue sends a
tensor: another process may still read it), or whose data pointer or size changed, is dropped from
the pool and never handed out again. A tensor handed out is an ordinary (non-view) tensor. What the
pool keeps idle is capped (:func:`set_pool_limit`, default 64 MiB, ``EDGESNN_BUFFER_POOL_MB``: a
number of MiB >= 0, 0 turns the pool off; any other value warns once and uses the default);
:func:`release` frees every idle buffer. Outputs below 1 MiB come from the allocator as usual (its
free lists already reuse them).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import warnings
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

__all__ = ["empty", "set_pool_limit", "pool_limit", "release", "pool_bytes", "unpooled"]

_MIN_BYTES = 1 << 20
_DEFAULT_MB = 64
_lock = threading.Lock()
# per (nbytes, dtype): [storage, data pointer it was allocated with]
_pool: Dict[Tuple[int, torch.dtype], List[List]] = {}
_use_count = getattr(torch._C, "_storage_Use_Count", None)
_thread = threading.local()  # .unpooled: inside unpooled() in this thread


def _env_limit() -> int:
    """``EDGESNN_BUFFER_POOL_MB`` in bytes. Read at import, so it never raises: a value that is not
    a finite number >= 0 warns once (one line naming the variable) and gives the default."""
    raw = os.environ.get("EDGESNN_BUFFER_POOL_MB")
    if raw is None or not raw.strip():
        return _DEFAULT_MB << 20
    try:
        mb = float(raw)
    except ValueError:
        mb = float("nan")
    if not math.isfinite(mb) or mb < 0:
        warnings.warn(f"EDGESNN_BUFFER_POOL_MB={raw!r} ignored: expected a number of MiB >= 0 (0 turns the "
                      f"buffer pool off); using the default {_DEFAULT_MB}", RuntimeWarning, stacklevel=2)
        return _DEFAULT_MB << 20
    return int(mb * (1 << 20))


_limit = _env_limit() if _use_count is not None else 0


def _py_refs(entry: List) -> int:
    """Python references to the storage object in a pool entry (``entry[0]``)."""
    return sys.getrefcount(entry[0])


# What _py_refs reports when the pool's entry is the only holder of the storage object: measured
# once with the same call (the temporaries of the call itself differ between Python versions).
_POOL_ONLY_REFS = _py_refs([torch.UntypedStorage(0), 0])


def _still_ours(entry: List) -> bool:
    """The storage is still the plain CPU memory the pool allocated: not moved into shared memory
    (another process may read it), not resized, not re-pointed."""
    st = entry[0]
    try:
        return not st.is_shared() and st.data_ptr() == entry[1] and st.device.type == "cpu"
    except RuntimeError:  # pragma: no cover - a storage torch cannot inspect: not ours any more
        return False


def _idle(entry: List) -> bool:
    """Nothing outside the pool refers to the storage: the C++ use count is the pool's Python object
    alone, and that object is referenced only by the pool (not by a kept ``untyped_storage()``)."""
    return _use_count(entry[0]._cdata) == 1 and _py_refs(entry) == _POOL_ONLY_REFS


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
        return sum(e[0].nbytes() for lst in _pool.values() for e in lst)


def _drop_idle(limit: Optional[int] = None) -> int:
    """Free idle buffers (all of them, or until the pool holds at most ``limit`` bytes) and forget
    every buffer that is no longer the pool's own memory (:func:`_still_ours`); returns the bytes
    the pool still holds. Caller holds ``_lock``."""
    for key in list(_pool):
        _pool[key] = [e for e in _pool[key] if _still_ours(e)]
    total = sum(e[0].nbytes() for lst in _pool.values() for e in lst)
    for key in list(_pool):
        keep = []
        for e in _pool[key]:
            if (limit is None or total > limit) and _idle(e):
                total -= e[0].nbytes()
            else:
                keep.append(e)
        if keep:
            _pool[key] = keep
        else:
            del _pool[key]
    return total


def release() -> int:
    """Free every idle buffer; returns the bytes freed (buffers still in use stay pooled)."""
    with _lock:
        before = sum(e[0].nbytes() for lst in _pool.values() for e in lst)
        return before - _drop_idle()


def _make_room(nbytes: int) -> bool:
    """Drop idle buffers until ``nbytes`` more fit under the limit."""
    return _drop_idle(_limit - nbytes) + nbytes <= _limit


def empty(shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised contiguous CPU tensor of ``shape`` (any dims), from the pool when it is large enough."""
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    itemsize = torch.empty((), dtype=dtype).element_size() if dtype != torch.float32 else 4
    nbytes = n * itemsize
    if _limit == 0 or nbytes < _MIN_BYTES or getattr(_thread, "unpooled", False):
        return torch.empty(shape, dtype=dtype)
    key = (nbytes, dtype)
    with _lock:
        st = None
        entries = _pool.get(key)
        if entries:  # forget buffers shared with another process (or re-pointed): never reused
            entries[:] = [e for e in entries if _still_ours(e)]
        for cand in entries or ():
            if _idle(cand):
                st = cand[0]
                break
        if st is None:
            st = torch.UntypedStorage(nbytes)
            if _make_room(nbytes):
                _pool.setdefault(key, []).append([st, st.data_ptr()])
        return torch.empty(0, dtype=dtype).set_(st, 0, shape)


@contextlib.contextmanager
def unpooled() -> Iterator[None]:
    """Within the block (this thread only), :func:`empty` takes fresh tensors from the allocator: for a
    pass whose outputs die layer by layer (an evaluation under ``no_grad``), where pooled ones would stay
    idle in the pool, up to its limit, instead of going back to the allocator. Buffers handed out before
    stay pooled."""
    before = getattr(_thread, "unpooled", False)
    _thread.unpooled = True
    try:
        yield
    finally:
        _thread.unpooled = before
