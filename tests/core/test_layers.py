"""The package graph of losslab: the layers hold and there is no cycle (issue 18, item 4).

Every ``import`` statement under ``src/losslab`` counts, also the lazy ones inside functions and the
``TYPE_CHECKING`` ones (a lazy import is still a dependency). A unit is a top-level package or module of losslab
(``losslab.train``, ``losslab.io``, ...); ``losslab/__main__.py`` is the entry point, not a unit others may use.

- the building blocks (objectives, layers, regularizers, data, models, quant) never import train, study, report, cli;
- the shared runtime (``losslab.runs``) imports only the core modules (errors, io, serialization, threads);
- nothing imports cli except cli itself and the entry point;
- no two units import each other, directly or through others (no cycle).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "losslab"
BUILDING_BLOCKS = ("objectives", "layers", "regularizers", "data", "models", "quant")
ABOVE_BLOCKS = ("train", "study", "report", "cli")
CORE = ("errors", "io", "serialization", "threads", "lazy", "hub", "limits")
ENTRY = "__main__"
#: Edges that break a rule, each with why it is allowed (none: keep it that way).
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}

Graph = dict[str, dict[str, set[str]]]  # unit -> imported unit -> the files that import it


def _imports(tree: ast.AST, package: str) -> Iterator[str]:
    """The absolute module names an AST imports (relative imports resolved against ``package``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                yield ".".join([*base, *([node.module] if node.module else [])])
            elif node.module:
                yield node.module


def _unit(module: str, top: str) -> str | None:
    """The unit of ``module`` (its first component under ``top``), None outside ``top`` or for ``top`` itself."""
    parts = module.split(".")
    return parts[1] if parts[0] == top and len(parts) > 1 else None


def import_graph(root: Path) -> Graph:
    """unit -> {imported unit -> files}, over every ``.py`` file of the package at ``root``."""
    top = root.name
    graph: Graph = {}
    for file in sorted(root.rglob("*.py")):
        parts = file.relative_to(root.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = module if parts[-1] == "__init__" else module.rpartition(".")[0]
        source = _unit(module, top)
        if source is None:
            continue
        deps = graph.setdefault(source, {})
        for target in map(lambda name: _unit(name, top), _imports(ast.parse(file.read_text()), package)):
            if target is not None and target != source:
                deps.setdefault(target, set()).add(str(file.relative_to(root.parent)))
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components with more than one unit (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def violations(graph: Graph) -> list[str]:
    """Every edge that breaks a layer rule (known exceptions left out), with the files that make it."""
    bad = []
    for source, deps in sorted(graph.items()):
        for target, files in sorted(deps.items()):
            if (source, target) in KNOWN_EXCEPTIONS:
                continue
            block_up = source in BUILDING_BLOCKS and target in ABOVE_BLOCKS
            runtime_up = source == "runs" and target not in CORE
            into_cli = target == "cli" and source != ENTRY
            if block_up or runtime_up or into_cli:
                bad.append(f"{source} -> {target} ({', '.join(sorted(files))})")
    return bad


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph(SRC)


def test_the_layers_hold(graph: Graph) -> None:
    assert violations(graph) == []


def test_there_is_no_package_cycle(graph: Graph) -> None:
    assert cycles(graph) == []


def test_the_known_exceptions_are_the_only_ones_and_name_their_fix(graph: Graph) -> None:
    for (source, target), why in KNOWN_EXCEPTIONS.items():
        assert source in BUILDING_BLOCKS and target in ABOVE_BLOCKS and "removed by" in why


def test_the_checker_sees_lazy_relative_and_cyclic_imports(tmp_path: Path) -> None:
    """A tiny package with a cycle made of a lazy import and a relative one, a block importing train and a
    module importing cli: each is reported (the checker is not vacuous)."""
    pkg = tmp_path / "toy"
    for name, text in {
        "__init__.py": "",
        "a/__init__.py": "def f():\n    from toy.b import g\n",
        "b/__init__.py": "from ..a import f\n",
        "objectives/__init__.py": "import toy.train.fit\n",
        "train/__init__.py": "",
        "train/fit.py": "from toy.cli import main\n",
        "cli/__init__.py": "main = None\n",
        "__main__.py": "from toy.cli import main\n",
    }.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    toy = import_graph(pkg)
    assert cycles(toy) == [["a", "b"]]
    assert violations(toy) == [
        "objectives -> train (toy/objectives/__init__.py)",
        "train -> cli (toy/train/fit.py)",
    ]
