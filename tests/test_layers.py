"""The package's layers, read from its source with ``ast`` (nothing is imported).

Data flows one way: data -> nets/losses/relax -> methods -> train -> (density, likelihood,
features, metrics) -> evaluate -> compare -> report -> cli. :data:`LAYERS` writes that order
down as imports see it, lowest first; a module may import modules of its own layer or below,
never above. ``report`` sits below ``compare`` because compare calls report to write tables and
figures (results flow from compare to report; the import goes the other way). The pure modules
(relax, losses, density, likelihood) stay usable alone, and the import graph has no cycle.

Modules listed here but absent from a checkout are simply not checked; a module that exists
but is missing from :data:`LAYERS` fails :func:`test_every_module_has_a_layer`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "jaxrae"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

#: Lowest first. A module is named by its first component below ``jaxrae`` (``jaxrae.data.idx`` -> ``data``).
LAYERS: list[tuple[str, set[str]]] = [
    (
        "foundation: errors, files, provenance, devices, live logs",
        {"errors", "io", "provenance", "distributed", "runlog"},
    ),
    ("data sources", {"data"}),
    ("pure functions", {"nets", "relax", "losses", "density", "likelihood", "optim"}),
    ("the method grid", {"grid", "methods", "config"}),
    ("training", {"train"}),
    ("evaluation pieces", {"features", "metrics"}),
    ("one row's evaluation", {"evaluate"}),
    ("the experiment schema", {"experiment"}),
    ("tables, statistics, figures", {"report"}),
    ("orchestration", {"compare"}),
    ("command line", {"cli"}),
]

#: Modules usable alone: the jaxrae modules each may import (anything outside jaxrae is free).
STANDALONE: dict[str, set[str]] = {
    "relax": {"errors"},
    "losses": {"errors"},
    "density": {"errors"},
    "likelihood": {"errors", "losses", "relax", "density"},
}

#: Function-local imports are for optional heavy dependencies only (tensorflow-datasets and
#: tensorflow for the tfds source, matplotlib for figures, wandb for live logs): everything else is imported at
#: module level, so a module's first lines show what it depends on.
OPTIONAL_DEPENDENCIES = {"tensorflow_datasets", "tensorflow", "matplotlib", "IPython", "wandb"}

# --------------------------------------------------------------------------------------------
# Reading the imports


def module_files(package_dir: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package (``__init__`` names its package)."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [package, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST, in_function: bool = False):
    """(node, inside a function?) for every import that runs; ``if TYPE_CHECKING:`` blocks are skipped."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _import_nodes(ast.Module(body=[other], type_ignores=[]), in_function)
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        yield from _import_nodes(
            child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        )


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function?) for every import in ``path``, relative ones resolved.

    ``from pkg import x`` imports the module ``pkg.x`` when there is one, else ``pkg`` itself;
    an import of something outside the package keeps its own dotted name.
    """
    is_package = path.name == "__init__.py"
    found = []
    for node, local in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, local) for alias in node.names]
            continue
        if node.level:
            base_parts = name.split(".") if is_package else name.split(".")[:-1]
            base_parts = base_parts[: len(base_parts) - (node.level - 1)]
            base = ".".join(base_parts + ([node.module] if node.module else []))
        else:
            base = node.module
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            found.append((sub if sub in modules else base, node.lineno, local))
    return found


def component(module: str) -> str | None:
    """``jaxrae.data.idx`` -> ``data``; None for the package root and for modules outside jaxrae."""
    parts = module.split(".")
    return parts[1] if parts[0] == PACKAGE and len(parts) > 1 else None


def layer_of(name: str) -> int:
    return next(i for i, (_, members) in enumerate(LAYERS) if name in members)


def internal_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the jaxrae modules it imports (resolved to the files that exist)."""
    graph = {}
    for name, path in modules.items():
        targets = set()
        for target, _, _ in imports_of(name, path, modules):
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                while target not in modules:  # `import jaxrae.data.idx.thing` -> the nearest file
                    target = target.rsplit(".", 1)[0]
                if target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """``"a imports b (higher layer ...)"`` for every import of a higher layer."""
    out = []
    for name, targets in sorted(graph.items()):
        source = component(name)
        if source is None:
            continue  # the package root re-exports the public API from every layer
        for target in sorted(targets):
            dest = component(target)
            if dest is None:
                out.append(f"{name} imports the package root {target} (which imports every layer); import the module")
            elif layer_of(dest) > layer_of(source):
                out.append(
                    f"{name} (layer {LAYERS[layer_of(source)][0]!r}) imports {target} "
                    f"(higher layer {LAYERS[layer_of(dest)][0]!r})"
                )
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


