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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
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


def mark_output_once(folder: str | os.PathLike[str], kind: str, command: str) -> None:
    """Mark ``folder`` unless it is marked already (a resumed run keeps its first marker)."""
    if read_output_marker(folder) is None:
        write_output_marker(folder, kind, command)


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


@dataclass(frozen=True)
class OutputKind:
    """What one kind of command output is, and what may be done with an earlier one.

    Attributes:
        name: The kind, recorded in the output's marker (``dataset``, ``run``, ...).
        again: What the command that wrote an output of this kind may do with it later:
            ``overwrite`` (replace it when the user passes ``--overwrite``), ``resume``
            (continue it; the command's own checks decide, e.g. ``multivae train --resume``),
            ``add`` (add to it: run-local adds a run beside the earlier ones), ``never``
            (a sweep never replaces another).
        slots: Sub-folders of such an output that other outputs may occupy, by the kind they
            admit (``*``: any kind): a run's ``evaluation/`` holds its evaluation, a sweep's
            ``trials/`` its trial runs, a pipeline's ``kfp/`` its steps' outputs.
        file: The output is one file (``python -m pipelines compile``), not a folder.
        signature: Files that identify an unmarked folder as this kind's earlier output
            (written before output markers existed): a run's ``run.yaml`` or checkpoint.
    """

    name: str
    again: str
    slots: Mapping[str, str] = field(default_factory=dict)
    file: bool = False
    signature: tuple[str, ...] = ()


OUTPUT_KINDS: dict[str, OutputKind] = {
    kind.name: kind
    for kind in (
        OutputKind("dataset", "overwrite"),
        OutputKind(
            "run",
            "resume",
            {"evaluation": "evaluation", "ray": "*"},
            signature=("run.yaml", "checkpoint.pt"),
        ),
        OutputKind("sweep", "never", {"trials": "run", "best": "run", "tune": "*"}),
        OutputKind("classifiers", "overwrite"),
        OutputKind("evaluation", "overwrite"),
        OutputKind("sampler", "overwrite", signature=("sampler.json", "joint.json")),
        OutputKind("pipeline runs", "add", {"kfp": "*"}),
        OutputKind("compiled pipeline", "overwrite", file=True),
    )
}
"""Every kind of output a command writes (:func:`claim_output`)."""

COMPILED_PIPELINE_HEADER = "# PIPELINE DEFINITION"
"""The first line of the KFP IR YAML that ``python -m pipelines compile`` writes."""


def _enclosing_output(path: Path) -> tuple[Path, dict[str, str]] | None:
    """The nearest folder above ``path`` that holds a command's output marker."""
    for parent in path.parents:
        marker = read_output_marker(parent)
        if marker is not None:
            return parent, marker
    return None


def _check_location(path: Path, kind: OutputKind, command: str, option: str) -> None:
    """The rules on where an output may be, whatever is there now."""
    try:
        cwd = Path.cwd().resolve()
    except OSError:  # a working directory deleted under this process: no folder to protect
        cwd = None
    if cwd is not None and (path == cwd or path in cwd.parents):
        what = "the current directory" if path == cwd else "a folder above the current directory"
        # An empty current directory is a fine place for one command's output folder, but a
        # folder above it (or the current one with the user's files) never is.
        if path != cwd or any(cwd.iterdir()):
            raise FileExistsError(
                f"{option} {path}: is {what}; outputs go to a folder of their own, e.g. "
                f"{option} runs/{kind.name.replace(' ', '-')}"
            )
    if path == Path(path.anchor) or path == Path.home().resolve():
        raise FileExistsError(
            f"{option} {path}: is the file system's root or the home folder; give a folder "
            "of its own"
        )
    inside = _dataset_root(path)
    if inside is not None:
        raise FileExistsError(
            f"{option} {path}: inside the dataset {inside}; outputs never land inside a "
            "dataset's folder, give a folder outside it"
        )
    enclosing = _enclosing_output(path)
    if enclosing is not None:
        owner, marker = enclosing
        owner_kind = OUTPUT_KINDS.get(marker["kind"])
        slot = path.relative_to(owner).parts[0]
        admitted = None if owner_kind is None else owner_kind.slots.get(slot)
        if admitted not in ("*", kind.name):
            slots = (
                ""
                if owner_kind is None
                else ", ".join(f"{name}/ ({what})" for name, what in owner_kind.slots.items())
            )
            raise FileExistsError(
                f"{option} {path}: inside the {marker['kind']} {owner} written by "
                f"{marker.get('command')}; a {kind.name} never lands inside another "
                f"command's output{f' (it admits only {slots})' if slots else ''}; give a "
                "folder outside it"
            )


