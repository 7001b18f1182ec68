"""Fixtures shared across test folders."""

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

import multivae
from multivae.models.base import ModalityConfig
from multivae.nn.architectures import ArchitectureConfig


@pytest.fixture
def tiny_mvae():
    """A small MVAE over a 4-d vector ``x`` and a 3-class categorical ``y`` (seeded)."""
    torch.manual_seed(0)
    cls = multivae.get_model_class("mvae")
    config = cls.config_class(
        modalities={
            "x": ModalityConfig(shape=(4,), encoder=ArchitectureConfig("mlp", {"hidden": [8]})),
            "y": ModalityConfig(
                shape=(),
                likelihood="categorical",
                num_categories=3,
                encoder=ArchitectureConfig("embedding", {"embedding_dim": 4, "hidden": [8]}),
            ),
        },
        latent_dim=2,
    )
    return multivae.create_model("mvae", config)


@pytest.fixture
def fresh_python(tmp_path):
    """A factory of new virtual environments that see this one's dependencies, not the project.

    ``fresh_python(*folders)`` returns the interpreter of a new venv whose site-packages lists
    ours (and then ``folders``) as plain path entries: the packages there import, but the
    ``.pth`` files there, among them the editable install of this project, are not run, so
    ``import multivae`` fails in it unless a folder given (an unpacked wheel) or the code of a
    loaded model provides it. Run it with ``-I`` so the working directory is not on the path.
    """
    created = []

    def make(*folders):
        folder = tmp_path / f"venv-{len(created)}"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
        python = folder / "bin" / "python"
        purelib = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        entries = [sysconfig.get_paths()["purelib"], *map(str, folders)]
        Path(purelib, "dependencies.pth").write_text("\n".join(entries) + "\n")
        created.append(python)
        return python

    return make
