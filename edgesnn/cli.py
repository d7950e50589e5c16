"""The ``edgesnn`` command line: one sub-command per module.

Each entry of :data:`SUBCOMMANDS` is a module that defines ``register(subparsers)``; it adds its
parser and sets ``func`` (called with the parsed namespace, returns an exit code). Only the chosen
sub-command's module is imported (the names and one-line helps of the others come from
:data:`COMMANDS`), so ``edgesnn --help`` works without torch.

Errors: the project's user-facing errors (:data:`edgesnn.errors.USER_ERRORS`: bad flags, bad or
missing files, outputs that exist) print one line ``edgesnn CMD: error: ...`` and exit with 2;
so does an allocation failure (``MemoryError``, torch's ``can't allocate memory``: ``error: out of
memory: ...``, sizes too large for this machine) and a size past torch's 64-bit shapes; anything
else is a bug and keeps its traceback.
Warnings print as one line ``edgesnn CMD: warning: ...`` (on the real command line; ``main(argv)``
called from Python leaves the warnings machinery alone). Ctrl-C prints one line (``edgesnn CMD: interrupted``, and what ``train``'s checkpoint holds, or that
``export``'s output was already complete) and exits with 130.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process reports its own error; the lines of ranks
other than 0 read ``edgesnn CMD: error: rank N: ...`` (``edgesnn CMD: rank N: interrupted``). A
rank whose collective failed because another rank ended (:func:`edgesnn.errors.peer_failure`) says
so in one line and exits with 1. ``torchrun`` itself then prints its ``ChildFailedError`` summary
and exits with 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import warnings
from typing import Dict, List, NoReturn, Optional, Tuple

from .errors import USER_ERRORS, InterruptedAfterOutput, peer_failure, say_line
from .memory_guard import OUT_OF_MEMORY_HINT, is_out_of_memory, is_size_overflow

SUBCOMMANDS: List[str] = [
    "edgesnn.training.cli",
    "edgesnn.export.cli",
    "edgesnn.kernels.cli",
    "edgesnn.planner.cli",
]

#: module -> (command name, one-line help shown by ``edgesnn --help``); a module missing here is
#: imported to build the top-level parser.
COMMANDS: Dict[str, Tuple[str, str]] = {
    "edgesnn.training.cli": ("train", "train a spiking classifier (digits is built in; no downloads)"),
    "edgesnn.export.cli": ("export", "export a checkpoint for on-device fine-tuning or inference"),
    "edgesnn.kernels.cli": ("warmup", "precompile the fused Numba (and CUDA) kernels into the JIT cache"),
    "edgesnn.planner.cli": ("plan", "plan LIF/RevLIF per layer and the batch for a memory budget"),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors (an unknown flag, a value outside ``choices``, ``invalid int
    value``, a missing required flag) on one line, without the usage block; the sub-command parsers
    added through :meth:`add_subparsers` are of this class too. ``edgesnn-device`` uses it as well."""

    def error(self, message: str) -> NoReturn:
        """Exit with status 2 after one line on stderr: ``PROG: error: MESSAGE (see PROG --help)``."""
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The top-level parser; only ``command``'s module is imported (the others get a placeholder)."""
    parser = OneLineParser(prog="edgesnn", description="Memory-lean spiking neural network training for edge devices.")
    parser.add_argument("--version", action="version", version=f"edgesnn {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        name, help_text = COMMANDS.get(module, (None, None))
        if name is None or name == command:
            importlib.import_module(module).register(sub)
        else:
            stub = sub.add_parser(name, help=help_text, add_help=False)
            stub.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def _command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The sub-command ``command``'s parser inside the top-level ``parser``."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _version() -> str:
    """edgesnn's installed version (the package metadata), else the source tree's ``__version__``."""
    from importlib import metadata

    try:
        return metadata.version("edgesnn")
    except metadata.PackageNotFoundError:
        from . import __version__

        return __version__


def _check_top_options(parser: argparse.ArgumentParser, argv: List[str]) -> None:
    """Name an unknown option given before the COMMAND (argparse would only say COMMAND is missing)."""
    names = {COMMANDS[m][0] for m in SUBCOMMANDS if m in COMMANDS}
    for tok in argv:
        if tok in names or tok == "--" or not tok.startswith("-"):
            return
        known = ("--help", "--version") if tok.startswith("--") else ("-h",)
        if not any(k.startswith(tok.split("=", 1)[0]) for k in known):
            parser.error(f"unknown option {tok}; expected a COMMAND ({', '.join(sorted(names))}), -h or --version")


def _file_state(path: Optional[str]) -> Optional[Tuple[int, int, int]]:
    """``path``'s identity and mtime (through symlinks), or ``None`` when it does not exist."""
    try:
        st = os.stat(path) if path else None
    except OSError:
        return None
    return None if st is None else (st.st_dev, st.st_ino, st.st_mtime_ns)


def _interrupted(args: argparse.Namespace, before: Optional[Tuple[int, int, int]]) -> str:
    """The one line for Ctrl-C: ``interrupted``, and for ``train --checkpoint`` what the checkpoint
    holds (it is replaced atomically after each completed epoch, so never a torn file)."""
    checkpoint = getattr(args, "checkpoint", None) if args.command == "train" else None
    if not checkpoint:
        return "interrupted"
    if _file_state(checkpoint) not in (None, before):
        return f"interrupted; {checkpoint} holds the last completed epoch (--resume continues from it)"
    return f"interrupted before an epoch completed; {checkpoint} was not written" + (" (it is unchanged)" if before else "")


def _rank() -> Optional[int]:
    """This process's rank in a multi-process run (``torchrun`` sets ``RANK`` and ``WORLD_SIZE``), else ``None``."""
    try:
        world, rank = int(os.environ.get("WORLD_SIZE") or 1), int(os.environ.get("RANK") or 0)
    except ValueError:  # a malformed variable is reported by the command itself
        return None
    return rank if world > 1 and 0 <= rank < world else None


def _say(command: Optional[str], text: str, error: bool = True, always: bool = False) -> None:
    """Print ``edgesnn CMD: [error: ][rank N: ]text`` on stderr: the rank is named on ranks other than
    0 of a multi-process run (``always``: on rank 0 too)."""
    rank = _rank()
    tag = f"rank {rank}: " if rank is not None and (rank or always) else ""
    say_line(f"edgesnn {command}: {'error: ' if error else ''}{tag}{text}")


#: what the one line for an allocation failure suggests lowering, per command (default: train's flags)
_MEMORY_HINTS = {"plan": "lower --batch/--timesteps, --input, --hidden or --channels",
                 "export": "lower --batch-size (onnx-step, onnx-training) or export on a machine with more memory"}


def _out_of_memory(command: Optional[str], exc: BaseException) -> str:
    """The one line for an allocation failure (``MemoryError``, torch's ``can't allocate memory``):
    the size torch tried to allocate when it says, and what to lower."""
    import re

    from .memory_guard import show_bytes

    found = re.search(r"tried to allocate (\d+) bytes", str(exc))
    what = f"a buffer of {show_bytes(int(found.group(1)))}" if found else f"edgesnn {command}"
    return (f"out of memory: {what} needs more memory than this machine has; "
            f"{_MEMORY_HINTS.get(command or '', OUT_OF_MEMORY_HINT)}")


def _warning_printer(command: Optional[str]):
    """A ``warnings.showwarning`` for the command line: ``edgesnn CMD: warning: MESSAGE`` on one line
    (the source line a warning points at is a library's or Python's own, nothing to act on here)."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        _say(command, f"warning: {text}", error=False)

    return show


def _stdout_to_devnull() -> None:
    """Point stdout at the null device, so that Python's flush at exit does not raise (and print)
    the broken pipe's error a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stdout (a test's capture): nothing to flush
        pass


