"""A folder shared by every pytest process of one run, and building things there once."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock


def run_folder(basetemp: Path) -> Path:
    """``kit/`` in the folder of this run, the same for every xdist worker.

    Under pytest-xdist each worker's base temporary folder is ``pytest-N/popen-gwK``, so the run's
    folder is its parent; a run without workers has ``pytest-N`` itself. Nothing is kept across
    runs: a later run may have other generator code.
    """
    folder = basetemp.parent if "PYTEST_XDIST_WORKER" in os.environ else basetemp
    path = folder / "kit"
    path.mkdir(exist_ok=True)
    return path


def build_once(folder: Path, build: Callable[[Path], object]) -> Path:
    """``folder``, after ``build(folder)`` by whichever process of the run asks first.

    ``build`` writes ``folder``, which does not exist when it is called. A ``.done`` marker
    beside it, written once ``build`` returns, tells later callers that the folder is whole: a
    process that died mid-build leaves a folder that the next caller builds again.
    """
    done = folder.with_name(folder.name + ".done")
    with FileLock(str(folder) + ".lock"):
        if not done.exists():
            if folder.exists():
                shutil.rmtree(folder)
            build(folder)
            done.touch()
    return folder
