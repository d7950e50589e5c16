"""The ``edgesnn`` command line: one sub-command per module.

Each entry of :data:`SUBCOMMANDS` is a module that defines ``register(subparsers)``; it adds its
parser and sets ``func`` (called with the parsed namespace, returns an exit code). Only the chosen
sub-command's module is imported (the names and one-line helps of the others come from
:data:`COMMANDS`), so ``edgesnn --help`` works without torch.

Errors: the project's user-facing errors (:data:`edgesnn.errors.USER_ERRORS`: bad flags, bad or
missing files, outputs that exist) print one line ``edgesnn CMD: error: ...`` and exit with 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Dict, List, Optional, Tuple

from .errors import USER_ERRORS

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


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The top-level parser; only ``command``'s module is imported (the others get a placeholder)."""
    parser = argparse.ArgumentParser(prog="edgesnn", description="Memory-lean spiking neural network training for edge devices.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        name, help_text = COMMANDS.get(module, (None, None))
        if name is None or name == command:
            importlib.import_module(module).register(sub)
        else:
            stub = sub.add_parser(name, help=help_text, add_help=False)
            stub.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = build_parser().parse_known_args(argv)[0].command
    try:
        parser = build_parser(command)
    except ModuleNotFoundError as exc:  # a dependency (e.g. torch) is missing: say so in one line
        if (exc.name or "edgesnn").partition(".")[0] == "edgesnn":
            raise  # our own module missing is a bug
        print(f"edgesnn {command}: error: this command needs {exc.name} ({exc})", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"edgesnn {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
