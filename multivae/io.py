"""Atomic writes of files and folders: readers see the old version or the new one, never half.

Every writer in the project (model folders, datasets, samplers, classifiers, run outputs) goes
through :func:`staged_folder` or :func:`atomic_write_text`, so a crash or a full disk leaves the
previous version in place and no partial file under the final name.

The commands that write a dataset follow one rule on their output folder (:func:`claim_output`):
they write a new or empty folder; they replace a folder only when it holds their own earlier
output of the same kind (the marker file they wrote, ``.multivae-output.json``) and the user
asked (``--overwrite``); they never write into another folder, nor inside a dataset. Staging
folders of a killed command are removed by the next one that writes beside them.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from multivae.names import OUTPUT_MARKER_FILE


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
    remove_stale_staging(directory)
    # The process id lets a later writer tell a killed writer's leftovers from a live one's.
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_staging(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the staging folders that killed writers of ``directory`` left beside it.

    Only ``.<name>.tmp-<pid>-*`` and ``.<name>.old-<pid>-*`` folders whose process is gone on
    this machine are removed; a live writer's are kept. Returns what was removed.
    """
    directory = Path(directory)
    removed: list[Path] = []
    if not directory.parent.is_dir():
        return removed
    for kind in ("tmp", "old"):
        for path in directory.parent.glob(f".{directory.name}.{kind}-*"):
            pid = path.name.rsplit(f".{kind}-", 1)[1].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def read_output_marker(directory: str | os.PathLike[str]) -> dict[str, str] | None:
    """The marker a command wrote into its output folder, or ``None``."""
    path = Path(directory) / OUTPUT_MARKER_FILE
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and "kind" in marker else None


def write_output_marker(folder: str | os.PathLike[str], kind: str, command: str) -> None:
    """Mark ``folder`` as the output of ``command``, of ``kind`` (e.g. ``dataset``)."""
    marker = {"kind": kind, "command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_text(Path(folder) / OUTPUT_MARKER_FILE, json.dumps(marker, indent=2) + "\n")


def _dataset_root(path: Path) -> Path | None:
    """The dataset folder ``path`` lies in (a marked dataset, or a folder with split folders)."""
    for parent in path.resolve().parents:
        marker = read_output_marker(parent)
        if marker is not None and marker["kind"] == "dataset":
            return parent
        if any(
            (parent / split).is_dir() and any((parent / split).glob("*.parquet"))
            for split in ("train", "val", "test")
        ):
            return parent
    return None


def claim_output(
    directory: str | os.PathLike[str], kind: str, command: str, *, overwrite: bool = False
) -> Path:
    """Check that ``command`` may write its ``kind`` of output at ``directory``.

    Allowed: a folder that does not exist, an empty folder, and, with ``overwrite``, a folder
    holding this command kind's own earlier output (its marker). (Stale staging folders of
    killed writers are removed by :func:`staged_folder` when the output is written.)

    Raises:
        FileExistsError: For a file, a folder of other content (no marker, or another kind),
            an earlier output without ``overwrite``, or a folder inside a dataset.
    """
    directory = Path(directory)
    inside = _dataset_root(directory)
    if inside is not None:
        raise FileExistsError(
            f"{directory}: inside the dataset {inside}; outputs never land inside a dataset's "
            "folder, give a folder outside it"
        )
    if directory.exists():
        if not directory.is_dir():
            raise FileExistsError(f"{directory} is a file; expected a new or empty folder")
        if any(directory.iterdir()):
            marker = read_output_marker(directory)
            if marker is None:
                found = sorted(p.name for p in directory.iterdir())[:5]
                raise FileExistsError(
                    f"{directory} holds files {command} did not write ({found}); give a new or "
                    "empty folder (nothing there is replaced, whatever the flags)"
                )
            if marker["kind"] != kind:
                raise FileExistsError(
                    f"{directory} holds a {marker['kind']} written by {marker.get('command')}, "
                    f"not a {kind}; give another folder"
                )
            if not overwrite:
                raise FileExistsError(
                    f"{directory} holds an earlier {kind} ({marker.get('command')}, "
                    f"{marker.get('created')}); pass --overwrite to replace it, or give another "
                    "folder"
                )
    return directory
