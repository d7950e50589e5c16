"""One lock per output folder around a guarded output's check and rename (:mod:`edgesnn.output_guard`).

Two processes replacing the same output (two ``--force`` or ``--resume`` runs of one checkpoint)
each checked that the file was still the one they found and then renamed theirs onto it; both
could pass the check before either renamed, and one write was lost without a word (about 1 in 15
tries with both writing at once). :func:`placement_lock` makes the check and the rename one step
for such writers: an exclusive ``flock`` on the output's folder, held for the microseconds they
take. Where the folder cannot be opened or locked (no ``fcntl``, a file system without locks) the
placement goes ahead unlocked, as before. Imports only the standard library (the device runner
uses it).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Optional

try:
    import fcntl
except ImportError:  # (not POSIX)
    fcntl = None

__all__ = ["placement_lock"]


@contextlib.contextmanager
def placement_lock(real: Path) -> Iterator[None]:
    """Hold an exclusive lock on the folder of the output ``real`` (a ``Path``) for the ``with`` block;
    it waits while another process holds it."""
    fd: Optional[int] = None
    if fcntl is not None:
        try:
            fd = os.open(Path(real).parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            if fd is not None:
                os.close(fd)
            fd = None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)
