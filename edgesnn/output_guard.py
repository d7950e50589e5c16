"""Outputs that another process writes while a command works: never replaced silently.

A command checks its outputs when it starts (:func:`edgesnn.atomic.check_output`) but writes them
later: ``edgesnn train`` its ``--checkpoint`` after every epoch and its ``--json`` at the end,
``edgesnn-device`` its ``--out`` folder after every epoch, ``edgesnn export`` / ``edgesnn plan``
their outputs at the end. :class:`GuardedFile` and :class:`GuardedDir` record what the path held
when they are made, right after that check (nothing, or which file or folder), and are passed as
the path to :func:`~edgesnn.atomic.atomic_write` / :func:`~edgesnn.atomic.replace_dir` (they are
``os.PathLike``). Each write then puts the new output in place only

* if the path is still empty, when it was empty at the start: a file is created with ``os.link``
  and a folder renamed onto an absent or empty one, both atomic (never over what another process
  put there in between);
* or while it is still what the command found at the start (``--force``, ``--resume``) or what
  its own last write left there: the same file (device, inode, size, modification time), or a
  folder each of whose entries is either unchanged since then or carried into the new set (the
  device runner keeps other files of its ``--out``). This check runs just before the rename,
  the two under an exclusive lock on the output's folder
  (:func:`~edgesnn.file_locks.placement_lock`), so two processes replacing the same output
  cannot both pass it.

Otherwise the command stops with one line naming the flag (:class:`~edgesnn.errors.OutputChanged`,
a ``FileExistsError``), leaves the path as the other process left it and keeps its own new output
beside it as ``NAME.conflict-XXXXXXXX.EXT`` (a folder: ``NAME.conflict-XXXXXXXX``), named in the
message. Imports no torch: the device runner uses it.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

from .atomic import _real, _remove, _stem
from .errors import OutputChanged
from .file_locks import placement_lock
from .write_errors import _reason

__all__ = ["GuardedFile", "GuardedDir", "guarded"]

#: (device, inode, size, modification time in ns) of one file, folder or link (not followed).
Stamp = Tuple[int, int, int, int]

#: errno values of ``os.link`` on a file system without hard links (FAT, some network shares).
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


def _stamp(st: os.stat_result) -> Stamp:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def file_stamp(path: Union[str, Path]) -> Optional[Stamp]:
    """``path``'s :data:`Stamp` (the link itself for a symlink), ``None`` when nothing is there."""
    try:
        return _stamp(os.lstat(path))
    except (FileNotFoundError, NotADirectoryError):
        return None


def _listing(folder: Path) -> Dict[str, Stamp]:
    """Name -> :data:`Stamp` of ``folder``'s entries; empty for an absent or empty folder (or a file:
    :meth:`GuardedDir.check_swap` then finds something it did not expect)."""
    try:
        return {e.name: _stamp(e.stat(follow_symlinks=False)) for e in os.scandir(folder)}
    except (FileNotFoundError, NotADirectoryError):
        return {}


def _kept_name(real: Path, folder: bool) -> Path:
    """A new, unused ``NAME.conflict-XXXXXXXX.EXT`` beside ``real`` (created empty, to be replaced)."""
    suffix = "" if folder else real.suffix
    stem = real.name[:len(real.name) - len(suffix)] if suffix else real.name
    prefix = f"{_stem(stem)}.conflict-"
    if folder:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=real.parent))
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=real.parent)
    os.close(fd)
    return Path(name)


def _keep(tmp: Union[str, Path], real: Path, folder: bool) -> Path:
    """Rename ``tmp`` to a new ``NAME.conflict-XXXXXXXX.EXT`` beside ``real``; where that fails (disk
    full, read-only) the empty name made for it is removed again and the ``OSError`` raised."""
    kept = _kept_name(real, folder)
    try:
        os.replace(tmp, kept)
    except OSError:
        _remove(kept)
        raise
    return kept


class _Guarded(os.PathLike):
    """What one output path held when the command started; the path for every writer (``os.fspath``)."""

    folder = False

    def __init__(self, path: Union[str, os.PathLike], flag: str) -> None:
        self.path = Path(path)
        self.flag = flag
        self.written = False  # whether this command has written it since

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {self.flag!r})"

    def conflict(self, tmp: Union[str, Path], real: Path, appeared: bool) -> OutputChanged:
        """Keep the finished ``tmp`` as ``NAME.conflict-XXXXXXXX.EXT`` beside ``real``; the one-line error
        to raise. Where it cannot be kept (disk full, read-only) the line says so and ``tmp`` stays for
        the caller to remove."""
        since = "this run last wrote it" if self.written else "this run started"
        empty = "absent or an empty folder" if self.folder else "absent"
        how = (f"appeared while this run worked (it was {empty} when {since})" if appeared
               else f"was changed by another process after {since}")
        head = f"{self.flag}: {self.path} {how}, so it was left as it is; this run's output"
        try:
            kept = _keep(tmp, real, self.folder)
        except OSError as exc:
            return OutputChanged(f"{head} could not be kept beside it ({_reason(exc)})")
        if _real(self.path.parent) == real.parent:  # beside the path as given (not through a symlink)
            kept = self.path.parent / kept.name
        return OutputChanged(f"{head} is kept in {kept} (move it where you want it, or use another {self.flag})")


