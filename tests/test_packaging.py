"""The built distribution: its own name (not the index's ``multivae``), and what it carries."""

import email
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from multivae.distribution import DISTRIBUTION, installed_version
from pipelines.settings import read_env_file

ROOT = Path(__file__).resolve().parents[1]
LEFT_OUT = (".git", ".venv", "benchmarks", "runs", "build", "dist", "__pycache__", "*.egg-info")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel of a copy of the checkout (the build writes nothing into the checkout)."""
    source = tmp_path_factory.mktemp("source") / "project"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*LEFT_OUT))
    out = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run(
        [*pip, "--wheel-dir", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("*.whl")
    return built


def test_the_wheel_is_not_called_multivae(wheel):
    assert DISTRIBUTION == "multivae-platform"
    assert wheel.name.startswith("multivae_platform-")
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        fields = email.message_from_bytes(archive.read(metadata))
    assert fields["Name"] == "multivae-platform"
    assert fields["Name"].lower() != "multivae"
    # Its own extras refer to itself, never to the index's multivae.
    requirements = fields.get_all("Requires-Dist")
    assert not [r for r in requirements if r.split("[")[0].split(" ")[0].lower() == "multivae"]
    assert installed_version() == fields["Version"]


def test_the_wheel_carries_the_library_the_components_and_the_pipeline(wheel):
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
        names = set(archive.namelist())
    assert {"multivae", "pipelines", "components"} <= tops
    assert {"pipelines/__main__.py", "components/train.py", "multivae/cli/__main__.py"} <= names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]


def test_the_pipeline_compiles_from_the_unpacked_wheel_alone(wheel, tmp_path, fresh_python):
    """``python -m pipelines compile`` from the wheel's files, outside the checkout."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
        packaged = archive.read("pipelines/settings.env")
    assert packaged == (ROOT / "infra" / "base" / "settings.env").read_bytes()
    python = fresh_python(site)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    done = subprocess.run(
        [str(python), "-I", "-m", "pipelines", "compile", "--out", str(cwd / "p.yaml")],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = subprocess.run(
        [str(python), "-I", "-c", "import multivae, pipelines; print(multivae.__file__)"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert found.startswith(str(site)), found
    compiled = (cwd / "p.yaml").read_text()
    image = read_env_file(ROOT / "infra" / "base" / "settings.env")["MULTIVAE_IMAGE"]
    assert f"image: {image}" in compiled
