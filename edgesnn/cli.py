"""The ``edgesnn`` command line: one sub-command per module.

Each entry of :data:`SUBCOMMANDS` is a module that defines ``register(subparsers)``; it adds its
parser and sets ``func`` (called with the parsed namespace, returns an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

SUBCOMMANDS = [
    "edgesnn.training.cli",
    "edgesnn.export.cli",
    "edgesnn.kernels.cli",
    "edgesnn.planner.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgesnn", description="Memory-lean spiking neural network training for edge devices.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, TypeError, RuntimeError) as exc:
        print(f"edgesnn {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
