"""Unzipped size of each function with all its layers, after `sam build`.

Lambda refuses a function whose code plus layers exceed 250 MB unzipped; this fails (exit 1)
above a lower limit (230 MB by default) to keep a margin:

    python tools/lambda_size.py [--build-dir .aws-sam/build] [--limit-mb 230] [--json]
                                [--architecture x86_64|arm64]

It also reports the processor the native libraries in the package are built for (read from
their ELF headers), and with ``--architecture`` fails (exit 1) when they are not all for that
one: a layer built for x86_64 under an arm64 function fails only at its first import in Lambda.

It reads the built template (.aws-sam/build/template.yaml): each AWS::Serverless::Function's
CodeUri and its layers (Globals + its own Layers, given as Ref to an
AWS::Serverless::LayerVersion of the template), whose ContentUri is a folder relative to the
build folder (layers without a BuildMethod, like the model, point back into the source tree).
Sizes are the sum of the files' sizes (what unzipping creates), symlinks counted as links.
Layers given as ARNs (not in this template) cannot be measured and are reported.
Only the standard library and PyYAML (a dependency of aws-sam-cli and of the dev venv).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

LIMIT_MB = 230.0
LAMBDA_LIMIT_MB = 250.0
MB = 1024 * 1024  # Lambda's limits are in MiB (250 MB = 262,144,000 bytes)


class _CfnLoader(yaml.SafeLoader):
    """Accepts CloudFormation short-form tags (!Ref, !Sub, ...) as {"Ref": ...} etc."""


def _cfn_tag(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node):
    name = "Ref" if tag_suffix == "Ref" else f"Fn::{tag_suffix}"
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if tag_suffix == "GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
        return {name: value}
    if isinstance(node, yaml.SequenceNode):
        return {name: loader.construct_sequence(node, deep=True)}
    return {name: loader.construct_mapping(node, deep=True)}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_template(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return yaml.load(handle, Loader=_CfnLoader)


def tree_size(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink())


# ELF e_machine values (bytes 18-19, little-endian) of Lambda's two architectures
ELF_MACHINES = {0x3E: "x86_64", 0xB7: "arm64"}


def native_architectures(folder: Path) -> set[str]:
    """Architectures of the shared libraries (*.so*) under a folder."""
    found = set()
    for path in folder.rglob("*.so*"):
        if not path.is_file() or path.is_symlink():
            continue
        with open(path, "rb") as handle:
            head = handle.read(20)
        if len(head) == 20 and head[:4] == b"\x7fELF":
            machine = int.from_bytes(head[18:20], "little")
            found.add(ELF_MACHINES.get(machine, f"elf-machine-{machine:#x}"))
    return found


def function_sizes(build_dir: Path) -> list[dict]:
    """One row per function: its code and layers with their sizes in bytes."""
    template = load_template(build_dir / "template.yaml")
    resources = template.get("Resources", {})
    global_layers = ((template.get("Globals") or {}).get("Function") or {}).get("Layers") or []
    rows = []
    for name, resource in resources.items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        props = resource.get("Properties") or {}
        if props.get("PackageType") == "Image":
            continue
        parts: list[dict[str, Any]] = [
            {
                "name": "code",
                "path": str(build_dir / props["CodeUri"]),
                "bytes": tree_size(build_dir / props["CodeUri"]),
            }
        ]
        unmeasured = []
        for layer in list(global_layers) + list(props.get("Layers") or []):
            ref = layer.get("Ref") if isinstance(layer, dict) else None
            target = resources.get(ref) if ref else None
            if not target or target.get("Type") != "AWS::Serverless::LayerVersion":
                unmeasured.append(layer if isinstance(layer, str) else json.dumps(layer))
                continue
            folder = (build_dir / target["Properties"]["ContentUri"]).resolve()
            if not folder.is_dir():
                raise SystemExit(f"layer {ref}: {folder} is not a folder (run sam build first)")
            parts.append({"name": ref, "path": str(folder), "bytes": tree_size(folder)})
        rows.append(
            {
                "function": name,
                "parts": parts,
                "unmeasured_layers": unmeasured,
                "bytes": sum(p["bytes"] for p in parts),
                "architectures": sorted(set().union(*(native_architectures(Path(p["path"])) for p in parts))),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-dir", type=Path, default=Path(".aws-sam/build"))
    parser.add_argument(
        "--limit-mb",
        type=float,
        default=LIMIT_MB,
        help=f"fail above this many MiB (default {LIMIT_MB:g}; Lambda's limit is {LAMBDA_LIMIT_MB:g})",
    )
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON")
    parser.add_argument(
        "--architecture",
        choices=sorted(set(ELF_MACHINES.values())),
        help="fail unless every native library is built for this architecture",
    )
    args = parser.parse_args(argv)
    if not (args.build_dir / "template.yaml").is_file():
        print(f"error: no {args.build_dir / 'template.yaml'}: run `sam build` first", file=sys.stderr)
        return 2
    rows = function_sizes(args.build_dir)
    over = [row for row in rows if row["bytes"] > args.limit_mb * MB]
    wrong = [
        row["function"]
        for row in rows
        if args.architecture and row["architectures"] not in ([], [args.architecture])
    ]
    if args.json:
        print(
            json.dumps(
                {
                    "limit_mb": args.limit_mb,
                    "functions": rows,
                    "over_limit": [row["function"] for row in over],
                    "wrong_architecture": wrong,
                },
                indent=2,
            )
        )
    else:
        for row in rows:
            detail = ", ".join(f"{p['name']} {p['bytes'] / MB:.1f}" for p in row["parts"])
            flag = "OVER THE LIMIT" if row in over else "ok"
            print(
                f"{row['function']}: {row['bytes'] / MB:.1f} MB unzipped ({detail})"
                f" - {flag} (limit {args.limit_mb:g} MB); native code: "
                f"{', '.join(row['architectures']) or 'none'}"
            )
            if row["function"] in wrong:
                print(f"  WRONG ARCHITECTURE: expected {args.architecture} only")
            if row["unmeasured_layers"]:
                print(f"  not measured (not in this template): {row['unmeasured_layers']}")
    return 1 if over or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
