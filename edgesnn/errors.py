"""User-facing errors. Imports nothing: the CLIs and the torch-free device runner use it.

The command lines turn exactly these into one-line messages (``edgesnn CMD: error: ...``, exit
code 2); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["UsageError", "PlanningError", "DependencyError", "InterruptedAfterOutput", "OutputChanged", "USER_ERRORS", "clip", "first_line", "peer_failure", "refuse_empty", "say_line"]


class UsageError(ValueError):
    """Bad input from the user (a flag, a path, a data file); the message names it and what was expected."""


#: What a command line reports as one line. ``ValueError`` covers :class:`UsageError` and the
#: project's own ``CheckpointError``, ``ArtifactError``, ``PlanningError``; the ``OSError``
#: subclasses are missing inputs and outputs that exist or are of the wrong kind.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)


class PlanningError(ValueError):
    """No choice fits the budget; the message gives the minimum bytes and what to change. One class for
    the layer planner (``make_plan``) and the network planner (``optimize_memory(..., budget=...)``)."""


class OutputChanged(FileExistsError):
    """An output appeared or changed while the command worked (another process wrote it), so it was
    left as it is; the one line names the flag and where the command's own output is kept
    (:mod:`edgesnn.output_guard`)."""


class DependencyError(UsageError, RuntimeError):
    """An optional package the command needs is missing or incomplete (the message says what to install)."""


class InterruptedAfterOutput(KeyboardInterrupt):
    """Ctrl-C that came once the command's output was complete (e.g. held back until a folder swap
    was done): the message says the output is whole, so the user does not run the command again."""


def refuse_empty(value: object, flag: str, expected: str, hint: str = "", error: type = UsageError) -> None:
    """``error("FLAG: expected EXPECTED, got ''HINT")`` for an empty or blank value: a flag given as
    ``''`` (an unset shell variable) is a mistake, never "use the default" (``Path('')`` is the
    working folder). ``None`` (the flag not given) passes."""
    if value is not None and not str(value).strip():
        raise error(f"{flag}: expected {expected}, got {value!r}{hint}")


def say_line(text: str) -> None:
    """Write ``text`` and its newline to stderr in one write, then flush: under ``torchrun`` with an
    unbuffered stderr (``PYTHONUNBUFFERED=1``) ``print`` writes the text and the newline separately,
    and two ranks' error lines ran together on one line."""
    import sys

    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def clip(text: str, limit: int = 60) -> str:
    """``text`` if it has at most ``limit`` characters, else its first ``limit - 3`` and ``...``: a
    user's value quoted inside a one-line error."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


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


#: how a collective reports that another process of the group went away (gloo's TCP transport;
#: NCCL's remote error): the process that failed first printed its own error
PEER_GONE = ("connection closed by peer", "connection reset by peer", "remote process exited")


def peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a ``torch.distributed`` collective failing because a peer process ended.

    Conservative: a ``RuntimeError`` (``torch.distributed.DistBackendError`` is one) whose message
    names one of :data:`PEER_GONE` *and* comes from the process group (its text names gloo or NCCL,
    or its type is one of torch's). Any other ``RuntimeError`` is not one (it keeps its traceback).
    """
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc).lower()
    from_group = "gloo" in text or "nccl" in text or type(exc).__module__.startswith("torch")
    return from_group and any(phrase in text for phrase in PEER_GONE)
