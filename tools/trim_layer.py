"""Trim a pip-installed Lambda layer folder (the `python/` of the dependency layer) in place.

Called by layers/dependencies/Makefile during `sam build`; also usable by hand:

    python3.12 tools/trim_layer.py .aws-sam/build/DependenciesLayer/python [--no-compile]

What goes, and why it is safe (the RIE test in tests/deploy imports and runs all of it):

- boto3, botocore, s3transfer: the python3.12 Lambda runtime has them (pip pulls botocore in
  through aws-xray-sdk);
- ``bin/`` (console scripts), ``tests`` folders, type stubs (.pyi), Cython declarations (.pxd),
  C headers, ``__pycache__`` written by whoever built the folder;
- onnxruntime's ``capi/libonnxruntime.so.*`` (35 MB: the C API library for other languages;
  the Python binding ``onnxruntime_pybind11_state`` does not link it) and its offline tooling
  (``transformers``, ``quantization``, ``tools``), which ``import onnxruntime`` never imports.

Then, unless ``--no-compile``, every module is compiled to ``__pycache__/*.cpython-312.pyc``
with the running interpreter (which must be the runtime's Python version) and
``unchecked-hash`` invalidation: /opt is read-only in Lambda, so without shipped bytecode each
cold start would compile every imported module from source again.
"""

from __future__ import annotations

import argparse
import compileall
import py_compile
import shutil
import sys
from pathlib import Path

# Distributions the Lambda Python runtime already provides (top-level names).
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer")
# Paths relative to the layer's python/ folder that nothing imports at run time.
UNUSED_PATHS = (
    "bin",
    "onnxruntime/transformers",
    "onnxruntime/quantization",
    "onnxruntime/tools",
    "numpy/_core/include",
)
UNUSED_GLOBS = ("onnxruntime/capi/libonnxruntime.so*",)
UNUSED_DIR_NAMES = ("tests", "__pycache__")
UNUSED_SUFFIXES = (".pyi", ".pxd", ".pyc", ".h")


def tree_size(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink())


def remove(path: Path, removed: dict[str, int], label: str) -> None:
    if not (path.exists() or path.is_symlink()):
        return
    removed[label] = removed.get(label, 0) + tree_size(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def trim(root: Path) -> dict[str, int]:
    """Remove what the layer does not need; returns bytes removed per reason."""
    removed: dict[str, int] = {}
    for name in RUNTIME_PROVIDED:
        remove(root / name, removed, "in the Lambda runtime")
        for info in root.glob(f"{name}-*.dist-info"):
            remove(info, removed, "in the Lambda runtime")
    for relative in UNUSED_PATHS:
        remove(root / relative, removed, "unused at run time")
    for pattern in UNUSED_GLOBS:
        for path in root.glob(pattern):
            remove(path, removed, "unused at run time")
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and path.name in UNUSED_DIR_NAMES and ".dist-info" not in str(path):
            remove(path, removed, "tests and caches")
        elif path.is_file() and path.suffix in UNUSED_SUFFIXES:
            remove(path, removed, "stubs, headers, caches")
    return removed


def compile_tree(root: Path) -> bool:
    return compileall.compile_dir(
        str(root),
        quiet=2,
        workers=1,
        legacy=False,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the layer's python/ folder")
    parser.add_argument(
        "--no-compile", action="store_true", help="do not ship bytecode (smaller, slower cold start)"
    )
    args = parser.parse_args(argv)
    root: Path = args.folder
    if not root.is_dir():
        parser.error(f"{root} is not a folder")
    before = tree_size(root)
    removed = trim(root)
    if not args.no_compile:
        # Some files of third-party packages may not compile (templates, py2 leftovers): fine.
        compile_tree(root)
    after = tree_size(root)
    for reason, size in sorted(removed.items(), key=lambda kv: -kv[1]):
        print(f"trim_layer: removed {size / 1e6:6.1f} MB {reason}")
    print(
        f"trim_layer: {root}: {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB"
        f" ({'with' if not args.no_compile else 'without'} bytecode,"
        f" python {sys.version_info.major}.{sys.version_info.minor})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