class GuardedFile(_Guarded):
    """A file output: created only while absent when it was absent at the start, else replaced only
    while it is the file found at the start or last written here (see the module's docstring)."""

    def __init__(self, path: Union[str, os.PathLike], flag: str) -> None:
        super().__init__(path, flag)
        self.expected = file_stamp(_real(self.path))

    def place_file(self, tmp: str, real: Path) -> None:
        """Rename the finished temp file ``tmp`` (beside ``real``) to ``real`` as the guard allows;
        else keep it under another name and raise :class:`~edgesnn.errors.OutputChanged`."""
        new = file_stamp(tmp)
        with placement_lock(real):  # the check and the rename as one step for other guarded writers
            current = file_stamp(real)
            if current is None or self.expected is None:
                placed = _create(tmp, real)
            elif current == self.expected:
                os.replace(tmp, real)
                placed = True
            else:
                placed = False
        if not placed:
            raise self.conflict(tmp, real, appeared=self.expected is None)
        self.expected, self.written = new, True


def _create(tmp: str, real: Path) -> bool:
    """``real`` created from ``tmp`` only if nothing is there: ``os.link`` (atomic), or where the
    file system has no hard links a check and a rename. False when something is there."""
    try:
        os.link(tmp, real)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        if os.path.lexists(real):
            return False
        os.replace(tmp, real)
        return True
    try:
        os.unlink(tmp)
    except OSError:  # read-only since the link: the output is in place, the next write removes tmp
        pass
    return True


class GuardedDir(_Guarded):
    """A folder output (see the module's docstring): its swap goes ahead only while every entry of the
    folder is one this command found at the start or last put there, unchanged, or is carried into
    the new set (the same file, or a link to the same place or a folder of the same name)."""

    folder = True

    def __init__(self, path: Union[str, os.PathLike], flag: str) -> None:
        super().__init__(path, flag)
        self.expected: Dict[str, Stamp] = _listing(_real(self.path))
        self._pending: Dict[str, Stamp] = {}

    def check_swap(self, tmp: Path, real: Path) -> bool:
        """Before ``tmp`` replaces ``real``: raise :class:`~edgesnn.errors.OutputChanged` (``tmp`` kept
        under another name) if the swap would lose something; returns whether ``real`` held anything."""
        here = _listing(real)
        if os.path.lexists(real) and not os.path.isdir(real):
            raise self.conflict(tmp, real, appeared=True)
        if any(self.expected.get(name) != st and not _carried(real, tmp, name, st) for name, st in here.items()):
            raise self.conflict(tmp, real, appeared=not self.expected)
        self._pending = _listing(tmp)
        return bool(here)

    def swapped(self) -> None:
        """The swap is done: the folder now holds what ``tmp`` held."""
        self.expected, self.written = self._pending, True


def _carried(real: Path, tmp: Path, name: str, st: Stamp) -> bool:
    """Whether ``real``'s entry ``name`` (stamp ``st``) is in ``tmp`` too: the same file (a hard
    link, or a copy of the same size and time), a link to the same place, or a folder."""
    try:
        there = os.lstat(tmp / name)
        mode = os.lstat(real / name).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return False
    if stat.S_ISDIR(mode):
        return stat.S_ISDIR(there.st_mode)
    if stat.S_ISLNK(mode):
        return stat.S_ISLNK(there.st_mode) and os.readlink(tmp / name) == os.readlink(real / name)
    return (there.st_dev, there.st_ino) == st[:2] or (there.st_size, there.st_mtime_ns) == st[2:]


def guarded(path: Union[str, os.PathLike, None], flag: str, directory: bool = False) -> Optional[_Guarded]:
    """``path`` as a :class:`GuardedDir` / :class:`GuardedFile` (``None`` stays ``None``; a guard is kept)."""
    if path is None or isinstance(path, _Guarded):
        return path
    return GuardedDir(path, flag) if directory else GuardedFile(path, flag)
