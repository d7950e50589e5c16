"""A buffer pool in a known state for tests that count its bytes or its reuse."""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator

import pytest

from edgesnn.kernels import buffers


@contextlib.contextmanager
def isolated_pool(limit_bytes: int) -> Iterator[None]:
    """Run with the pool capped at ``limit_bytes``, holding nothing idle that an earlier test left,
    and with the cyclic garbage collector off: an earlier test's pooled tensor held by a reference
    cycle, freed by a collection in the middle of a test, would be reused there and change what the
    test counts (seen once in CI, torch 2.15 leg). Skips where this torch has no pool."""
    old = buffers.pool_limit()
    gc.collect()
    buffers.release()
    buffers.set_pool_limit(limit_bytes)
    if limit_bytes and buffers.pool_limit() == 0:
        buffers.set_pool_limit(old)
        pytest.skip("this PyTorch has no storage use count: the pool is off")
    held = buffers.pool_bytes()
    if held:  # a pooled tensor an earlier test still keeps alive: counts would not start at zero
        buffers.set_pool_limit(old)
        raise AssertionError(f"buffer pool not empty at test start: {held} bytes in use elsewhere")
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        buffers.set_pool_limit(0)
        buffers.set_pool_limit(old)
