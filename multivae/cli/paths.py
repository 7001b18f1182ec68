"""What each command-line option names on disk, declared where the option is added.

Every option (or positional argument) that takes a path is added with :func:`path_argument`,
which records its :class:`PathRole` on the argparse action: an *output* of a kind of
:data:`multivae.io.OUTPUT_KINDS` (checked by :func:`multivae.io.claim_output`, the one output
rule), or an *input* (a dataset, a model, a config file, ...). A path that a command reads
from its config file instead of an option (``train``'s ``output_dir`` and ``data``) is declared
with :func:`config_path`. The reliability battery (``tests/reliability``) enumerates the
subcommands of both parsers (``multivae`` and ``python -m pipelines``) through
:func:`path_roles` and tries every rule on every declared path, so a new command or option is
covered without a hand-written case. An empty path is refused here, by the parser, naming the
option: ``Path("")`` would silently mean the current directory.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

ROLE_ATTRIBUTE = "path_role"
CONFIG_PATHS = "config_paths"


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, as every other error of the CLI.

    argparse prints the usage, then the error; here the error names the command and points to
    ``--help`` on one line (exit status 2, as argparse).
    """

    def error(self, message: str) -> Any:  # argparse declares NoReturn
        """Print the usage error on one line and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


@dataclass(frozen=True)
class PathRole:
    """What a path option names.

    Attributes:
        direction: ``output`` (the command writes there) or ``input`` (it reads).
        kind: For an output, a key of :data:`multivae.io.OUTPUT_KINDS`; for an input, what is
            read: ``dataset``, ``model``, ``run config``, ``sweep file``, ``sampler``,
            ``release`` (downloaded public data).
        file: The path names a file (a config, a compiled pipeline), not a folder.
    """

    direction: Literal["output", "input"]
    kind: str
    file: bool = False


def nonempty_path(text: str) -> str:
    """An argparse ``type``: refuses an empty path (it would mean the current directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a path, found an empty text {text!r}")
    return text


def path_argument(
    parser: argparse.ArgumentParser, *flags: str, role: PathRole, **options: Any
) -> argparse.Action:
    """``parser.add_argument(*flags, **options)`` for a path, recording its role."""
    action = parser.add_argument(*flags, type=nonempty_path, **options)
    setattr(action, ROLE_ATTRIBUTE, role)
    return action


def folder_argument(
    parser: argparse.ArgumentParser,
    flag: str,
    role: PathRole,
    help: str,
    *,
    required: bool = True,
) -> argparse.Action:
    """A ``DIR`` path option (see :func:`path_argument`)."""
    return path_argument(parser, flag, role=role, required=required, metavar="DIR", help=help)


def file_argument(
    parser: argparse.ArgumentParser, flag: str, kind: str, help: str, *, required: bool = True
) -> argparse.Action:
    """A ``FILE`` option naming a file the command reads (a run config, a sweep file)."""
    role = source(kind, file=True)
    return path_argument(parser, flag, role=role, required=required, metavar="FILE", help=help)


def model_argument(parser: argparse.ArgumentParser) -> argparse.Action:
    """``--model DIR``: the model folder (or Hub repository id) a command reads; ``--revision``."""
    action = folder_argument(parser, "--model", source("model"), "model folder or repo id")
    parser.add_argument(
        "--revision",
        metavar="REV",
        help="with a Hub repo id: the branch, tag or commit hash to load (default: the "
        "repository's default branch); refused with a folder",
    )
    return action


def overwrite_argument(parser: argparse.ArgumentParser, what: str = "an earlier output") -> None:
    """``--overwrite``: replace the command's own earlier output (:func:`claim_output`)."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace DIR when it holds {what} of this command (never other files)",
    )


def config_path(parser: argparse.ArgumentParser, key: str, role: PathRole) -> None:
    """Declare a path the command reads from its config file (overridden by ``--set KEY=``)."""
    declared = dict(parser.get_default(CONFIG_PATHS) or {})
    declared[key] = role
    parser.set_defaults(**{CONFIG_PATHS: declared})


@dataclass(frozen=True)
class DeclaredPath:
    """One path a command takes: the option (or ``--set`` key) and its role."""

    command: tuple[str, ...]
    option: str
    dest: str
    role: PathRole
    positional: bool = False
    in_config: bool = False


def leaf_parsers(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every runnable subcommand of ``parser`` (``convert polymnist``, ...) with its parser."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        yield prefix, parser
        return
    for name, child in subparsers[0].choices.items():
        yield from leaf_parsers(child, (*prefix, name))


def path_roles(parser: argparse.ArgumentParser) -> list[DeclaredPath]:
    """Every declared path of every subcommand of ``parser``."""
    declared = []
    for command, leaf in leaf_parsers(parser):
        for action in leaf._actions:
            role = getattr(action, ROLE_ATTRIBUTE, None)
            if role is None:
                continue
            positional = not action.option_strings
            option = str(action.metavar or action.dest) if positional else action.option_strings[0]
            declared.append(DeclaredPath(command, option, action.dest, role, positional))
        for key, role in (leaf.get_default(CONFIG_PATHS) or {}).items():
            declared.append(DeclaredPath(command, key, key, role, in_config=True))
    return declared


def output(kind: str, *, file: bool = False) -> PathRole:
    """The role of an option naming where a command writes its ``kind`` of output."""
    return PathRole("output", kind, file)


def source(kind: str, *, file: bool = False) -> PathRole:
    """The role of an option naming what a command reads."""
    return PathRole("input", kind, file)
