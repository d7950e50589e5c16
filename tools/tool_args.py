"""Command-line pieces the benchmark tools share: count types, the output check done before the
measurement, the atomic JSON write, and the one-line error for bad input or a failed worker.

The tools import it as a sibling (their folder is on ``sys.path``). It imports no torch (and
``edgesnn`` only inside the functions): ``bench_kernels.py`` sets process settings before torch
is imported.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Callable, List, Optional, Sequence

__all__ = ["tool_parser", "positive_int", "nonneg_int", "add_force", "check_out", "write_json", "finite", "WorkerError",
           "worker_error", "run_main", "err_pct", "measured_err_pct"]


def tool_parser(**kwargs: Any) -> argparse.ArgumentParser:
    """An ``argparse.ArgumentParser(**kwargs)`` whose usage errors (and :func:`check_out`'s) are one
    line, without the usage block: ``edgesnn``'s own :class:`edgesnn.cli.OneLineParser`."""
    from edgesnn.cli import OneLineParser

    return OneLineParser(**kwargs)


def _int(text: str, least: int) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse ``type=``: an integer >= 1 (argparse then prints ``argument --X: expected ...``)."""
    return _int(text, 1)


def nonneg_int(text: str) -> int:
    """argparse ``type=``: an integer >= 0."""
    return _int(text, 0)


def add_force(ap: argparse.ArgumentParser, what: str = "the output file") -> None:
    """Add ``--force``: replace an existing output (refused without it)."""
    ap.add_argument("--force", action="store_true", help=f"replace {what} if it exists (refused without --force)")


def check_out(ap: argparse.ArgumentParser, path: Optional[str], flag: str, force: bool = False,
              inputs: Optional[dict] = None) -> Any:
    """Refuse a bad output path before the measurement runs (an existing file without ``--force``,
    a directory, a folder that cannot be written, one of the run's ``inputs``, flag -> path, even
    with ``--force``): ``ap.error`` with one line, exit 2. Returns the path to write to (``None``
    stays ``None``): a :class:`edgesnn.output_guard.GuardedFile`, so :func:`write_json` never
    replaces a file another process wrote there while the measurement ran."""
    if path is None:
        return None
    from edgesnn.atomic import check_not_inside, check_output
    from edgesnn.errors import USER_ERRORS, refuse_empty
    from edgesnn.output_guard import guarded

    try:  # an empty value is not "no file": the run would end without the file it was asked for
        refuse_empty(path, flag, "a file path", " (an empty value is not the default; drop the flag to write no file)")
        check_output(path, flag, force=force)
        check_not_inside(path, flag, **{k: v for k, v in (inputs or {}).items() if v})
    except USER_ERRORS as exc:
        msg = str(exc)
        ap.error(msg if msg.startswith(flag) else f"{flag}: {msg}")
    return guarded(path, flag)


def finite(obj: Any) -> Any:
    """``obj`` with every NaN / infinite float replaced by ``None`` (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_json(path: "os.PathLike[str] | str", obj: Any, indent: int = 2, newline: bool = False) -> None:
    """Write ``obj`` as JSON to ``path`` atomically; NaN / infinity become ``null`` (never written
    as the invalid ``NaN``; ``allow_nan=False`` guards it)."""
    from edgesnn.atomic import atomic_write

    text = json.dumps(finite(obj), indent=indent, allow_nan=False) + ("\n" if newline else "")
    atomic_write(path, lambda fh: fh.write(text), mode="w")


def err_pct(predicted: float, measured: float) -> Optional[float]:
    """A prediction's error against its measurement (the baseline), in percent of the measurement;
    ``None`` when nothing was measured (``measured <= 0``)."""
    return 100.0 * (predicted - measured) / measured if measured > 0 else None


def measured_err_pct(predicted: float, measured: float, what: str) -> float:
    """:func:`err_pct` of a row that must have been measured; a zero measurement of ``what`` is the
    worker's failure (:class:`WorkerError`), not an error of 0 or infinity percent."""
    err = err_pct(predicted, measured)
    if err is None:
        raise WorkerError(f"{what}: the worker measured {measured!r} bytes (expected > 0)")
    return err


class WorkerError(RuntimeError):
    """A worker process failed; the message is its last error line, ``stderr`` holds the rest."""

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr


def worker_error(what: str, stderr: str) -> WorkerError:
    """The :class:`WorkerError` for a failed worker: ``WHAT failed: <its last non-empty stderr line>``."""
    lines = [ln.strip() for ln in (stderr or "").strip().splitlines() if ln.strip()]
    return WorkerError(f"{what} failed: {lines[-1] if lines else 'no error output'}", stderr)


def run_main(main: Callable[[Optional[List[str]]], int], argv: Optional[Sequence[str]] = None,
             prog: Optional[str] = None) -> int:
    """Run ``main(argv)``; a user-facing error (``edgesnn.errors.USER_ERRORS``) or a failed worker
    prints one line, ``PROG: error: MESSAGE``, and returns 2 (a failed worker: 1)."""
    from edgesnn.errors import USER_ERRORS

    prog = prog or os.path.basename(sys.argv[0])
    try:
        return main(None if argv is None else list(argv))
    except WorkerError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except USER_ERRORS as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
