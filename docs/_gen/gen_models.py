"""One page per registered model, ``models/<name>.md``, and the models' overview.

Everything on a model's page comes from the code and the repository, nothing is written by hand:

* its module docstring (the objective, the paper, the deliberate differences from the paper and
  the reference code) and its class's summary;
* its options: the fields of its config dataclass with their types, defaults and the
  ``Attributes:`` documentation of the config classes (the model's own, then those every model
  shares, from :class:`multivae.models.base.ModelConfig`);
* its declared capabilities (what ``multivae list-models`` prints), each with the meaning that
  :class:`multivae.models.base.Capabilities` documents;
* its example run config, ``examples/<name>.yaml``, verbatim;
* its rows of the parity benchmark against MultiVae (``benchmarks/results/reference_parity.json``,
  the table of ``benchmarks/reference_parity.py``), or a sentence saying it has none.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import griffe
import mkdocs_gen_files

sys.path.insert(0, str(Path(__file__).parent))  # site_common, beside this file
from site_common import PACKAGE, ROOT, cell, fence
from sphinx_roles import SphinxRoles

import multivae
from multivae.models.base import Capabilities, ModelConfig

PARITY = ROOT / "benchmarks" / "results" / "reference_parity.json"
PARITY_SCRIPT = ROOT / "benchmarks" / "reference_parity.py"
EXAMPLES = ROOT / "examples"

api = griffe.load(
    PACKAGE,
    search_paths=[str(ROOT)],
    docstring_parser="google",
    extensions=griffe.load_extensions(SphinxRoles),
)


def griffe_object(cls: type) -> Any:
    """The griffe object of a class of the package (docstrings already made Markdown)."""
    path = f"{cls.__module__}.{cls.__qualname__}"
    return api[path.removeprefix(f"{PACKAGE}.")]


def attribute_docs(cls: type) -> dict[str, str]:
    """Field name -> its ``Attributes:`` entry, over the class and its bases in the package."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith(f"{PACKAGE}.") or klass.__doc__ is None:
            continue
        for section in griffe_object(klass).docstring.parsed:
            if section.kind is griffe.DocstringSectionKind.attributes:
                docs.update({item.name: item.description for item in section.value})
    return docs


def summary(docstring: str) -> str:
    """The first paragraph of a docstring, on one line."""
    return " ".join(docstring.strip().split("\n\n")[0].split())


def plain(value: Any) -> Any:
    """A config value as the plain data a run config holds (what YAML or JSON would say)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def default(field: dataclasses.Field[Any]) -> str:
    """The default of a config field, as it would be written in a run config."""
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "required"
    return f"`{json.dumps(plain(value), default=str)}`"


def type_name(field: dataclasses.Field[Any]) -> str:
    """A field's annotation as written in the source."""
    annotation = field.type
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "?")


def options_table(config_class: type) -> str:
    """The table of a config dataclass's fields: the model's own first, then the shared ones."""
    docs = attribute_docs(config_class)
    shared = {f.name for f in dataclasses.fields(ModelConfig)}
    fields = dataclasses.fields(config_class)
    ordered = [f for f in fields if f.name not in shared] + [f for f in fields if f.name in shared]
    lines = ["| option | type | default | meaning |", "|---|---|---|---|"]
    for field in ordered:
        meaning = docs.get(field.name, "")
        if field.name in shared:
            meaning += " (shared by every model)"
        lines.append(
            f"| `{field.name}` | `{cell(type_name(field))}` | {cell(default(field))} "
            f"| {cell(meaning)} |"
        )
    return "\n".join(lines)


CAPABILITY_DOCS = attribute_docs(Capabilities)


def capability_flags(capabilities: Capabilities) -> list[str]:
    """The declared capabilities, named as ``multivae list-models`` prints them."""
    return [
        name.replace("_", "-") for name, value in dataclasses.asdict(capabilities).items() if value
    ]


def capabilities_table(capabilities: Capabilities) -> str:
    """Every capability, whether the class declares it, and what it means."""
    lines = ["| capability | declared | meaning |", "|---|---|---|"]
    for name, value in dataclasses.asdict(capabilities).items():
        lines.append(
            f"| `{name}` | {'yes' if value else 'no'} | {cell(CAPABILITY_DOCS.get(name, ''))} |"
        )
    return "\n".join(lines)


