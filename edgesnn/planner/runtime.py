"""Process-level settings that make peak RSS follow the planner's storage replay.

glibc raises its mmap threshold dynamically (up to 32 MiB) after large blocks are freed; blocks
below it then come from the heap, stay resident after ``free`` and fragment, so peak RSS drifts
up by 20-30% over the first steps. Pinning the threshold (as the ``MALLOC_MMAP_THRESHOLD_``
environment variable does) makes every large tensor an mmap that is returned on free.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["lean_allocator"]

_M_MMAP_THRESHOLD = -3


def lean_allocator(threshold_bytes: int = 128 * 1024) -> bool:
    """Pin glibc's mmap threshold to ``threshold_bytes``; returns False where that is not possible."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold_bytes)))
    except (OSError, AttributeError):
        return False
