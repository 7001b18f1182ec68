"""The deployment's settings, read from ``infra/base/settings.env`` (the one place they live).

The same file feeds kustomize (the ``multivae-settings`` ConfigMap and every container image),
``infra/build-image.sh`` and this package: the image of every pipeline component and the
defaults of the pipeline's cluster parameters come from here, so nothing is edited by hand in
several files. An environment variable of the same name overrides a value (for example
``MULTIVAE_IMAGE=registry.example.com/multivae:dev python -m pipelines compile``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPOSITORY_SETTINGS_FILE = HERE.parent / "infra" / "base" / "settings.env"
PACKAGED_SETTINGS_FILE = HERE / "settings.env"
"""The copy a built wheel carries (``setup.py`` copies the repository's file at build time)."""
SETTINGS_FILE = (
    REPOSITORY_SETTINGS_FILE if REPOSITORY_SETTINGS_FILE.is_file() else PACKAGED_SETTINGS_FILE
)
"""The repository's file in a checkout (editable install), else the wheel's copy."""
KEYS = (
    "MULTIVAE_IMAGE",
    "MULTIVAE_NAMESPACE",
    "MLFLOW_TRACKING_URI",
    "RAY_ADDRESS",
    "RAY_CLUSTER_NAME",
    "HF_REPO_ID",
)


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """``KEY=value`` lines of a settings file; ``#`` comments and blank lines are skipped.

    Raises:
        ValueError: For a line that is not ``KEY=value`` (file and line number named).
    """
    values: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        key, sep, value = text.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"{path}:{number}: expected KEY=value, found {line!r}")
        values[key.strip()] = value.strip()
    return values


@dataclass(frozen=True)
class Settings:
    """The deployment settings the pipeline uses."""

    image: str
    namespace: str
    mlflow_tracking_uri: str
    ray_address: str
    ray_cluster_name: str
    hf_repo_id: str


def load_settings(
    path: str | os.PathLike[str] = SETTINGS_FILE, environ: dict[str, str] | None = None
) -> Settings:
    """The settings of ``path``, each overridden by the environment variable of its name.

    Raises:
        ValueError: When a key is missing from both the file and the environment.
    """
    environ = dict(os.environ if environ is None else environ)
    values = read_env_file(path) if Path(path).is_file() else {}
    merged = {key: environ.get(key, values.get(key, "")) for key in KEYS}
    missing = [key for key in ("MULTIVAE_IMAGE",) if not merged[key]]
    if missing:
        raise ValueError(f"{path}: no {missing[0]} (and no environment variable of that name)")
    return Settings(
        image=merged["MULTIVAE_IMAGE"],
        namespace=merged["MULTIVAE_NAMESPACE"],
        mlflow_tracking_uri=merged["MLFLOW_TRACKING_URI"],
        ray_address=merged["RAY_ADDRESS"],
        ray_cluster_name=merged["RAY_CLUSTER_NAME"],
        hf_repo_id=merged["HF_REPO_ID"],
    )


SETTINGS = load_settings()
"""The settings at import time (the components' image is fixed when they are defined)."""
