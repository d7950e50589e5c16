"""Atomic file writes (temp file beside the target + rename). Imports no torch: the device runner uses it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

__all__ = ["atomic_write"]

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write a file through ``write(fh)`` into a temp file beside ``path``, then rename it over ``path``.

    A crash or an exception in ``write`` leaves either the old file or the new one, never a
    truncated mix, and no temp file. The new file gets ordinary permissions (``0666 & ~umask``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
