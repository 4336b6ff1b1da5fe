"""The ``sepconv`` command line.

Each subcommand lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (called with the
parsed arguments, returning an exit code). Errors a user can cause are reported
as one line on stderr with a non-zero exit, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Subcommand modules, in the order ``sepconv --help`` lists them.
SUBCOMMANDS = ("demo", "convert", "profile", "explain", "kernels")


class CLIError(Exception):
    """An error to report as one line, with exit status ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="sepconv", description="Depthwise-separable convolution toolkit for PyTorch."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"sepconv.cli.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"sepconv.cli.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sepconv ARGS``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CLIError as error:
        print(f"sepconv {args.command}: error: {error}", file=sys.stderr)
        return error.code
    except (
        ValueError,
        TypeError,
        FileNotFoundError,
        FileExistsError,
        PermissionError,
        RuntimeError,
    ) as error:
        print(f"sepconv {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sepconv {args.command}: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
