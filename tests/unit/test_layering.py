"""The layering rules, checked on the source: qdrant-client stays inside the store package, the
store is closed (outside it, code imports only ``visual_search.store`` and its allowed public
modules, and never touches a store's backend or raw client), no caller reaches past ``Catalog``
into its embedder or store, and no modules import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "visual_search"
FUNCTIONS = PACKAGE.parents[1] / "functions"
SOURCES = sorted(PACKAGE.rglob("*.py")) + sorted(FUNCTIONS.rglob("*.py"))
CATALOG_PARTS = {"embedder", "store", "reranker", "models"}
# The adaptation layer copies whole physical collections, so it alone may ask the catalogue
# for its store (``Catalog.adaptation_store``); everyone else goes through Catalog's methods.
ADAPTATION_PARTS = {"adaptation_store", "adaptation_store_for"}
STORE = PACKAGE / "store"
# The store's public surface: the package, and the one module a command imports on its own.
STORE_PUBLIC = {"visual_search.store", "visual_search.store.migrate"}
STORE_MODULES = {p.stem for p in STORE.glob("*.py") if p.stem != "__init__"}
# Never reached from outside the store package: its engine seam, on any object ...
BACKEND_ATTRIBUTES = {"backend", "_backend"}
# ... and a raw client, on a store (an expression naming one: ``self.store.client``).
CLIENT_ATTRIBUTES = {"client", "_client"}


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
    parts = CATALOG_PARTS | (set() if PACKAGE / "adaptation" in path.parents else ADAPTATION_PARTS)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    reached = [
        f"line {node.lineno}: {_name(node.value)}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in parts and "catalog" in _name(node.value).lower()
    ]
    assert not reached, "use Catalog's methods instead"


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The module a ``from ... import`` names, relative imports resolved against ``module``."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def store_boundary_violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """What code of ``module`` (outside the store package) does across the store's boundary
    that it must not: import a store module other than the public ones (``STORE_PUBLIC``),
    or touch a backend (any ``.backend`` / ``._backend``) or a store's raw client
    (``<...store...>.client``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            stem = _absolute(node, module, is_package)
            names = [stem]
            if stem == "visual_search.store":
                names += [f"{stem}.{a.name}" for a in node.names if a.name in STORE_MODULES]
        elif isinstance(node, ast.Attribute):
            if node.attr in BACKEND_ATTRIBUTES or (
                node.attr in CLIENT_ATTRIBUTES and "store" in ast.unparse(node.value).lower()
            ):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
            continue
        else:
            continue
        found += [
            f"line {node.lineno}: imports {name}"
            for name in names
            if name.startswith("visual_search.store.") and name not in STORE_PUBLIC
        ]
    return found


@pytest.mark.parametrize("path", [p for p in SOURCES if STORE not in p.parents], ids=_relative)
def test_nothing_outside_the_store_reaches_into_it(path):
    module = _module(path) if PACKAGE in path.parents else path.stem
    found = store_boundary_violations(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")
    assert not found, "use visual_search.store's public names and CatalogStore's methods (admin())"


def test_the_store_boundary_check_can_fail():
    snippet = """
from ..store.backend import StoredPoint
from ..store import edge_backend, CatalogStore
from visual_search.store.raw import field_is
import visual_search.store.connection
from ..store import migrate

def leak(store, catalog):
    store.backend.upsert("c", [])
    catalog.store._backend.scroll("c")
    return store.client, self.store._client
"""
    found = store_boundary_violations(snippet, "visual_search.adaptation.adapter")
    assert {f.split(": ", 1)[1] for f in found} == {
        "imports visual_search.store.backend",
        "imports visual_search.store.edge_backend",
        "imports visual_search.store.raw",
        "imports visual_search.store.connection",
        "store.backend",
        "catalog.store._backend",
        "store.client",
        "self.store._client",
    }
    legitimate = """
import boto3
from ..store import CatalogStore, StoredPoint, migrate
from ..store.migrate import migrate_local_mode
from .store import VECTOR

def fine(store, holder):
    holder._client = boto3.client("s3")
    return store.admin().collection_info("c"), holder._client
"""
    assert store_boundary_violations(legitimate, "visual_search.adaptation.adapter") == []
    assert store_boundary_violations("from .store.raw import x", "visual_search.catalog")


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
    assert "visual_search.dev.folders" in graph["visual_search.dev.cli.ingest"]  # a module-level import
    assert "visual_search.dev.bench" in graph["visual_search.dev.cli.bench"]  # a function's import
    assert "visual_search.api.app" not in graph["visual_search.api.routes"]  # type checking only
    assert not cycles(graph), "modules that import each other (directly or round a circle)"
