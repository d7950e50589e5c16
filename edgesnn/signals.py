"""Signals held back around a step that must not be cut in two (a folder swap's two renames, a
run's bookkeeping after it): :func:`deferred_signals`."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator, List

__all__ = ["deferred_signals"]


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM (unless ignored; the default that ends the process included) until
    the block ends, then deliver them again under the handlers they had. Main thread only (Python
    runs handlers there, whichever thread the signal hit); elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: List[int] = []
    saved = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        old = signal.getsignal(sig)
        if old not in (signal.SIG_IGN, None):
            saved[sig] = old
            signal.signal(sig, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)
        for sig in dict.fromkeys(pending):
            signal.raise_signal(sig)
