"""The installed distribution of this project: its name on an index and its version.

The import package is ``multivae``; the distribution is called :data:`DISTRIBUTION`, because the
name ``multivae`` on the Python Package Index belongs to another project (the MultiVae research
library). Nothing here may ask an index for ``multivae``.
"""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "multivae-platform"
"""``pip install multivae-platform`` (or ``pip install -e .`` from the checkout)."""


def installed_version() -> str:
    """The installed version of :data:`DISTRIBUTION`, or ``"unknown"`` for a bare checkout."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"
