"""The Python API reference: one page per module of the package, and its navigation.

``api/<module path>.md`` (a package's page is its ``index.md``) holds ``::: module``, which
mkdocstrings renders from the docstrings; ``api/SUMMARY.md`` is the section's navigation, read
by mkdocs-literate-nav. ``__main__`` modules (``python -m`` entry points) have no page.
"""

from __future__ import annotations

import sys
from pathlib import Path

import mkdocs_gen_files

sys.path.insert(0, str(Path(__file__).parent))  # site_common, beside this file
from site_common import PACKAGE, ROOT

nav = mkdocs_gen_files.Nav()
for source in sorted((ROOT / PACKAGE).rglob("*.py")):
    module = source.relative_to(ROOT).with_suffix("")
    parts = tuple(module.parts)
    if parts[-1] == "__main__":
        continue
    page = Path("api", *parts).with_suffix(".md")
    if parts[-1] == "__init__":
        parts = parts[:-1]
        page = Path("api", *parts, "index.md")
    nav[parts] = page.relative_to("api").as_posix()
    with mkdocs_gen_files.open(page, "w") as out:
        out.write(f"::: {'.'.join(parts)}\n")
    mkdocs_gen_files.set_edit_path(page, source.relative_to(ROOT))

with mkdocs_gen_files.open("api/SUMMARY.md", "w") as out:
    out.writelines(nav.build_literate_nav())
