"""The one-line errors of a failed output write (disk full, size limit, read-only file system,
I/O error): ``cannot write PATH: reason``. Imports no torch: the device runner uses it."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Iterator, Optional, Union

from .errors import OutputChanged, first_line

__all__ = ["WriteError"]

PathLike = Union[str, os.PathLike]

#: errno -> the wording of a failed write's one-line error.
_ERRNO_WORDS = {errno.ENOSPC: "no space left on device", errno.EFBIG: "file too large (a file size limit was hit)",
                errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system", errno.EIO: "input/output error"}


class WriteError(OSError, ValueError):
    """Writing an output failed part-way (disk full, size limit, I/O error); the message is one
    line, ``cannot write PATH: reason``. A ``ValueError`` too, so every command line prints it as
    a user-facing error (:data:`edgesnn.errors.USER_ERRORS`)."""

    def __init__(self, message: str, code: Optional[int] = None) -> None:
        super().__init__(message)
        self.errno = code


def _reason(exc: OSError) -> str:
    """A failed file operation's cause in words (``no space left on device``, ``read-only file system``)."""
    return _ERRNO_WORDS.get(exc.errno or 0) or exc.strerror or first_line(exc)


def _os_failure(path: PathLike, exc: OSError) -> WriteError:
    """The one-line :class:`WriteError` ``cannot write PATH: reason`` for ``exc``."""
    return WriteError(f"cannot write {path}: {_reason(exc)}", exc.errno)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions behind it (``__cause__``, else ``__context__``), at most 8."""
    link: Optional[BaseException] = exc
    for _ in range(8):
        if link is None:
            return
        yield link
        link = link.__cause__ or link.__context__


def _write_failure(path: Path, exc: BaseException) -> Optional[WriteError]:
    """The one-line :class:`WriteError` for a failed write of ``path``, or ``None`` when ``exc``
    is not a write failure (a bug in the writer keeps its traceback). ``torch.save`` reports a
    short write as a ``RuntimeError`` whose context holds the ``OSError``."""
    if isinstance(exc, (OutputChanged, WriteError)):  # already its own one line (a WriteError: of its own file)
        return None
    for link in _chain(exc):
        if isinstance(link, OSError) and link.errno is not None:  # errno-less ones (io.UnsupportedOperation) are bugs
            return _os_failure(path, link)
    text = str(exc)
    if isinstance(exc, RuntimeError) and ("inline_container" in text or "PytorchStreamWriter" in text):
        return WriteError(f"cannot write {path}: the write was cut short (disk full or a file size limit?): "
                          f"{first_line(exc)}")
    return None


def _interrupt_in(exc: BaseException) -> Optional[KeyboardInterrupt]:
    """The Ctrl-C behind ``exc``, if any: ``torch.save``'s stream writer turns a ``KeyboardInterrupt``
    raised in its Python write call into ``RuntimeError: [enforce fail at inline_container.cc] unexpected
    pos`` (the interrupt kept as its context), which read as a failed write ("disk full?", exit 2)."""
    return next((link for link in _chain(exc) if isinstance(link, KeyboardInterrupt)), None)


def _swap_failure(exc: BaseException, built: bool) -> bool:
    """Whether ``exc``, raised in :func:`replace_dir`, is a failed write of its folder: any ``OSError``
    of the swap itself (``built``: the folder was complete), and from the ``write`` callback only a
    full disk, a size limit, a read-only file system or an I/O error (e.g. copying a file into it)."""
    if not isinstance(exc, OSError) or isinstance(exc, (WriteError, OutputChanged)) or exc.errno is None:
        return False
    return built or exc.errno in _ERRNO_WORDS
