"""Fixtures shared across test folders; the shared material itself is built by ``tests/kit``.

The suite runs on pytest-xdist workers (``-n logical`` in ``pyproject.toml``), each on one torch
thread. Tests marked ``integration`` start Ray clusters, servers or KFP's local runner: they all
run in one worker, one at a time (``xdist_group``), while the other worker takes the rest.
"""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from kit.data import learning_poly_digits
from kit.judges import poly_digits_judge
from kit.shared import run_folder
from threadpoolctl import threadpool_limits

import multivae
from multivae.models.base import ModalityConfig
from multivae.nn.architectures import ArchitectureConfig

SERIAL_GROUP = "integration"
"""The xdist group of every test marked ``integration``."""


def pytest_itemcollected(item):
    """Put every ``integration`` test in one xdist group, as it is collected.

    (Before any ``pytest_collection_modifyitems``, where xdist reads the groups.)
    """
    if item.get_closest_marker("integration"):
        item.add_marker(pytest.mark.xdist_group(SERIAL_GROUP))


def pytest_collection_finish(session):
    """Refuse to run when xdist would spread the integration tests over several workers.

    xdist's ``loadgroup`` groups by a suffix it writes into each node id; a pytest whose node ids
    ignore that write (9.2, pytest-dev/pytest-xdist#1386) runs two Ray clusters at once.
    """
    if not getattr(session.config.option, "loadgroup", False):
        return
    for item in session.items:
        if item.get_closest_marker("integration") and not item.nodeid.endswith(f"@{SERIAL_GROUP}"):
            raise pytest.UsageError(
                f"{item.nodeid}: expected the xdist group suffix @{SERIAL_GROUP} on every "
                "integration test, found none; this pytest and pytest-xdist do not group tests "
                "(see the pytest pin in pyproject.toml)"
            )


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One torch thread per pytest process: the xdist workers take one core each.

    The models of the tests are small; on two cores shared by two workers, more threads only
    busy-wait against each other (up to ten times slower, measured on the samplers' flows and
    on k-means).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # Processes the tests start (the CLI, fresh interpreters) compute with one thread too, so
    # that their numbers are bit for bit those of this process.
    environment = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    # The same for the OpenMP and BLAS pools of NumPy and scikit-learn (k-means, t-SNE).
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(threads)
    if environment is None:
        del os.environ["OMP_NUM_THREADS"]
    else:
        os.environ["OMP_NUM_THREADS"] = environment


@pytest.fixture(scope="session")
def kit_folder(tmp_path_factory):
    """The folder that every process of this run shares (see :mod:`kit.shared`)."""
    return run_folder(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def learning_data(kit_folder):
    """``learning_data(num_modalities)``: poly-digits of the learning test, built once per run."""
    return lambda num_modalities: learning_poly_digits(kit_folder, num_modalities)


@pytest.fixture(scope="session")
def m1_judge(kit_folder):
    """The classifier of poly-digits' m1 images, trained once per run (see :mod:`kit.judges`)."""
    return poly_digits_judge(kit_folder)


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
