"""The Lambda code layer (template.yaml: AppLayer): the ``visual_search`` package without its
development-only modules, which no function imports (src/Makefile runs this in ``sam build``),
and its bytecode.

    python3.12 tools/app_layer.py SRC_PACKAGE DEST_PACKAGE

The modules are compiled to ``__pycache__/*.cpython-312.pyc`` by the running interpreter, which
must be the runtime's Python version (else the bytecode is for another version and is not used),
with ``unchecked-hash`` invalidation, as tools/trim_layer.py does for the dependency layer: /opt
is read-only in Lambda, so without shipped bytecode each cold start would compile every module
of the package from source again.

Development-only code lives in ``visual_search/dev/`` and is left out by folder
(``DEV_MODULES``); tests/deploy checks that the functions' imports never reach it and that the
built layer holds none of it.
"""

from __future__ import annotations

import ast
import shutil
import sys
from pathlib import Path

# the dependency layer's compile step (both scripts run from tools/, which is then on sys.path)
from trim_layer import compile_tree

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "visual_search"
FUNCTIONS = ROOT / "functions"
# What of visual_search is for the command line, the local stack and the tests only: the dev/
# folder (and `python -m visual_search`'s entry module, which only starts its command line).
DEV_MODULES = ("__main__", "dev")


def is_dev(relative: Path) -> bool:
    """Whether a path inside the package (e.g. ``devstack/stack.py``) is development-only."""
    first = relative.parts[0]
    return first in DEV_MODULES or (len(relative.parts) == 1 and relative.stem in DEV_MODULES)


def copy_layer(source: Path, dest: Path) -> list[str]:
    """Copy the package minus the development modules; returns what was left out."""
    left_out = []
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if "__pycache__" in relative.parts or path.is_dir():
            continue
        if is_dev(relative):
            left_out.append(str(relative))
            continue
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return left_out


def _module_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> set[str]:
    """visual_search modules a file imports (absolute and relative, at any depth in the file)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            found.add(stem)
            found |= {f"{stem}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] == "visual_search"}


def function_imports(functions: tuple[str, ...] = ()) -> set[str]:
    """Every visual_search module the functions' handlers import, directly or not (all of
    them, or those of the named functions: ``("ingest",)``)."""
    files = {_module_of(p): p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    todo = set()
    for handler in FUNCTIONS.glob("*/app.py"):
        if not functions or handler.parent.name in functions:
            todo |= _imports(handler, "handler")
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in files:
            continue
        seen.add(name)
        parent = name.rpartition(".")[0]
        if parent:
            todo.add(parent)  # importing a.b runs a/__init__.py
        todo |= _imports(files[name], name)
    return seen


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    dest = Path(argv[1])
    left_out = copy_layer(Path(argv[0]), dest)
    if not compile_tree(dest):
        print(f"code layer: {dest} does not compile", file=sys.stderr)
        return 1
    print(
        f"code layer: visual_search without {len(left_out)} development files ({', '.join(DEV_MODULES)}),"
        f" bytecode for python {sys.version_info.major}.{sys.version_info.minor}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