def claim_output(
    directory: str | os.PathLike[str] | None,
    kind: str,
    command: str,
    *,
    overwrite: bool = False,
    option: str = "--out",
) -> Path:
    """Check that ``command`` may write its ``kind`` of output at ``directory``.

    The one rule every command that writes obeys (the reliability battery tries it on each):

    * a location must be given, and not as an empty text (which would mean the current
      directory); never the current directory when it holds anything, nor a folder above it,
      the file system's root or the home folder;
    * never inside a dataset, nor inside another command's output, except in a slot that
      output admits (:attr:`OutputKind.slots`: a run's ``evaluation/``, a sweep's trials);
    * a folder that does not exist, or an empty one; a folder of other files never (whatever
      the flags); the command's own earlier output of the same kind (its marker, see
      :func:`write_output_marker`) by the kind's rule (:attr:`OutputKind.again`): replaced with
      ``overwrite``, continued by the command's own checks, added to, or never.

    (Stale staging folders of killed writers are removed by :func:`staged_folder` when the
    output is written.)

    Args:
        directory: Where the output goes (a folder; a file for a ``file`` kind).
        kind: A key of :data:`OUTPUT_KINDS`.
        command: The command, as the user types it (``multivae sample``).
        overwrite: The user asked to replace an earlier output of this command.
        option: How the user gave the location (``--out``, ``output_dir``), for the messages.

    Returns:
        The location, resolved against the working directory.

    Raises:
        ValueError: For a location not given or empty.
        FileExistsError: For every location the rule refuses, naming the option, the path and
            why.
    """
    rule = OUTPUT_KINDS[kind]
    if directory is None or not str(directory).strip():
        found = "nothing" if directory is None else f"an empty text {str(directory)!r}"
        raise ValueError(f"{option}: expected a path (where the {kind} goes), found {found}")
    path = Path(directory).expanduser().resolve()
    _check_location(path, rule, command, option)
    if rule.file:
        if path.is_dir():
            raise FileExistsError(f"{option} {path}: is a folder; expected a file to write")
        if path.exists():
            with path.open("rb") as handle:
                first = handle.readline().decode(errors="replace").strip()
            if first != COMPILED_PIPELINE_HEADER:
                raise FileExistsError(
                    f"{option} {path}: is a file {command} did not write; give a new file "
                    "(nothing there is replaced, whatever the flags)"
                )
        return path
    if not path.exists():
        return path
    if not path.is_dir():
        raise FileExistsError(f"{option} {path}: is a file; expected a new or empty folder")
    if not any(path.iterdir()):
        return path
    marker = read_output_marker(path)
    if marker is None and any((path / name).exists() for name in rule.signature):
        marker = {"kind": kind, "command": command, "created": "before output markers"}
    if marker is None:
        names = sorted(p.name for p in path.iterdir())[:5]
        raise FileExistsError(
            f"{option} {path}: holds files {command} did not write ({names}); give a new or "
            "empty folder (nothing there is replaced, whatever the flags)"
        )
    if marker["kind"] != kind:
        raise FileExistsError(
            f"{option} {path}: holds a {marker['kind']} written by {marker.get('command')}, "
            f"not a {kind}; give another folder"
        )
    if rule.again == "never":
        raise FileExistsError(
            f"{option} {path}: holds an earlier {kind} ({marker.get('command')}, "
            f"{marker.get('created')}); a {kind} never replaces another, give another folder"
        )
    if rule.again == "overwrite" and not overwrite:
        raise FileExistsError(
            f"{option} {path}: holds an earlier {kind} ({marker.get('command')}, "
            f"{marker.get('created')}); pass --overwrite to replace it, or give another folder"
        )
    return path
