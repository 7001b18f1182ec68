"""The ``multivae`` command: one module per command group, each command a function.

Each group module adds its sub-commands with :func:`argparse.ArgumentParser.set_defaults`
naming the function that runs it; :func:`main` parses the arguments, calls that function and
turns every error into exit status 2 with a one-line message (credentials redacted); ``multivae
--debug COMMAND ...`` lets the exception through, with its traceback. An interrupt (Ctrl-C)
exits with 130.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from multivae.cli import data, evaluation, generation, models, training
from multivae.cli.paths import CommandParser
from multivae.data.errors import DataFormatError
from multivae.redact import redact


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command."""
    parser = CommandParser(
        prog="multivae",
        description="Multimodal VAEs for partially observed data.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of an error instead of its one-line message",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (data, models, training, evaluation, generation):
        group.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``multivae`` command; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a usage error (one line, see CommandParser)
        return done.code if isinstance(done.code, int) else 2
    try:
        args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"multivae {args.command}: interrupted", file=sys.stderr)
        return 130
    except (
        DataFormatError,
        ValueError,
        FileNotFoundError,
        FileExistsError,
        ConnectionError,
        FloatingPointError,
        RuntimeError,
    ) as error:
        if args.debug:
            raise
        print(f"multivae {args.command}: error: {redact(str(error))}", file=sys.stderr)
        return 2
    except Exception as error:  # an error no check foresaw: still one line, and how to see more
        if args.debug:
            raise
        print(
            f"multivae {args.command}: error: {type(error).__name__}: {redact(str(error))} "
            "(run `multivae --debug ...` for the traceback)",
            file=sys.stderr,
        )
        return 2
    return 0