def parity_module() -> ModuleType:
    """``benchmarks/reference_parity.py``, whose ``markdown`` formats the parity table."""
    spec = importlib.util.spec_from_file_location("_docs_reference_parity", PARITY_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


PARITY_DOCUMENT = json.loads(PARITY.read_text())
PARITY_TABLE = parity_module().markdown


def parity_section(name: str) -> str:
    """The model's rows of the parity benchmark, or why it has none."""
    rows = [row for row in PARITY_DOCUMENT["summary"] if row["model"] == name]
    if not rows:
        return (
            f"No parity rows: the benchmark against {PARITY_DOCUMENT['reference']} "
            f"(`benchmarks/reference_parity.py`) does not run `{name}`, a model the reference "
            "library does not have.\n"
        )
    return (
        f"Against the reference library, {PARITY_DOCUMENT['reference']}, with aligned settings "
        "(`benchmarks/reference_parity.py`, from `benchmarks/results/reference_parity.json`, "
        f"run {PARITY_DOCUMENT['date']}). Coherences are accuracies of the judging classifiers "
        "on generated modalities from 1 and 2 observed ones (mean ± standard deviation over the "
        "seeds); the last columns give ours minus the reference's with a 95% interval. How the "
        "table is made: [Benchmarks](../benchmarks/index.md).\n\n" + PARITY_TABLE(rows) + "\n"
    )


def example_section(name: str) -> str:
    """The model's example run config, verbatim."""
    path = EXAMPLES / f"{name}.yaml"
    if not path.exists():
        return f"No example config: `examples/{name}.yaml` does not exist.\n"
    return (
        f"`examples/{name}.yaml`, runnable as it is "
        f"(`multivae train --config examples/{name}.yaml`):\n\n" + fence(path.read_text(), "yaml")
    )


def title(cls: type) -> str:
    """The model's usual name, as its module docstring starts (``MMVAE+: ...``)."""
    first = (sys.modules[cls.__module__].__doc__ or "").split(":", 1)[0].strip()
    return first if first and len(first) <= 12 else cls.__name__


def model_page(name: str) -> str:
    """The page of one registered model."""
    cls = multivae.get_model_class(name)
    module = api[cls.__module__.removeprefix(f"{PACKAGE}.")]
    klass = griffe_object(cls)
    config = cls.config_class
    return "\n".join(
        [
            f"# {title(cls)}\n",
            f"*{summary(klass.docstring.value)}*\n",
            f'Registered as `{name}` (`multivae.create_model("{name}", config)`, `model: {name}` '
            f"in a run config). Class [`{cls.__name__}`][{cls.__module__}.{cls.__name__}], "
            f"options [`{config.__name__}`][{config.__module__}.{config.__name__}].\n",
            "## Objective, paper and differences\n",
            module.docstring.value.strip() + "\n",
            "## Options\n",
            f"The `model_config` of a run config, or the fields of `{config.__name__}`. "
            "`modalities` may be left out of a run config: each modality then gets its "
            "dataset's likelihood and default architectures "
            "([the model contract](../concepts/model-contract.md)).\n",
            options_table(config) + "\n",
            "## Capabilities\n",
            "What the class declares it can do in some configuration (`multivae list-models`); "
            "a built model answers for its own configuration in `model.capabilities` "
            "([capabilities](../concepts/capabilities.md)).\n",
            capabilities_table(cls.declared_capabilities) + "\n",
            "## Example config\n",
            example_section(name),
            "## Parity with the reference library\n",
            parity_section(name),
        ]
    )


def overview(names: list[str]) -> str:
    """``models/index.md``: every model, its summary and capabilities."""
    lines = [
        "# Models\n",
        "Every registered model (`multivae.list_models()`, `multivae list-models`), trainable on "
        "incomplete data. Each page is generated from the model's code: its objective and paper, "
        "its options with their defaults, its capabilities, its example config and its parity "
        "with the reference library.\n",
        "| model | name | what it is | declared capabilities (`multivae list-models`) |",
        "|---|---|---|---|",
    ]
    for name in names:
        cls = multivae.get_model_class(name)
        flags = ", ".join(f"`{f}`" for f in capability_flags(cls.declared_capabilities))
        lines.append(
            f"| [{title(cls)}]({name}.md) | `{name}` "
            f"| {cell(summary(griffe_object(cls).docstring.value))} | {flags} |"
        )
    lines += [
        "",
        "## Capabilities\n",
        "What each capability means ([`Capabilities`][multivae.models.base.Capabilities]) and "
        "which models declare it ([capabilities](../concepts/capabilities.md)).\n",
        "| capability | meaning | declared by |",
        "|---|---|---|",
    ]
    for field in dataclasses.fields(Capabilities):
        declaring = [
            f"[{title(multivae.get_model_class(n))}]({n}.md)"
            for n in names
            if getattr(multivae.get_model_class(n).declared_capabilities, field.name)
        ]
        lines.append(
            f"| `{field.name}` | {cell(CAPABILITY_DOCS.get(field.name, ''))} "
            f"| {', '.join(declaring) or 'none'} |"
        )
    return "\n".join(lines) + "\n"


names = multivae.list_models()
for name in names:
    with mkdocs_gen_files.open(f"models/{name}.md", "w") as out:
        out.write(model_page(name))

with mkdocs_gen_files.open("models/index.md", "w") as out:
    out.write(overview(names))
with mkdocs_gen_files.open("models/SUMMARY.md", "w") as out:
    out.write("* [All models](index.md)\n")
    out.writelines(f"* [{title(multivae.get_model_class(n))}]({n}.md)\n" for n in names)
