"""What the page generators share: the checkout being documented, and Markdown helpers.

The generators run inside ``mkdocs build`` (mkdocs-gen-files runs each script with
:func:`runpy.run_path`); each one puts this folder on ``sys.path`` to import this module.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(mkdocs_gen_files.config.config_file_path).resolve().parent
"""The checkout whose documentation is built (the folder of ``mkdocs.yml``)."""

if str(ROOT) not in sys.path:
    # The pages describe this checkout's code, whatever else is installed.
    sys.path.insert(0, str(ROOT))

PACKAGE = "multivae"
"""The package the API reference and the model pages document."""


CODE_SPAN = re.compile(r"(`+)(?:.+?)\1")


def cell(text: str) -> str:
    """``text`` as one Markdown table cell: a single line, pipes escaped outside code spans.

    (Python-Markdown's tables keep a pipe inside backticks; an escape there would show.)
    """
    text = " ".join(text.split())
    parts, start = [], 0
    for span in CODE_SPAN.finditer(text):
        parts += [text[start : span.start()].replace("|", "\\|"), span[0]]
        start = span.end()
    return "".join([*parts, text[start:].replace("|", "\\|")])


def fence(text: str, language: str = "") -> str:
    """``text`` in a fenced code block whose fence is longer than any backtick run inside."""
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{language}\n{text.rstrip()}\n{ticks}\n"
