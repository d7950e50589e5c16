"""Atomic file writes (temp file beside the target + rename) and the checks every output goes through.

Imports no torch: the device runner uses it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Union

from .errors import UsageError

__all__ = ["atomic_write", "check_output", "check_not_inside", "recover_dir", "replace_dir"]

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


def _check_writable(folder: Path, path: Path, flag: str) -> None:
    """Create and remove a probe file in ``folder`` (the outputs' temp files go there), so an
    unwritable place is refused before the work, not after it."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".edgesnn-probe-", dir=folder)
    except OSError as exc:
        raise UsageError(f"{flag}: cannot write {path}: {folder} is not writable ({exc.strerror or exc})") from None
    os.close(fd)
    os.remove(probe)


def check_output(path: PathLike, flag: str, force: bool = False, allow: str = "--force", directory: bool = False) -> Path:
    """Refuse an output that would silently overwrite something; returns ``Path(path)``.

    A file output (``directory=False``) must not be a directory, nor an existing file unless
    ``force``. A directory output must not be a file, nor a non-empty directory unless ``force``.
    ``allow`` names the flag(s) that permit overwriting, for the one-line error. An existing file
    among the path's parent folders is refused too (the write would fail only at the end).
    """
    path = Path(path)
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{flag}: {parent} is a file, so {path} cannot be created")
            _check_writable(parent, path, flag)
            break
    if directory:
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(f"{flag}: {path} is a file; expected a directory")
        if not force and path.is_dir() and any(path.iterdir()):
            raise FileExistsError(f"{flag}: {path} already exists and is not empty; pass {allow} to replace it")
    else:
        if path.is_dir():
            raise IsADirectoryError(f"{flag}: {path} is a directory; expected a file path")
        if not force and path.exists():
            raise FileExistsError(f"{flag}: {path} already exists; pass {allow} to overwrite it")
    return path


def check_not_inside(out: PathLike, flag: str, **inputs: PathLike) -> None:
    """Refuse an output path that is, or contains, one of the ``inputs`` (name -> path): replacing it would destroy them."""
    out_r = Path(out).resolve()
    for name, p in inputs.items():
        if p is None:
            continue
        p_r = Path(p).resolve()
        if p_r == out_r or out_r in p_r.parents:
            raise UsageError(f"{flag}: {out} is or contains the input {name} {p}; choose another output path")


def recover_dir(path: PathLike) -> Optional[Path]:
    """Put back a directory that a :func:`replace_dir` swap left aside: a process killed between
    the swap's two renames leaves ``path`` missing and its previous contents in a
    ``.<name>.*.tmp.old`` sibling. Returns the sibling restored (the newest), else ``None``."""
    path = Path(path)
    if os.path.lexists(path) or not path.parent.is_dir():
        return None
    olds = sorted(path.parent.glob(f".{path.name}.*.tmp.old"), key=lambda p: p.stat().st_mtime)
    if not olds:
        return None
    os.replace(olds[-1], path)
    return olds[-1]


def replace_dir(path: PathLike, write: Callable[[Path], Any]) -> Any:
    """Build a directory through ``write(tmp_dir)`` in a temp sibling of ``path``, then swap it in.

    Whatever ``path`` held before is removed only after ``write`` succeeded, so nothing stale
    survives and nothing is lost if ``write`` fails (the temp folder is removed). Returns what
    ``write`` returned.
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)  # a swap cut short before: its previous contents come back first
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = None
    try:
        result = write(tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        if path.exists():
            old = path.with_name(f"{tmp.name}.old")
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not path.exists():
            os.replace(old, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return result
