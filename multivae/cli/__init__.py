"""The ``multivae`` command: one module per command group, each command a function.

Each group module adds its sub-commands with :func:`argparse.ArgumentParser.set_defaults`
naming the function that runs it; :func:`main` parses the arguments, calls that function and
turns the errors a user can cause into exit status 2 with a one-line message.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from multivae.cli import data, evaluation, generation, models, training
from multivae.data.errors import DataFormatError
from multivae.redact import redact


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command."""
    parser = argparse.ArgumentParser(
        prog="multivae",
        description="Multimodal VAEs for partially observed data.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (data, models, training, evaluation, generation):
        group.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``multivae`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (
        DataFormatError,
        ValueError,
        FileNotFoundError,
        FileExistsError,
        FloatingPointError,
        RuntimeError,
    ) as error:
        print(f"multivae {args.command}: error: {redact(str(error))}", file=sys.stderr)
        return 2
    return 0
