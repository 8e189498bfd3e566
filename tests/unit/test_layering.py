"""The layering rules, checked on the source: qdrant-client stays inside the store package, and
no caller reaches past ``Catalog`` into its embedder or store."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "visual_search"
FUNCTIONS = PACKAGE.parents[1] / "functions"
SOURCES = sorted(PACKAGE.rglob("*.py")) + sorted(FUNCTIONS.rglob("*.py"))
CATALOG_PARTS = {"embedder", "store", "reranker"}


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
