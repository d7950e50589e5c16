"""Exclusive ``flock``s on files and folders (the writers of :mod:`edgesnn.atomic`).

* A temp file's or temp folder's writer holds a lock on it (:func:`lock_path`), so the next run
  tells a dead writer's leftover (unlocked) from a live one's (:func:`lock_fd` without blocking).
* :func:`placement_lock` holds one lock per output folder around a guarded output's check and
  rename (:mod:`edgesnn.output_guard`). Two processes replacing the same output (two ``--force``
  or ``--resume`` runs of one checkpoint) each checked that the file was still the one they found
  and then renamed theirs onto it; both could pass the check before either renamed, and one write
  was lost without a word (about 1 in 15 tries with both writing at once). Under the lock the
  check and the rename are one step for such writers, for the microseconds they take.

Where locks do not work (no ``fcntl``, a file system without them) every function here gives up
quietly: leftovers are left alone, and placements go ahead unlocked, as before. Imports only the
standard library (the device runner uses it).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCKS_WORK", "lock_fd", "lock_path", "placement_lock"]

#: Whether this platform has ``flock`` (without it nothing here locks).
LOCKS_WORK = fcntl is not None


def lock_fd(fd: int, block: bool = True) -> bool:
    """``flock`` ``fd`` exclusively (held until every copy of ``fd`` is closed); False where it is
    held elsewhere (``block=False``) or locks are not supported."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except OSError:
        return False
    return True


def lock_path(path: Path) -> Optional[int]:
    """An fd holding the lock on the file or folder ``path`` (waiting while another process holds
    it), or ``None`` where it cannot be opened or locks do not work; close it to release."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0))
    except OSError:
        return None
    if lock_fd(fd):
        return fd
    os.close(fd)
    return None


@contextlib.contextmanager
def placement_lock(real: Path) -> Iterator[None]:
    """Hold the lock on the folder of the output ``real`` (a ``Path``) for the ``with`` block."""
    fd = lock_path(Path(real).parent)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)
