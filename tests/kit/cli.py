"""Helpers of the command-line tests: a run config file, a folder's snapshot, a secret."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml

SECRET = "pa55-w0rd"
"""A password the cases put in URIs: no message may show it."""


def run_config(output_dir: Path, data: Path, **training: Any) -> Path:
    """A 1-epoch MVAE run config on ``data`` into ``output_dir``, written beside it."""
    path = output_dir.parent / f"{output_dir.name}.yaml"
    raw = {
        "model": "mvae",
        "data": str(data),
        "model_config": {"latent_dim": 2},
        "training": {"epochs": 1, "batch_size": 32, "progress_bar": False, **training},
        "mlflow": {"enabled": False},
        "output_dir": str(output_dir),
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) by its content's digest."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
