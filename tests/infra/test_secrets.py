"""No secret value in any file a commit can hold; Secrets come only from gitignored files.

The planted samples are assembled at run time, so that this file itself holds none.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
import yaml
from kustomize_render import INFRA, OVERLAYS, ROOT, read_env_file, render_overlay
from secret_scan import repository_files, scan_files, scan_text

# Keys of the secret files that configure rather than authenticate: their examples may hold a
# default value.
NON_SECRET_KEYS = {
    "MLFLOW_ARTIFACTS_DESTINATION",
    "MLFLOW_S3_ENDPOINT_URL",
    "POSTGRES_USER",
    "POSTGRES_DB",
}

PLANTED = {
    "hf-token.txt": "token = " + "hf_" + "Ab3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3h",
    "ci.sh": "export GITHUB_TOKEN=" + "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
    "aws.cfg": "aws_access_key_id = " + "AKIA" + "IOSFODNN7EXAMPLE",
    "id_ed25519": "-----BEGIN OPENSSH " + "PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n",
    "secret.yaml": "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\nstringData:\n"
    "  password: " + "s3cr3t-Value\n",
    "values.yaml": "postgres:\n  password: " + "hunter2\n",
    "db.env": "POSTGRES_" + "PASSWORD=Tr0ub4dor3\n",
    "ray-auth.env": "auth_" + "token=" + "9f8e7d6c5b4a39281706f5e4d3c2b1a0\n",
    "notes.md": "connect with postgresql://mlflow:" + "pA55w0rd" + "@db:5432/mlflow\n",
}

HARMLESS = {
    "example.env": "POSTGRES_PASSWORD=\nauth_token=\nHF_TOKEN=\n",
    "deploy.md": "postgresql://USER:PASSWORD@HOST:5432/DB and postgresql://u:<password>@h/db\n",
    "raycluster.yaml": "authOptions:\n  mode: token\n  secretName: multivae-ray-auth\n"
    "env:\n  - name: RAY_AUTH_TOKEN\n    valueFrom: {secretKeyRef: {name: x, key: auth_token}}\n",
    "template.yaml": "apiVersion: v1\nkind: Secret\nmetadata: {name: empty}\nstringData:\n"
    "  password: ''\n",
    "shell.md": "export RAY_AUTH_TOKEN=... HF_TOKEN=${HF_TOKEN} AWS_SECRET_ACCESS_KEY=$(cat key)\n",
}


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_scanner_finds_a_planted_secret(tmp_path, name):
    path = tmp_path / name
    path.write_text(PLANTED[name])
    assert scan_files([path], tmp_path), f"missed the secret planted in {name}"


@pytest.mark.parametrize("name", sorted(HARMLESS))
def test_scanner_ignores_placeholders_and_references(name):
    assert scan_text(HARMLESS[name], Path(name)) == []


def test_no_file_a_commit_can_hold_contains_a_secret():
    files = repository_files(ROOT)
    assert any(path.name == "Dockerfile" for path in files)
    assert not any("secrets" in path.parts and path.suffix == ".env" for path in files)
    findings = scan_files(files, ROOT)
    assert not findings, "\n".join(findings)


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_generated_only_from_gitignored_files(overlay):
    directory = INFRA / "overlays" / overlay
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    generators = kustomization["secretGenerator"]
    assert generators
    for generator in generators:
        assert "literals" not in generator and "files" not in generator, generator
        for env in generator["envs"]:
            relative = (directory / env).relative_to(ROOT).as_posix()
            assert _git("check-ignore", "--quiet", "--no-index", relative).returncode == 0, (
                f"{relative} is not gitignored"
            )
            assert _git("ls-files", "--error-unmatch", relative).returncode != 0, (
                f"{relative} is committed"
            )
            example = directory / f"{env}.example"
            assert _git("check-ignore", "--quiet", "--no-index", f"{relative}.example").returncode
            for key, value in read_env_file(example).items():
                assert value == "" or key in NON_SECRET_KEYS, f"{example.name}: {key} has a value"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_secrets_carry_no_committed_value(overlay):
    secrets = [o for o in render_overlay(overlay) if o["kind"] == "Secret"]
    assert len(secrets) >= 3
    for secret in secrets:
        assert "stringData" not in secret
        for key, encoded in secret["data"].items():
            value = base64.b64decode(encoded).decode()
            assert value == "" or key in NON_SECRET_KEYS, f"{secret['metadata']['name']}.{key}"


def test_no_committed_manifest_defines_a_secret():
    for path in INFRA.rglob("*.y*ml"):
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict):
                assert document.get("kind") != "Secret", f"{path}: write a secretGenerator instead"
