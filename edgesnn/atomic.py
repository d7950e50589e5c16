"""Atomic file writes (temp file beside the target + rename) and the checks every output goes through.

An output that is a symlink is written through: the temp file goes beside the link's final
target and replaces it, so the link stays and shows the new content. Imports no torch: the
device runner uses it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

from .errors import OutputChanged, UsageError
from .file_locks import LOCKS_WORK, lock_fd, lock_path, placement_lock
from .signals import deferred_signals
from .write_errors import WriteError, _interrupt_in, _os_failure, _swap_failure, _write_failure

__all__ = ["atomic_write", "atomic_fill", "check_output", "check_input_file", "check_not_inside", "recover_dir", "replace_dir", "WriteError", "OutputChanged"]

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: bytes of a target's name kept in its temp files' names (``.NAME.XXXXXXXX.tmp.old`` must fit NAME_MAX, 255)
_STEM_BYTES = 200


def _stem(name: str) -> str:
    """``name`` as its temp files' names hold it: as is when short, else cut (at a character) and
    followed by ``~`` and a hash of the whole name, so a long name still gets a temp file beside it."""
    raw = os.fsencode(name)
    if len(raw) <= _STEM_BYTES:
        return name
    cut = name
    while len(os.fsencode(cut)) > _STEM_BYTES - 9:
        cut = cut[:-1]
    return f"{cut}~{hashlib.sha1(raw).hexdigest()[:8]}"


#: A leftover younger than this (seconds) is never removed: its writer may have created it an
#: instant ago and not yet taken its lock.
_STALE_AFTER_S = 2.0


def _temp_names(name: str, ours: bool = False) -> "re.Pattern[str]":
    """The temp files / folders of the target ``name``: ``.STEM.XXXX.tmp`` and ``.STEM.XXXX.tmp.old``
    (``XXXX`` has no ``.``, so another target's ``.STEM.x.XXXX.tmp`` does not match). ``ours``: only
    the names ``tempfile`` gives them (``XXXX`` eight of ``[a-z0-9_]``), for removing them."""
    tag = "[a-z0-9_]{8}" if ours else "[A-Za-z0-9_]+"
    return re.compile(rf"\.{re.escape(_stem(name))}\.{tag}\.tmp(\.old)?")


def _clear_leftovers(real: Path) -> None:
    """Remove what a killed writer (SIGKILL, power loss, SIGTERM without a handler) of ``real`` left
    beside it: its temp files / folders (``.NAME.XXXX.tmp``: only those no live writer holds locked
    and older than :data:`_STALE_AFTER_S`) and, while ``real`` exists, folders a swap left aside
    (``.NAME.XXXX.tmp.old``: :func:`recover_dir` brings one back only while ``real`` is missing).
    Best effort: nothing here fails a write."""
    if not LOCKS_WORK:  # a dead writer's temp file cannot be told from a live one's: left alone
        return
    pattern, now = _temp_names(real.name, ours=True), time.time()
    try:
        entries = [e for e in os.scandir(real.parent) if pattern.fullmatch(e.name)]
    except OSError:
        return
    for entry in entries:
        path = Path(entry.path)
        try:
            if entry.name.endswith(".old"):
                if os.path.lexists(real) and entry.is_dir(follow_symlinks=False):
                    _remove(path)
                continue
            if entry.is_symlink() or now - entry.stat(follow_symlinks=False).st_mtime < _STALE_AFTER_S:
                continue
            fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if entry.is_dir(follow_symlinks=False) else 0))
        except OSError:
            continue
        try:
            if lock_fd(fd, block=False):  # no live writer holds it
                _remove(path)
        finally:
            os.close(fd)


def is_path_value(value: Any) -> bool:
    """``value`` can name a file or folder: a non-empty ``str`` or ``os.PathLike`` (what the Python
    API's path arguments check before a deep ``TypeError`` from ``pathlib``)."""
    return isinstance(value, (str, os.PathLike)) and bool(os.fspath(value))


def user_path(value: str) -> str:
    """An argparse ``type`` for the commands' path flags: a leading ``~`` / ``~user`` expanded.

    A shell expands ``~`` only at the start of a word, so ``--checkpoint=~/ck.pt`` or a quoted
    ``"~/ck.pt"`` used to reach edgesnn as is and made a folder literally named ``~``; the data and
    cache folders were already expanded. Nothing else changes (a trailing ``/`` is kept)."""
    return os.path.expanduser(value)


def _real(path: Path) -> Path:
    """``path`` with every symlink resolved (a dangling link gives the path it points at)."""
    return Path(os.path.realpath(path))


def atomic_write(path: PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write a file through ``write(fh)`` into a temp file beside ``path``, then rename it over ``path``.

    An exception in ``write`` leaves the old file (or none) and removes the temp file; a failed
    write (disk full, file size limit, I/O error: an ``OSError``, or the ``RuntimeError``
    ``torch.save`` raises for a short write) becomes one :class:`WriteError` line. A process
    killed outright (SIGKILL, power loss) still leaves the old file or the new one, never a
    truncated mix, but may leave its hidden temp file ``.NAME.*.tmp`` beside the target (a NAME
    over 200 bytes is cut there and followed by ``~`` and a hash of it); the next write of the
    same target removes it (once no live process holds its lock and it is 2 s old).

    A symlinked ``path`` is written through (its final target is replaced; the link stays). The
    new file keeps an existing file's permission bits; a fresh one gets ``0666 & ~umask``. A
    :class:`edgesnn.output_guard.GuardedFile` as ``path`` replaces only what it expects there.
    """
    place = getattr(path, "place_file", os.replace)
    path = Path(path)
    real = _real(path)
    try:
        perms = os.stat(real).st_mode & 0o7777
    except OSError:
        perms = 0o666 & ~_umask()
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        _clear_leftovers(real)
        fd, tmp = tempfile.mkstemp(prefix=f".{_stem(real.name)}.", suffix=".tmp", dir=real.parent)
    except OSError as exc:
        raise _os_failure(path, exc) from None
    try:
        lock = os.dup(fd)  # held until the rename: a later run removes the temp file only once we are gone
    except OSError:
        lock = None
    else:
        lock_fd(lock)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, perms)  # mkstemp creates 0600
        place(tmp, real)
    except BaseException as exc:
        _unlink_quietly(tmp)  # a read-only file system keeps it: the next write removes it
        interrupt = _interrupt_in(exc)
        if interrupt is not None and interrupt is not exc:
            raise interrupt from None  # Ctrl-C inside torch.save's writer: an interrupt, not a failed write
        failure = _write_failure(path, exc) if isinstance(exc, Exception) else None
        if failure is not None:
            raise failure from None
        raise
    finally:
        if lock is not None:
            os.close(lock)
    return path


def _unlink_quietly(path: PathLike) -> None:
    """Remove the file ``path`` if it is there; a failure (a file system gone read-only) is ignored."""
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_fill(path: PathLike, fill: Callable[[Path], None]) -> Path:
    """Create ``path`` through ``fill(tmp)``, which writes the file by name (e.g. a NumPy memory map
    streamed sample by sample), in a temp file beside ``path``; then rename it over ``path``.

    As :func:`atomic_write`: the temp file ``.NAME.XXXX.tmp`` is locked while ``fill`` runs, leftovers
    of killed writers of ``path`` are removed first, an exception in ``fill`` removes the temp file
    and leaves ``path`` as it was. Unlike it, exceptions pass through unchanged (``fill`` reads
    sources whose errors are not write failures) and the new file gets ``0666 & ~umask``.
    """
    real = _real(Path(path))
    real.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(real)
    fd, tmp = tempfile.mkstemp(prefix=f".{_stem(real.name)}.", suffix=".tmp", dir=real.parent)
    lock_fd(fd)  # the lock lives on the open file: ``fill`` may reopen and truncate the path
    try:
        fill(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, real)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    return Path(path)


def _check_writable(folder: Path, path: Path, flag: str) -> None:
    """Create and remove a probe file in ``folder`` (the outputs' temp files go there), so an
    unwritable place is refused before the work, not after it."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".edgesnn-probe-", dir=folder)
    except OSError as exc:
        raise UsageError(f"{flag}: cannot write {path}: {folder} is not writable ({exc.strerror or exc})") from None
    os.close(fd)
    os.remove(probe)


def _check_name_length(folder: Path, real: Path, flag: str) -> None:
    """Refuse a file name longer than ``folder``'s file system takes (the write would fail only at the end)."""
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):  # pragma: no cover - no such query here
        limit = 255
    if real.parent == folder and len(os.fsencode(real.name)) > limit:
        raise UsageError(f"{flag}: the file name {real.name[:40]}... is {len(os.fsencode(real.name))} bytes long; "
                         f"{folder} takes names of at most {limit} bytes")


def check_output(path: PathLike, flag: str, force: bool = False, allow: str = "--force", directory: bool = False) -> Path:
    """Refuse an output that would silently overwrite something; returns ``Path(path)``.

    A file output (``directory=False``) must not be a directory, nor an existing file unless
    ``force``, nor (even with ``force``) a device, FIFO or socket, which the atomic rename would
    replace with a regular file (``/dev/null`` given as an output, run as root). A directory output
    must not be a file, nor a non-empty directory unless ``force``.
    A symlink counts as what it points at, and a dangling one as an existing output. ``allow``
    names the flag(s) that permit overwriting, for the one-line error. An existing file among the
    (resolved) path's parent folders is refused too (the write would fail only at the end), and so
    are a file name longer than its folder takes and, for a file output, a path ending in ``/``
    (a folder: ``Path`` would drop the slash and write a file of that name). A directory output
    that a killed :func:`replace_dir` swap left aside is put back first (:func:`recover_dir`), so it
    counts as existing: a later run without ``force`` never replaces it.
    """
    given = os.fspath(path)
    path = Path(path)
    if directory:
        recover_dir(path)  # a swap killed half-way left the old output aside: it exists (and --force replaces it)
    if not directory and isinstance(given, str) and given.endswith(("/", os.sep)) and not path.is_dir():
        raise IsADirectoryError(f"{flag}: {given} ends with '/' (a folder); expected a file path")
    for parent in _real(path).parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{flag}: {parent} is a file, so {path} cannot be created")
            _check_writable(parent, path, flag)
            _check_name_length(parent, _real(path), flag)
            break
    dangling = os.path.islink(path) and not path.exists()
    if not force and dangling:
        raise FileExistsError(f"{flag}: {path} already exists (a symlink to the missing {os.readlink(path)}); "
                              f"pass {allow} to write through it")
    if directory:
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(f"{flag}: {path} is a file; expected a directory")
        _check_not_enclosing(path, flag)
        if not force and path.is_dir() and any(path.iterdir()):
            raise FileExistsError(f"{flag}: {path} already exists and is not empty; pass {allow} to replace it")
    else:
        if path.is_dir():
            raise IsADirectoryError(f"{flag}: {path} is a directory; expected a file path")
        if path.exists() and not path.is_file():  # a device, FIFO or socket: the atomic rename would replace it
            raise FileExistsError(f"{flag}: {path} is not a regular file (a device, FIFO or socket); expected a file "
                                  "path (--force replaces only files)")
        if not force and path.exists():
            raise FileExistsError(f"{flag}: {path} already exists; pass {allow} to overwrite it")
    return path


def _check_not_enclosing(path: Path, flag: str) -> None:
    """A directory output is replaced as a whole (or swapped), so it must not be the working folder,
    the home folder or a folder holding either (``--out . --force`` or ``--out ~ --force`` would
    delete everything in them): one line, even with ``--force``."""
    real = _real(path)
    for name, where in (("the working folder", Path.cwd), ("your home folder", Path.home)):
        try:
            place = _real(where())
        except (OSError, RuntimeError, KeyError):  # no working folder any more, no home known
            continue
        if real == place or real in place.parents:
            what = name if real == place else f"a folder holding {name} ({place})"
            raise UsageError(f"{flag}: {path} is {what}, which the output would replace with everything in it; "
                             f"pass a folder of its own (e.g. {Path(path) / 'out'})")


def check_input_file(path: PathLike, flag: str, expected: str, error: type = UsageError) -> Path:
    """``Path(path)`` if it is a regular file; else a one-line error naming ``flag`` and ``expected``:
    ``IsADirectoryError``, ``FileNotFoundError``, or ``error`` for anything else (a device, a pipe)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{flag}: {path} is a directory; expected {expected}")
    if not path.exists():
        if path.is_symlink():  # exists() follows the link: a dangling one, or a loop
            raise FileNotFoundError(f"{flag}: {path} is a symlink to nothing (dangling, or a loop); expected {expected}")
        raise FileNotFoundError(f"{flag}: no such file: {path}")
    if not path.is_file():
        raise error(f"{flag}: {path} is not a regular file (a device or a pipe); expected {expected}")
    return path


def check_not_inside(out: PathLike, flag: str, **inputs: PathLike) -> None:
    """Refuse an output path that is, or contains, one of the ``inputs`` (name -> path): replacing it would destroy them."""
    out_r = _real(Path(out).absolute())  # os.path.realpath: a symlink loop is not a traceback (Path.resolve raised)
    for name, p in inputs.items():
        if p is None:
            continue
        p_r = _real(Path(p).absolute())
        if p_r == out_r or out_r in p_r.parents:
            raise UsageError(f"{flag}: {out} is or contains the input {name} {p}; choose another output path")


def recover_dir(path: PathLike) -> Optional[Path]:
    """Put back a directory that a :func:`replace_dir` swap left aside: a process killed between
    the swap's two renames leaves ``path`` missing and its previous contents in a
    ``.<name>.*.tmp.old`` sibling. Returns the sibling restored (the newest), else ``None``.
    A symlinked ``path`` is looked at through the link (where :func:`replace_dir` swaps)."""
    path = _real(Path(path))
    if os.path.lexists(path) or not path.parent.is_dir():
        return None
    pattern = _temp_names(path.name)
    olds = sorted((p for p in path.parent.iterdir() if p.name.endswith(".old") and pattern.fullmatch(p.name)
                   and p.is_dir() and not p.is_symlink()), key=lambda p: p.lstat().st_mtime)
    if not olds:
        return None
    os.replace(olds[-1], path)
    return olds[-1]


def _remove(path: Path) -> None:
    """Remove a file, a symlink (not its target) or a directory tree; best effort."""
    if path.is_symlink() or not path.is_dir():
        try:
            path.unlink()
        except FileNotFoundError:
            pass
    else:
        shutil.rmtree(path, ignore_errors=True)


def _rename_onto_empty(tmp: Path, real: Path) -> bool:
    """Rename the folder ``tmp`` to ``real`` in one step if ``real`` is absent or an empty folder, else False."""
    try:
        os.replace(tmp, real)  # a folder onto a folder: replaced only when empty
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            return False
        raise
    return True


def replace_dir(path: PathLike, write: Callable[[Path], Any]) -> Any:
    """Build a directory through ``write(tmp_dir)`` in a temp sibling of ``path``, then swap it in.

    Whatever ``path`` held before is removed only after ``write`` succeeded, so nothing stale
    survives and nothing is lost if ``write`` fails (the temp folder is removed). A symlinked
    ``path`` is written through: its final target is swapped and the link stays. Returns what
    ``write`` returned. SIGINT / SIGTERM wait until both renames of the swap are done; a process
    killed outright between them leaves ``path`` missing and its old contents in
    ``.NAME.*.tmp.old``, which :func:`recover_dir` (called here and by :func:`check_output` for a
    directory) puts back. Temp folders of killed runs beside ``path`` are removed here. An absent
    or empty ``path`` is replaced in one rename. A :class:`edgesnn.output_guard.GuardedDir` as
    ``path`` swaps only while nothing unexpected would be lost (:mod:`edgesnn.output_guard`).
    """
    guard = path if hasattr(path, "check_swap") else None
    real = _real(Path(path))
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        recover_dir(real)  # a swap cut short before: its previous contents come back first
        _clear_leftovers(real)  # and what killed runs left beside it goes
        tmp = Path(tempfile.mkdtemp(prefix=f".{_stem(real.name)}.", suffix=".tmp", dir=real.parent))
    except OSError as exc:  # disk full, read-only, no permission: nothing was changed
        raise _os_failure(path, exc) from None
    lock = lock_path(tmp)  # held until the swap: a later run removes the temp folder only once we are gone
    old, built = None, False
    try:
        result = write(tmp)
        built = True
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        with deferred_signals(), (placement_lock(real) if guard is not None else contextlib.nullcontext()):
            # Ctrl-C / SIGTERM wait: never ``path`` missing between the two renames
            held = guard.check_swap(tmp, real) if guard is not None else True
            if not _rename_onto_empty(tmp, real):
                if not held:  # empty when checked, filled since
                    raise guard.conflict(tmp, real, appeared=not guard.expected)
                old = real.with_name(f"{tmp.name}.old")
                os.replace(real, old)
                os.replace(tmp, real)
            if guard is not None:
                guard.swapped()
            if lock is not None:
                os.close(lock)
                lock = None
            if old is not None:  # still inside: an interrupt never leaves the old output aside
                _remove(old)
    except BaseException as exc:
        if lock is not None:
            os.close(lock)
            lock = None
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.lexists(real):
            os.replace(old, real)
        if isinstance(exc, WriteError) and str(tmp) in str(exc):  # name the output, not the removed temp folder
            raise WriteError(str(exc).replace(str(tmp), str(path)), exc.errno) from None
        if _swap_failure(exc, built):
            raise _os_failure(path, exc) from None
        raise
    return result
