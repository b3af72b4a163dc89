"""fastopt's modules import one another in layers: no cycle, not even through an import
inside a function (the usual way to hide one). Imports under ``if TYPE_CHECKING:`` are for
annotations only and do not count."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fastopt

PACKAGE = Path(fastopt.__file__).parent


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["fastopt", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


MODULES = _module_names()


def _imported(node: ast.Import | ast.ImportFrom) -> set[str]:
    """The fastopt modules an import statement loads (a ``from m import x`` names module
    ``m``, and ``m.x`` too where that is a module)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names} & MODULES.keys()
    if node.level:  # fastopt imports absolutely; a relative import would escape the graph
        raise AssertionError(f"a relative import: from {'.' * node.level}{node.module or ''}")
    found = {node.module} & MODULES.keys()
    return found | {f"{node.module}.{alias.name}" for alias in node.names} & MODULES.keys()


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def import_graph() -> dict[str, set[str]]:
    """Each module's imports of other fastopt modules, at any depth of its code."""
    graph = {}
    for module, path in MODULES.items():
        edges: set[str] = set()
        pending = [ast.parse(path.read_text(), str(path))]
        while pending:
            for child in ast.iter_child_nodes(pending.pop()):
                if _is_type_checking(child):
                    continue
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    edges |= _imported(child)
                pending.append(child)
        edges.discard(module)
        graph[module] = edges
    return graph


def cycle_of(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` (its modules in order, the first repeated last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert "fastopt.optimizer" in graph["fastopt._declared"]  # from fastopt.optimizer import
    assert "fastopt.cuda._kernels" in graph["fastopt._launch"]  # inside a function
    assert "fastopt.rules.adam" in graph["fastopt"]  # a subpackage's module
    assert len(graph) == len(MODULES) > 50


def test_the_cycle_finder_finds_a_cycle():
    assert cycle_of({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_of({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_module_of_fastopt_imports_itself_back():
    cycle = cycle_of(import_graph())
    if cycle is not None:
        pytest.fail("an import cycle: " + " -> ".join(cycle))
