"""MkDocs hooks of the site (``hooks:`` in mkdocs.yml).

The navigation files that the generators write for mkdocs-literate-nav (``api/SUMMARY.md``,
``models/SUMMARY.md``) are read by that plugin; they are not pages of the site.
"""

from __future__ import annotations

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from mkdocs.structure.files import Files, InclusionLevel


@event_priority(-200)  # after literate-nav (-100) has read them
def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Leave the literate-nav files out of the built site."""
    for file in files:
        if file.src_uri.endswith("/SUMMARY.md"):
            file.inclusion = InclusionLevel.EXCLUDED
    return files
