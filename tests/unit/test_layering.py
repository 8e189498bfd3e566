"""The layering rules, checked on the source: qdrant-client stays inside the store package, no
caller reaches past ``Catalog`` into its embedder or store, and no modules import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "visual_search"
FUNCTIONS = PACKAGE.parents[1] / "functions"
SOURCES = sorted(PACKAGE.rglob("*.py")) + sorted(FUNCTIONS.rglob("*.py"))
CATALOG_PARTS = {"embedder", "store", "reranker", "models"}


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _relative(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parents[1]))


def imports_of(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_the_sources_are_found():
    assert len(SOURCES) > 20 and PACKAGE / "catalog.py" in SOURCES


@pytest.mark.parametrize("path", SOURCES, ids=_relative)
def test_only_the_store_imports_qdrant_client(path):
    if PACKAGE / "store" in path.parents:
        return
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert not {m for m in imports_of(tree) if m.split(".")[0] == "qdrant_client"}


@pytest.mark.parametrize("path", SOURCES, ids=_relative)
def test_no_caller_reaches_into_the_catalogue(path):
    if path == PACKAGE / "catalog.py":
        return
    tree = ast.parse(path.read_text(encoding="utf-8"))
    reached = [
        f"line {node.lineno}: {_name(node.value)}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr in CATALOG_PARTS
        and "catalog" in _name(node.value).lower()
    ]
    assert not reached, "use Catalog's methods instead"


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _statements(body):
    """Every statement, into functions and blocks, except those under ``if TYPE_CHECKING:``."""
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        yield node
        yield from _statements([c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)])


def import_graph() -> dict[str, set[str]]:
    """visual_search module -> the visual_search modules it imports, at any depth in the file
    (a function's lazy import is still a dependency), type-checking imports left out."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in _statements(ast.parse(path.read_text(encoding="utf-8")).body):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                stem = ".".join([*base, node.module] if node.module else base)
                for alias in node.names:
                    found.add(f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in modules else stem)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle():
    graph = import_graph()
    assert "visual_search.dev.folders" in graph["visual_search.dev.cli"]  # a module-level import
    assert "visual_search.dev.bench" in graph["visual_search.dev.cli"]  # a function's import
    assert "visual_search.api.app" not in graph["visual_search.api.routes"]  # type checking only
    assert not cycles(graph), "modules that import each other (directly or round a circle)"
