"""The package's import graph points one way: each layer imports only itself and layers below.

The graph is read from the source, not from what an import happens to trigger: every ``import``
and ``from ... import`` of every module of ``multivae/``, those inside function bodies included
(a cycle hidden in a function body is still a cycle between layers). Imports under
``if TYPE_CHECKING:`` are left out: they never run and only name types for annotations.

The layers, lowest first, follow the architecture (docs/architecture.md, "Layout"). A new module
must be placed in one, so that where it sits is decided when it is added.
"""

import ast
import itertools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "multivae"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundations",
        (
            "multivae.config",
            "multivae.distribution",
            "multivae.io",
            "multivae.names",
            "multivae.redact",
        ),
    ),
    ("data and shared math", ("multivae.data", "multivae.nn", "multivae.objectives")),
    ("registry", ("multivae.registry",)),
    ("model folder and Hub publishing", ("multivae.model_folder", "multivae.hub")),
    ("models", ("multivae.models",)),
    ("factory and public API", ("multivae.factory", "multivae")),
    ("training and samplers", ("multivae.training", "multivae.samplers")),
    (
        "evaluation, augmentation and the run description",
        ("multivae.metrics", "multivae.augment", "multivae.run_config"),
    ),
    (
        "integrations a run uses",
        (
            "multivae.integrations",
            "multivae.integrations.tracking",
            "multivae.integrations.mlflow",
            "multivae.integrations.mlflow_pyfunc",
            "multivae.integrations.ray_cluster",
            "multivae.integrations.ray_data",
            "multivae.integrations.ray_worker",
            "multivae.integrations.ray_train",
            "multivae.integrations.kuberay",
            "multivae.integrations.kuberay_crds",
        ),
    ),
    ("run orchestration", ("multivae.run",)),
    (
        "sweeps",
        (
            "multivae.integrations.sweep_file",
            "multivae.integrations.sweep_plan",
            "multivae.integrations.sweep_results",
            "multivae.integrations.tune",
        ),
    ),
    ("pipeline steps and command line", ("multivae.workflow", "multivae.cli")),
]


def module_names() -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its ``__init__``)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of the most specific prefix that names ``module``."""
    best: tuple[int, int] | None = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            named = module == prefix or module.startswith(prefix + ".")
            if named and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return best[1]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, outside ``if TYPE_CHECKING:`` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                yield from _imports(child)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def _resolve(name: str, known: set[str]) -> str | None:
    """The known module that importing ``name`` names: itself, or its nearest known parent."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, dict[str, int]]:
    """Module -> {imported module of the package -> line of the first such import}."""
    modules = module_names()
    known = set(modules)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [_resolve(alias.name, known) for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                # ``from multivae import hub`` imports the module multivae.hub; ``from
                # multivae import load_model`` imports the package multivae.
                targets = [
                    f"{base}.{alias.name}"
                    if f"{base}.{alias.name}" in known
                    else _resolve(base, known)
                    for alias in node.names
                ]
            for target in targets:
                if target is not None and target != module:
                    edges.setdefault(target, node.lineno)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle of the graph as ``[a, b, ..., a]``, or ``None`` when it is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, {})):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    """The groups of modules that import each other, directly or not (more than one module)."""

    def reachable(start: str, edges: dict[str, set[str]]) -> set[str]:
        seen, todo = {start}, [start]
        while todo:
            for target in edges.get(todo.pop(), set()):
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        return seen

    forward = {node: set(targets) for node, targets in graph.items()}
    backward: dict[str, set[str]] = {}
    for node, targets in graph.items():
        for target in targets:
            backward.setdefault(target, set()).add(node)
    groups: list[set[str]] = []
    for node in sorted(graph):
        if any(node in group for group in groups):
            continue
        group = reachable(node, forward) & reachable(node, backward)
        if len(group) > 1:
            groups.append(group)
    return groups


def all_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle per group of modules that import each other."""
    cycles = []
    for group in strongly_connected(graph):
        inside = {a: {b: n for b, n in graph[a].items() if b in group} for a in group}
        cycle = find_cycle(inside)
        assert cycle is not None
        cycles.append(cycle)
    return cycles


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    modules = module_names()
    steps = [
        f"  {a} ({LAYERS[layer_of(a)][0]}) -> {b}  [{modules[a].relative_to(ROOT)}:{graph[a][b]}]"
        for a, b in itertools.pairwise(cycle)
    ]
    return "\n".join(steps)


def test_every_module_is_in_a_layer():
    for module in module_names():
        layer_of(module)


def test_the_module_graph_has_no_cycle():
    graph = import_graph()
    report = [
        f"{sorted(group)} import each other, e.g.:\n" + describe(cycle, graph)
        for group, cycle in zip(strongly_connected(graph), all_cycles(graph), strict=True)
    ]
    assert not report, "import cycles:\n" + "\n\n".join(report)


def test_imports_point_down_the_layers():
    graph = import_graph()
    upward = [
        (module, target, line)
        for module, edges in graph.items()
        for target, line in edges.items()
        if layer_of(target) > layer_of(module)
    ]
    layered: dict[str, dict[str, int]] = {}
    for module, edges in graph.items():
        for target, line in edges.items():
            a, b = LAYERS[layer_of(module)][0], LAYERS[layer_of(target)][0]
            if a != b:
                layered.setdefault(a, {}).setdefault(b, line)
    cycle = find_cycle(layered)
    message = "\n".join(
        f"  {module} ({LAYERS[layer_of(module)][0]}) imports {target} "
        f"({LAYERS[layer_of(target)][0]}) at line {line}"
        for module, target, line in upward
    )
    if cycle:
        message += "\nlayer cycle: " + " -> ".join(cycle)
    assert not upward, "imports from a higher layer:\n" + message


def test_the_graph_check_sees_a_cycle_hidden_in_a_function():
    source = "def f():\n    import multivae.b\n"
    tree = ast.parse(source)
    assert [node.names[0].name for node in _imports(tree)] == ["multivae.b"]
    graph = {"multivae.a": {"multivae.b": 2}, "multivae.b": {"multivae.a": 1}}
    assert find_cycle(graph) == ["multivae.a", "multivae.b", "multivae.a"]


IMPORT_EACH = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "multivae" or m.startswith("multivae.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ":\\n" + traceback.format_exc())
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


@pytest.mark.timeout(300)
def test_each_module_imports_on_its_own():
    # One interpreter, the package's modules dropped from sys.modules before each import: a
    # cycle between module-level imports fails there, whatever was imported before.
    names = [name for name in module_names() if not name.endswith("__main__")]
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH, *names],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
