"""A process-wide lock that a forked child gets fresh.

A module-level ``threading.Lock`` held by another thread at the moment of an ``os.fork`` stays
held for ever in the child (the thread that would release it was not copied), so the child's
first use waits for ever: a DataLoader worker forked while a training thread launched a kernel,
for instance. :class:`ForkSafeLock` replaces its inner lock in every forked child
(``os.register_at_fork``; the child starts with one thread, so nothing else can hold it there).
Used by the kernel launcher, the memory-optimized blocks and the shape probe.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Union

__all__ = ["ForkSafeLock"]


class ForkSafeLock:
    """A ``threading.Lock`` (or ``RLock`` with ``reentrant=True``) renewed, unlocked, in a forked
    child. Use it as a context manager, or with :meth:`acquire` / :meth:`release`. Meant for
    module-level locks: each instance registers one fork hook for the life of the process."""

    __slots__ = ("_reentrant", "_lock", "__weakref__")

    def __init__(self, reentrant: bool = False) -> None:
        self._reentrant = reentrant
        self._lock: Union["threading.Lock", "threading.RLock"] = self._new()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._renew)

    def _new(self) -> Any:
        return threading.RLock() if self._reentrant else threading.Lock()

    def _renew(self) -> None:
        self._lock = self._new()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock (as ``threading.Lock.acquire``; ``timeout`` in seconds, -1: no limit)."""
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        """Release the lock taken by :meth:`acquire`."""
        self._lock.release()

    def __enter__(self) -> "ForkSafeLock":
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
