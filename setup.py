"""The build's one custom step: the deployment settings travel inside the ``pipelines`` package.

``infra/base/settings.env`` is the one place the deployment settings live (kustomize reads it,
and it must stay inside the kustomize tree). A wheel has no ``infra/``, so the build copies the
file to ``pipelines/settings.env``, where :mod:`pipelines.settings` finds it when the repository's
copy is absent. Everything else is declared in ``pyproject.toml``.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SETTINGS = Path("infra") / "base" / "settings.env"


class BuildWithSettings(build_py):
    """``build_py``, then the settings file into the built ``pipelines`` package."""

    def run(self) -> None:
        """Build the packages, then copy the settings file."""
        super().run()
        target = Path(self.build_lib) / "pipelines" / SETTINGS.name
        if target.parent.is_dir():
            shutil.copyfile(SETTINGS, target)


setup(cmdclass={"build_py": BuildWithSettings})
