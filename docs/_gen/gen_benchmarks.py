"""The benchmark results page, ``benchmarks/results.md``: ``benchmarks/RESULTS.md``, verbatim.

The results live beside the benchmark scripts, where the scripts and the people running them
write; the site shows that file as it is at build time rather than a copy kept by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

import mkdocs_gen_files

sys.path.insert(0, str(Path(__file__).parent))  # site_common, beside this file
from site_common import ROOT

SOURCE = Path("benchmarks", "RESULTS.md")

with mkdocs_gen_files.open("benchmarks/results.md", "w") as out:
    out.write((ROOT / SOURCE).read_text())
mkdocs_gen_files.set_edit_path("benchmarks/results.md", SOURCE.as_posix())
