"""The documentation site builds strictly, and its generated pages hold what they must.

The build runs ``mkdocs build --strict`` on a copy of ``mkdocs.yml`` and ``docs/`` (the code,
examples and benchmarks it documents are linked, not copied): mkdocs-gallery writes the
tutorials' pages into the docs folder, which must not happen in the checkout, nor twice at once
in one folder. The tutorials are rendered without being run (their own tests run them). Both
builds share one xdist group, so they never run at the same time.
"""

import argparse
import dataclasses
import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import multivae
from multivae.cli import build_parser as multivae_parser
from pipelines.cli import build_parser as pipelines_parser

ROOT = Path(__file__).resolve().parents[2]
LINKED = ("multivae", "pipelines", "components", "examples", "benchmarks")
"""What the site documents besides ``docs/``: the generators and mkdocstrings read them."""

pytestmark = pytest.mark.xdist_group("docs")


def copy_project(destination: Path, *, tutorials: bool = True) -> Path:
    """``mkdocs.yml`` and ``docs/`` copied into ``destination``, the documented sources linked."""
    destination.mkdir()
    shutil.copy(ROOT / "mkdocs.yml", destination)
    ignored = shutil.ignore_patterns("generated", "__pycache__")
    shutil.copytree(ROOT / "docs", destination / "docs", ignore=ignored)
    if not tutorials:  # an empty gallery: nothing of the tutorials is imported or rendered
        for script in (destination / "docs" / "tutorials").glob("*.py"):
            script.unlink()
    for name in LINKED:
        (destination / name).symlink_to(ROOT / name)
    return destination


def build(project: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """``mkdocs build --strict`` of ``project`` into ``site``, without running the tutorials."""
    environment = dict(
        os.environ,
        MULTIVAE_DOCS_RUN_TUTORIALS="false",
        NO_MKDOCS_2_WARNING="1",  # banners of the theme and a plugin about MkDocs' future
        DISABLE_MKDOCS_2_WARNING="true",
    )
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The built site's folder (the build must have succeeded)."""
    folder = tmp_path_factory.mktemp("docs")
    result = build(copy_project(folder / "project"), folder / "site")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return folder / "site"


def page(site: Path, path: str) -> str:
    """The HTML of the page at ``path`` (``models/mvae`` -> ``models/mvae/index.html``)."""
    file = site / path / "index.html"
    assert file.is_file(), f"no page {path}"
    return file.read_text()


def text(markup: str) -> str:
    """What a page shows: its HTML without the tags (code highlighting splits lines in spans)."""
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def test_every_model_has_a_page_with_its_options_capabilities_example_and_parity(site):
    overview = page(site, "models")
    for name in multivae.list_models():
        cls = multivae.get_model_class(name)
        markup = page(site, f"models/{name}")
        assert f'href="{name}/"' in overview, name
        for field in dataclasses.fields(cls.config_class):
            assert f"<code>{field.name}</code>" in markup, (name, field.name)
        for capability in dataclasses.fields(cls.declared_capabilities):
            assert f"<code>{capability.name}</code>" in markup, (name, capability.name)
        shown = text(markup)
        example = (ROOT / "examples" / f"{name}.yaml").read_text()
        assert all(line in shown for line in example.splitlines()), f"{name}: example config"
        assert "No parity rows" in shown or "ours/ref speed" in shown, name


def commands(parser: argparse.ArgumentParser, name: str):
    yield name
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub_parser in action.choices.items():
                yield from commands(sub_parser, f"{name} {sub_name}")


def test_the_cli_reference_has_every_command_with_its_help(site):
    markup = page(site, "reference/cli")
    shown = text(markup)
    found = [*commands(multivae_parser(), "multivae"), *commands(pipelines_parser(), "pipelines")]
    assert "multivae train-classifiers" in found and "pipelines run-local" in found
    for command in found:
        assert f'id="{command.replace(" ", "-")}"' in markup, command
        assert f"usage: {command.replace('pipelines', 'python -m pipelines')}" in shown, command


def test_the_api_reference_has_a_page_per_module(site):
    for source in sorted((ROOT / "multivae").rglob("*.py")):
        parts = source.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        markup = page(site, "/".join(("api", *parts)))
        assert f'id="{".".join(parts)}"' in markup, parts


def test_the_benchmarks_page_shows_the_results_file(site):
    first = (ROOT / "benchmarks" / "RESULTS.md").read_text().splitlines()[0].lstrip("# ")
    assert first in text(page(site, "benchmarks/results"))


def test_the_getting_started_page_has_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    started = (ROOT / "docs" / "getting-started.md").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("python3 -m venv .venv")]
    assert len(commands) == 2, commands
    for command in commands:
        assert command in started


def test_a_broken_link_or_reference_fails_the_build(tmp_path):
    project = copy_project(tmp_path / "project", tutorials=False)
    index = project / "docs" / "index.md"
    index.write_text(
        index.read_text()
        + "\n[a page that does not exist](no-such-page.md)\n"
        + "\n[an object that does not exist][multivae.no_such_function]\n"
    )
    result = build(project, tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-page.md" in result.stderr, result.stderr[-3000:]
    assert "multivae.no_such_function" in result.stderr, result.stderr[-3000:]
