"""User-facing errors. Imports nothing: the CLIs and the torch-free device runner use it.

The command lines turn exactly these into one-line messages (``edgesnn CMD: error: ...``, exit
code 2); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["UsageError", "DependencyError", "USER_ERRORS", "first_line"]


class UsageError(ValueError):
    """Bad input from the user (a flag, a path, a data file); the message names it and what was expected."""


#: What a command line reports as one line. ``ValueError`` covers :class:`UsageError` and the
#: project's own ``CheckpointError``, ``ArtifactError``, ``PlanningError``; the ``OSError``
#: subclasses are missing inputs and outputs that exist or are of the wrong kind.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)


class DependencyError(UsageError, RuntimeError):
    """An optional package the command needs is missing or incomplete (the message says what to install)."""


def first_line(exc: BaseException, limit: int = 120, at_word: bool = False) -> str:
    """An exception's first line of text, at most ``limit`` characters (its type name when it has
    no text): the cause quoted inside a one-line error. ``at_word``: a longer line is cut at a
    sentence or word end and ends with ``...`` instead of mid-word."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    if len(text) <= limit or not at_word:
        return text[:limit]
    head = text[:limit - 3]
    cut = head.rfind(". ")
    if cut < limit // 4:  # no sentence end worth keeping: a word end
        cut = head.rfind(" ")
    return (head[:cut + 1] if cut > 0 else head).rstrip(" .,;:") + "..."
