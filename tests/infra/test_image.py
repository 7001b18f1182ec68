"""The Dockerfile lints clean, and one image reference (settings.env) is the one in the
Dockerfile's labels and in every container of every overlay; the lock fits the base image."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from kustomize_render import INFRA, OVERLAYS, ROOT, containers, read_settings, render_overlay

DOCKERFILE = ROOT / "Dockerfile"
LOCK = INFRA / "requirements.lock"
# Images the manifests run that are not ours: each must be pinned to a release tag.
THIRD_PARTY_REPOSITORIES = {"postgres", "minio/minio"}


def dockerfile_arg_defaults() -> dict[str, str]:
    """Default value of every ``ARG NAME=value`` of the Dockerfile (the first one wins)."""
    defaults: dict[str, str] = {}
    for match in re.finditer(r"^ARG\s+(\w+)=(\S*)\s*$", DOCKERFILE.read_text(), re.MULTILINE):
        defaults.setdefault(match.group(1), match.group(2).strip('"'))
    return defaults


def dockerfile_labels() -> dict[str, str]:
    """The ``LABEL`` entries of the final stage (continuation lines joined)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    final_stage = text.split("\nFROM ")[-1]
    labels: dict[str, str] = {}
    for line in final_stage.splitlines():
        if line.startswith("LABEL "):
            labels.update(re.findall(r'([\w.-]+)="([^"]*)"', line))
    return labels


def split_image(reference: str) -> tuple[str, str]:
    """(repository, tag) of ``registry/name:tag``; the tag is empty when none is given."""
    name, _, tag = reference.rpartition(":")
    if not name or "/" in tag:
        return reference, ""
    return name, tag


def locked_versions() -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", LOCK.read_text(), re.MULTILINE)
    return {normalize(name): version for name, version in pins}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalize(re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0])


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--format", "json", "--no-fail", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=True,
    )
    findings = json.loads(result.stdout)
    serious = [f for f in findings if f["level"] in ("error", "warning")]
    assert not serious, "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in serious)


def test_hadolint_reports_a_broken_dockerfile(tmp_path):
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM python:latest\nRUN cd /tmp && pip install requests\n")
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--format", "json", "--no-fail", str(broken)],
        capture_output=True,
        text=True,
        check=True,
    )
    levels = {f["code"]: f["level"] for f in json.loads(result.stdout)}
    assert levels.get("DL3007") == "warning" and levels.get("DL3003") == "warning", levels


def test_image_reference_is_the_same_in_settings_dockerfile_and_manifests():
    image = read_settings()["MULTIVAE_IMAGE"]
    assert dockerfile_arg_defaults()["MULTIVAE_IMAGE"] == image
    assert dockerfile_labels()["org.opencontainers.image.ref.name"] == "${MULTIVAE_IMAGE}"
    ours = 0
    for overlay in OVERLAYS:
        for obj in render_overlay(overlay):
            for where, container in containers(obj):
                reference = container["image"]
                if reference == image:
                    ours += 1
                    continue
                repository, tag = split_image(reference)
                assert repository in THIRD_PARTY_REPOSITORIES, f"{overlay} {where}: {reference}"
                assert tag and tag != "latest", f"{overlay} {where}: {reference} is not pinned"
    # Ray head + 2 worker groups, 2 submitters, 2 RayJob clusters of 3 groups, MLflow: per overlay.
    assert ours == 2 * (3 + 2 + 2 * 3 + 1)


def test_image_tag_and_labels_follow_the_package_version():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    repository, tag = split_image(read_settings()["MULTIVAE_IMAGE"])
    assert repository and tag == version
    assert dockerfile_arg_defaults()["MULTIVAE_VERSION"] == version
    labels = dockerfile_labels()
    assert labels["org.opencontainers.image.version"] == "${MULTIVAE_VERSION}"
    for key in ("title", "description", "source", "licenses"):
        assert labels[f"org.opencontainers.image.{key}"], key
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"


def test_base_image_ships_the_locked_torch():
    base = dockerfile_arg_defaults()["BASE_IMAGE"]
    repository, tag = split_image(base)
    assert repository == "pytorch/pytorch" and tag.endswith("-runtime"), base
    locked = locked_versions()
    assert tag.startswith(f"{locked['torch']}-cuda"), (base, locked["torch"])
    pins = dict(re.findall(r"^([\w-]+)==(\S+)$", (INFRA / "lock-pins.txt").read_text(), re.M))
    assert pins == {"torch": locked["torch"], "torchvision": locked["torchvision"]}


def test_lock_pins_every_dependency_of_the_image():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = list(project["dependencies"])
    for extra in ("ray", "mlflow", "kfp"):
        wanted += extras[extra]
    assert project["name"] == "multivae-platform"  # the index's "multivae" is another project
    assert extras["all"] == ["multivae-platform[ray,mlflow,kfp]"]
    server = (INFRA / "requirements-server.in").read_text().splitlines()
    wanted += [line for line in server if line.strip() and not line.startswith("#")]
    locked = locked_versions()
    missing = sorted({requirement_name(r) for r in wanted} - set(locked))
    assert not missing, f"not in {LOCK.name}: {missing}; run infra/lock.sh"
    # The image's versions meet the floors pyproject.toml declares.
    from packaging.requirements import Requirement

    for text in wanted:
        requirement = Requirement(text)
        version = locked[requirement_name(text)]
        assert requirement.specifier.contains(version, prereleases=True), (text, version)
    command = LOCK.read_text().splitlines()[1].lstrip("# ")
    assert command.startswith("uv pip compile pyproject.toml infra/requirements-server.in"), command
    assert "--constraint infra/lock-pins.txt" in command


@pytest.mark.parametrize(
    "path",
    [
        ".git/config",
        ".venv/bin/python",
        "runs/x/mlflow.db",
        "tests/infra/test_image.py",
        "infra/overlays/local/secrets/ray-auth.env",
        "benchmarks/RESULTS.md",
    ],
)
def test_dockerignore_keeps_the_context_to_what_the_image_needs(path):
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), re.MULTILINE)
    for source in " ".join(copied).split():
        assert source in allowed, f"the Dockerfile copies {source}, which .dockerignore drops"
    assert not any(path == a or path.startswith(a + "/") for a in allowed), path


def test_ray_clusters_run_the_locked_ray():
    ray = locked_versions()["ray"]
    for overlay in OVERLAYS:
        for obj in render_overlay(overlay):
            if obj["kind"] == "RayCluster":
                assert obj["spec"]["rayVersion"] == ray, overlay
            if obj["kind"] == "RayJob":
                assert obj["spec"]["rayClusterSpec"]["rayVersion"] == ray, overlay