def main(argv: Optional[List[str]] = None) -> int:
    """``edgesnn``: 0 on success, 2 on a user error or an allocation failure (one line), 130 on
    Ctrl-C (one line); under ``torchrun``, 1 on a rank whose collective failed because another rank
    ended (one line)."""
    if argv is None and hasattr(signal, "SIGXFSZ"):  # the real command line: a file size limit (ulimit -f)
        try:                                         # fails the write (one line), instead of killing us
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        except ValueError:  # not the main thread
            pass
    real_command_line = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    top = build_parser()
    _check_top_options(top, argv)
    command = top.parse_known_args(argv)[0].command
    if real_command_line:  # warnings as one line of ours, not "<frozen runpy>:88: RuntimeWarning: ..."
        warnings.showwarning = _warning_printer(command)
    try:
        parser = build_parser(command)
    except ModuleNotFoundError as exc:  # a dependency (e.g. torch) is missing: say so in one line
        if (exc.name or "edgesnn").partition(".")[0] == "edgesnn":
            raise  # our own module missing is a bug
        _say(command, f"this command needs {exc.name} ({exc})")
        return 2
    except KeyboardInterrupt:  # Ctrl-C while the command's modules (torch) were being imported
        _say(command, "interrupted", error=False)
        return 130
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the command's own parser: "edgesnn train: error: ... (see edgesnn train --help)"
        _command_parser(parser, args.command).error(f"unrecognized arguments: {' '.join(unknown)}")
    before = _file_state(getattr(args, "checkpoint", None))
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # stdout closed early (`edgesnn plan ... | head -1`): stop quietly, as a shell tool does
        _stdout_to_devnull()
        return 141  # the shell's 128 + SIGPIPE
    except ModuleNotFoundError as exc:  # a dependency only the command's work imports (torch for export)
        if (exc.name or "edgesnn").partition(".")[0] == "edgesnn":
            raise
        _say(args.command, f"this command needs {exc.name} ({exc})")
        return 2
    except USER_ERRORS as exc:
        _say(args.command, str(exc))
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C: one line, like edgesnn-device, and the shell's 128 + SIGINT
        text = str(exc) if isinstance(exc, InterruptedAfterOutput) else _interrupted(args, before)
        _say(args.command, text, error=False)
        return 130
    except MemoryError as exc:  # a buffer larger than this machine: one line, not a traceback
        _say(args.command, _out_of_memory(args.command, exc))
        return 2
    except (OverflowError, TypeError, RuntimeError) as exc:  # under torchrun: another rank ended, its own error is above
        if is_out_of_memory(exc):  # torch's CPU allocator refused a buffer larger than this machine
            _say(args.command, _out_of_memory(args.command, exc))
            return 2
        if is_size_overflow(exc):  # a shape whose size passes 2**63 (torch's 64-bit sizes)
            _say(args.command, "a size is too large: a tensor's shape passes 2**63 elements or bytes (64-bit "
                               f"overflow); {_MEMORY_HINTS.get(args.command, OUT_OF_MEMORY_HINT)}")
            return 2
        if not isinstance(exc, RuntimeError):
            raise
        if _rank() is None or not peer_failure(exc):
            raise
        _say(args.command, "another rank failed (see its error above); stopping", always=True)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