MODULES = module_files(PACKAGE_DIR)
GRAPH = internal_graph(MODULES)
PRESENT = {component(m) for m in MODULES} - {None}


# --------------------------------------------------------------------------------------------
# The package


def test_every_module_has_a_layer():
    listed = set().union(*(members for _, members in LAYERS))
    assert PRESENT <= listed, f"add {sorted(PRESENT - listed)} to LAYERS in tests/test_layers.py"
    assert sum(len(members) for _, members in LAYERS) == len(listed), "a module is listed in two layers"
    assert {
        "errors",
        "io",
        "relax",
        "losses",
        "density",
        "train",
        "evaluate",
        "experiment",
        "report",
        "compare",
        "cli",
    } <= PRESENT


@pytest.mark.parametrize("module", sorted(GRAPH), ids=str)
def test_no_module_imports_a_higher_layer(module):
    assert layer_violations({module: GRAPH[module]}) == []


@pytest.mark.parametrize("top", ["cli", "compare", "report", "evaluate"])
def test_only_higher_layers_import_the_top_modules(top):
    importers = sorted(
        name
        for name, targets in GRAPH.items()
        if any(component(t) == top for t in targets) and component(name) not in (None, top)
    )
    assert all(layer_of(component(name)) > layer_of(top) for name in importers), importers
    if top == "cli":
        assert importers == []
    if top == "compare":
        assert set(importers) <= {"jaxrae.cli"}


def test_cli_imports_compare_at_module_level():
    assert any(
        target == "jaxrae.compare" and not local
        for target, _, local in imports_of("jaxrae.cli", MODULES["jaxrae.cli"], MODULES)
    )


@pytest.mark.parametrize("module", sorted(STANDALONE))
def test_pure_modules_import_only_what_they_may(module):
    name = f"{PACKAGE}.{module}"
    if name not in MODULES:
        pytest.skip(f"{name} is not in this checkout")
    imported = {component(t) for t in GRAPH[name]}
    assert imported <= STANDALONE[module], sorted(imported - STANDALONE[module])


def test_import_graph_has_no_cycle():
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH))


@pytest.mark.parametrize("module", sorted(MODULES), ids=str)
def test_function_local_imports_are_optional_dependencies_only(module):
    local = [(target, line) for target, line, inside in imports_of(module, MODULES[module], MODULES) if inside]
    unexpected = [
        f"line {line}: {target}" for target, line in local if target.split(".")[0] not in OPTIONAL_DEPENDENCIES
    ]
    assert unexpected == [], f"move these imports of {module} to module level"


# --------------------------------------------------------------------------------------------
# The checker itself, on a made-up package


def _package(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    root = tmp_path / PACKAGE
    for rel, text in {"__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return module_files(root)


def test_checker_flags_an_upward_import_a_cycle_and_a_local_import(tmp_path):
    modules = _package(
        tmp_path,
        {
            "errors.py": "",
            "relax.py": "from jaxrae.errors import require\n",
            "losses.py": "from jaxrae import relax\n",  # same layer: allowed by LAYERS, refused by STANDALONE
            "train.py": "import jaxrae.cli\n",  # upward
            "cli.py": "def main():\n    from jaxrae.train import train\n",  # local, and closes a cycle
            "data/__init__.py": "from .spec import Dataset\n",
            "data/spec.py": "from ..errors import invalid\nfrom typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from jaxrae.train import train\n",
        },
    )
    graph = internal_graph(modules)
    assert graph["jaxrae.data"] == {"jaxrae.data.spec"}
    assert graph["jaxrae.data.spec"] == {"jaxrae.errors"}  # relative import resolved; TYPE_CHECKING skipped
    assert graph["jaxrae.losses"] == {"jaxrae.relax"}
    violations = layer_violations(graph)
    assert len(violations) == 1 and violations[0].startswith("jaxrae.train (layer 'training') imports jaxrae.cli")
    assert find_cycle(graph) in (
        ["jaxrae.cli", "jaxrae.train", "jaxrae.cli"],
        ["jaxrae.train", "jaxrae.cli", "jaxrae.train"],
    )
    assert [(t, local) for t, _, local in imports_of("jaxrae.cli", modules["jaxrae.cli"], modules)] == [
        ("jaxrae.train", True)
    ]
    assert {component(t) for t in graph["jaxrae.losses"]} - STANDALONE["losses"] == {"relax"}
    root_import = internal_graph(_package(tmp_path / "b", {"metrics.py": "from jaxrae import load_data\n"}))
    assert layer_violations(root_import) == [
        "jaxrae.metrics imports the package root jaxrae (which imports every layer); import the module"
    ]
