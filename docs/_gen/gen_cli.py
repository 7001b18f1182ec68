"""The command-line reference, ``reference/cli.md``, from the argument parsers themselves.

Every command and sub-command of ``multivae`` (:func:`multivae.cli.build_parser`) and of
``python -m pipelines`` (:func:`pipelines.cli.build_parser`) gets a section with its
``--help`` text, formatted 100 columns wide whatever the terminal, so the page changes only
when a parser does.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import mkdocs_gen_files

sys.path.insert(0, str(Path(__file__).parent))  # site_common, beside this file
from site_common import fence

WIDTH = "100"


def commands(
    parser: argparse.ArgumentParser, name: str
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """``(full command, parser)`` for ``parser`` and, depth first, every sub-command below it."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub_parser in action.choices.items():
                yield from commands(sub_parser, f"{name} {sub_name}")


def anchor(command: str) -> str:
    """The heading id of a command's section: ``multivae train`` -> ``multivae-train``."""
    return command.replace("python -m ", "").replace(" ", "-")


def section(program: str, parser: argparse.ArgumentParser, intro: str) -> str:
    """A program's part of the page: an index of its commands, then each command's help."""
    found = list(commands(parser, program))
    lines = [f"## `{program}` {{#{anchor(program)}-commands}}\n", intro, ""]
    lines += [f"- [`{command}`](#{anchor(command)})" for command, _ in found[1:]]
    lines.append("")
    for command, sub_parser in found:
        lines += [f"### `{command}` {{#{anchor(command)}}}\n", fence(sub_parser.format_help())]
    return "\n".join(lines)


def page() -> str:
    """The whole page."""
    from multivae.cli import build_parser as multivae_parser
    from pipelines.cli import build_parser as pipelines_parser

    parts = [
        "# Command-line reference\n",
        "Generated from the argument parsers when the site is built: each section is the "
        "command's own `--help`. How the commands behave together (errors, where outputs may "
        "go, resuming) is in the [command-line guide](../guides/command-line.md).\n",
        section(
            "multivae",
            multivae_parser(),
            "The library's command, installed with the package (`python -m multivae.cli` is "
            "the same).",
        ),
        section(
            "python -m pipelines",
            pipelines_parser(),
            "The Kubeflow pipeline: compile it, submit it to a cluster, or run it here with "
            "KFP's local runner (see [the pipeline guide](../guides/pipeline.md)).",
        ),
    ]
    return "\n".join(parts)


previous = os.environ.get("COLUMNS")
os.environ["COLUMNS"] = WIDTH  # argparse wraps help to the terminal's width
try:
    text = page()
finally:
    if previous is None:
        del os.environ["COLUMNS"]
    else:
        os.environ["COLUMNS"] = previous

with mkdocs_gen_files.open("reference/cli.md", "w") as out:
    out.write(text)
mkdocs_gen_files.set_edit_path("reference/cli.md", "multivae/cli/__init__.py")
