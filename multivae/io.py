"""Atomic writes of files and folders: readers see the old version or the new one, never half.

Every writer in the project (model folders, datasets, samplers, classifiers, run outputs) goes
through :func:`staged_folder` or :func:`atomic_write_text`, so a crash or a full disk leaves the
previous version in place and no partial file under the final name.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_folder(directory: str | os.PathLike[str], *, create: bool = True) -> Iterator[Path]:
    """Build a folder under a temporary sibling name; on success, put it at ``directory``.

    The body fills the yielded staging folder. When it returns, the staging folder replaces
    ``directory`` (an existing one is renamed away first, then deleted); when it raises, the
    staging folder is deleted and ``directory`` is untouched.

    Args:
        directory: The final folder.
        create: Create the (empty) staging folder; false leaves that to the body.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:12]
    staging = directory.parent / f".{directory.name}.tmp-{tag}"
    if create:
        staging.mkdir()
    try:
        yield staging
        if directory.exists():
            retired = directory.parent / f".{directory.name}.old-{tag}"
            os.replace(directory, retired)
            os.replace(staging, directory)
            shutil.rmtree(retired)
        else:
            os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def atomic_copy_tree(source: str | os.PathLike[str], directory: str | os.PathLike[str]) -> Path:
    """Copy a folder to ``directory`` atomically (see :func:`staged_folder`)."""
    with staged_folder(directory, create=False) as staging:
        shutil.copytree(source, staging)
    return Path(directory)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write a text file through a temporary sibling and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
