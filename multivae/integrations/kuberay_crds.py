"""The KubeRay CustomResourceDefinitions the project's manifests are written against.

The ``RayCluster`` and ``RayJob`` manifests under ``infra/`` and the ``RayJob`` that
:func:`multivae.integrations.kuberay.rayjob_manifest` builds are validated against the OpenAPI
schemas of the pinned KubeRay release (:data:`KUBERAY_VERSION`, the operator version
``docs/deploy.md`` installs). :func:`crd_path` finds each CRD file, in this order:

1. the folder named by the environment variable :data:`CRD_FOLDER_ENV`
   (``MULTIVAE_KUBERAY_CRDS``), for offline machines: it must hold the files of
   :data:`CRD_FILES`;
2. the cache, ``$XDG_CACHE_HOME/multivae/kuberay-crds/v<version>/`` (``~/.cache`` by default);
3. else it downloads the file from the release's tag on GitHub (:data:`CRD_URL`) into the cache.

Every file is checked against its SHA-256 in :data:`CRD_FILES`, wherever it came from, so a
schema of another release, a truncated download or an edited copy is refused with the path and
both digests.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

KUBERAY_VERSION = "1.7.0"
"""The KubeRay operator release (``docs/deploy.md`` installs its Helm chart)."""
CRD_URL = (
    "https://raw.githubusercontent.com/ray-project/kuberay/v{version}/"
    "ray-operator/config/crd/bases/{file}"
)
CRD_FILES = {
    "RayCluster": (
        "ray.io_rayclusters.yaml",
        "c44704442eef0c6721ad40c1d66782c8bd3fdab9d3344306a5820910a679baa1",
    ),
    "RayJob": (
        "ray.io_rayjobs.yaml",
        "01a5cf3b17c1769fda44af7e82debcd98722f0c27b9ab84d084681c6649121f5",
    ),
}
"""Kind -> (file name, SHA-256 of the file at :data:`KUBERAY_VERSION`)."""
CRD_FOLDER_ENV = "MULTIVAE_KUBERAY_CRDS"
DOWNLOAD_TIMEOUT_S = 30.0


def cache_folder() -> Path:
    """Where downloaded CRDs are kept: ``$XDG_CACHE_HOME/multivae/kuberay-crds/v<version>``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "multivae" / "kuberay-crds" / f"v{KUBERAY_VERSION}"


def _kind_entry(kind: str) -> tuple[str, str]:
    if kind not in CRD_FILES:
        raise ValueError(f"unknown KubeRay kind {kind!r}; expected one of {sorted(CRD_FILES)}")
    return CRD_FILES[kind]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check(path: Path, expected: str, origin: str) -> Path:
    found = _digest(path)
    if found != expected:
        raise ValueError(
            f"{path} ({origin}): SHA-256 {found}, expected {expected} (the file of KubeRay "
            f"v{KUBERAY_VERSION}); replace it with that release's file"
        )
    return path


def _download(url: str, target: Path, expected: str) -> Path:
    """Fetch ``url`` into ``target`` atomically, after checking its digest."""
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            content = response.read()
    except (urllib.error.URLError, OSError) as error:
        raise ConnectionError(
            f"could not download {url} ({error}); on a machine without network, set "
            f"{CRD_FOLDER_ENV} to a folder holding {sorted(f for f, _ in CRD_FILES.values())} "
            f"of KubeRay v{KUBERAY_VERSION}"
        ) from error
    found = hashlib.sha256(content).hexdigest()
    if found != expected:
        raise ValueError(f"{url}: SHA-256 {found}, expected {expected}; nothing was cached")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(content)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return target


def crd_path(kind: str) -> Path:
    """The checked CRD file of ``kind`` (``RayCluster`` or ``RayJob``), downloaded if needed.

    Raises:
        ValueError: An unknown kind, or a file whose SHA-256 is not the pinned one.
        FileNotFoundError: :data:`CRD_FOLDER_ENV` names a folder without the file.
        ConnectionError: The download failed (the message names the offline override).
    """
    file, expected = _kind_entry(kind)
    override = os.environ.get(CRD_FOLDER_ENV)
    if override:
        path = Path(override) / file
        if not path.is_file():
            raise FileNotFoundError(
                f"{CRD_FOLDER_ENV}={override}: no {file} there; expected the KubeRay "
                f"v{KUBERAY_VERSION} CRD files {sorted(f for f, _ in CRD_FILES.values())}"
            )
        return _check(path, expected, f"from {CRD_FOLDER_ENV}")
    cached = cache_folder() / file
    if cached.is_file() and _digest(cached) == expected:
        return cached
    return _download(CRD_URL.format(version=KUBERAY_VERSION, file=file), cached, expected)


def crd_schema(kind: str, version: str = "v1") -> dict[str, Any]:
    """The OpenAPI v3 schema of ``kind`` at API ``version`` (``ray.io/v1`` by default)."""
    document = yaml.safe_load(crd_path(kind).read_text())
    schemas = [v for v in document["spec"]["versions"] if v["name"] == version]
    if not schemas:
        found = [v["name"] for v in document["spec"]["versions"]]
        raise ValueError(f"{kind}: no API version {version!r} in its CRD; found {found}")
    schema: dict[str, Any] = schemas[0]["schema"]["openAPIV3Schema"]
    return schema
