"""The deploy tools on template.yaml: cfn-lint and `sam validate --lint` are clean, `sam build`
succeeds, and each function with its layers stays under 230 MB unzipped.

Skipped, with the command to run, when the tools (tools/install_deploy_tools.sh) or a
python3.12 are missing; CI installs them. One `sam build` per session (conftest.sam_build).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.deploy._support import (
    INSTALL_HINT,
    LIMIT_MB,
    REPO,
    TEMPLATE,
    find_python312,
    find_tool,
    record,
    tool_env,
)


def _require(name: str) -> str:
    path = find_tool(name)
    if not path:
        pytest.skip(f"{name} is not installed: {INSTALL_HINT}")
    return path


def test_cfn_lint_is_clean():
    cfn_lint = _require("cfn-lint")
    proc = subprocess.run(
        [cfn_lint, str(TEMPLATE)], cwd=REPO, env=tool_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_sam_validate_lint_is_clean():
    sam = _require("sam")
    proc = subprocess.run(
        [sam, "validate", "--lint", "--template-file", str(TEMPLATE), "--region", "us-east-1"],
        cwd=REPO,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "is a valid SAM Template" in proc.stdout + proc.stderr


def test_sam_build_lays_out_functions_and_layers(sam_build):
    build = sam_build.dir
    deps = build / "DependenciesLayer" / "python"
    assert (build / "IngestFunction" / "app.py").is_file()
    assert (build / "SearchFunction" / "app.py").is_file()
    assert (build / "AppLayer" / "python" / "visual_search" / "__init__.py").is_file()
    shipped = build / "AppLayer" / "python" / "visual_search"
    assert (shipped / "api" / "routes.py").is_file() and (shipped / "store" / "catalog_store.py").is_file()
    # Left out by folder (tools/app_layer.py): dev/ (the command line's cli/, devstack/, training/,
    # bench.py, evaluate.py, ...) and __main__.py; nor may they ship from the package's top level.
    for dev in (
        "dev",
        "__main__.py",
        "cli",
        "devstack",
        "bench.py",
        "evaluate.py",
        "lambdas.py",
        "folders.py",
        "training",
    ):
        assert not (shipped / dev).exists(), f"{dev} is development-only: it must not ship in the code layer"
    # Its bytecode too, for 3.12, never checked against the sources (/opt is read-only).
    for module in ("catalog", "api/routes", "store/catalog_store"):
        folder, _, name = f"./{module}".rpartition("/")
        pyc = shipped / folder / "__pycache__" / f"{name}.cpython-312.pyc"
        assert pyc.is_file(), f"{module} ships without bytecode"
        assert int.from_bytes(pyc.read_bytes()[4:8], "little") == 0b01, f"{pyc} is not unchecked-hash"
    for package in (
        "onnxruntime",
        "numpy",
        "PIL",
        "qdrant_client",
        "aws_lambda_powertools",
        "pydantic",
        "aws_xray_sdk",
    ):
        assert (deps / package).is_dir(), f"{package} is missing from the dependency layer"
    # Progress bars are the command line's: tqdm stays out of the functions' layer.
    assert not (deps / "tqdm").exists(), "tqdm is development-only: it must not ship in the dependency layer"
    # Trimmed: the runtime's own boto3/botocore, tests, stubs; bytecode compiled for 3.12.
    for gone in ("boto3", "botocore", "s3transfer", "bin", "numpy/_core/tests"):
        assert not (deps / gone).exists(), f"{gone} should have been trimmed"
    assert not list(deps.glob("onnxruntime/capi/libonnxruntime.so*"))
    assert list((deps / "numpy" / "__pycache__").glob("*.cpython-312.pyc"))
    # Built for the Lambda platform, not this machine's Python.
    assert list((deps / "onnxruntime" / "capi").glob("*.cpython-312-x86_64-linux-gnu.so"))


def test_each_function_with_its_layers_fits_lambda(sam_build):
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "lambda_size.py"),
            "--build-dir",
            str(sam_build.dir),
            "--limit-mb",
            str(LIMIT_MB),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads(proc.stdout)
    sizes = {row["function"]: round(row["bytes"] / 2**20, 1) for row in report["functions"]}
    parts = {
        part["name"]: round(part["bytes"] / 2**20, 1)
        for row in report["functions"]
        for part in row["parts"]
        if part["name"] != "code"
    }
    record(unzipped_mb=sizes, layer_mb=parts)
    print(f"\nunzipped MB: {sizes}; layers: {parts}")
    assert set(sizes) == {"IngestFunction", "SearchFunction", "MaintenanceFunction"}
    assert all(not row["unmeasured_layers"] for row in report["functions"])
    assert not report["over_limit"], f"over {LIMIT_MB} MB: {sizes}"
    assert proc.returncode == 0


def test_events_invoke_the_snapstart_alias():
    """After SAM's transform, the API's integrations, its invoke permissions and the queue's
    event source mapping name the alias (whose versions have snapshots), never $LATEST."""
    python = REPO / ".venv-sam" / "bin" / "python"
    if not python.exists():
        pytest.skip(f"aws-sam-translator is not installed: {INSTALL_HINT}")
    proc = subprocess.run(
        [
            str(python),
            str(REPO / "tests" / "deploy" / "sam_translate.py"),
            str(TEMPLATE),
            '{"QdrantUrl": "https://q.example:6333"}',
        ],
        env={**tool_env(), "AWS_DEFAULT_REGION": "us-east-1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    resources = json.loads(proc.stdout)
    aliases = {k: v["Properties"] for k, v in resources.items() if v["Type"] == "AWS::Lambda::Alias"}
    assert set(aliases) == {"SearchFunctionAliaslive", "IngestFunctionAliaslive"}
    mapping = next(v for v in resources.values() if v["Type"] == "AWS::Lambda::EventSourceMapping")
    assert mapping["Properties"]["FunctionName"] == {"Ref": "IngestFunctionAliaslive"}
    # The API's invoke permissions (the scheduled maintenance function has its own, for EventBridge).
    permissions = [
        v["Properties"]
        for v in resources.values()
        if v["Type"] == "AWS::Lambda::Permission"
        and v["Properties"]["Principal"] == "apigateway.amazonaws.com"
    ]
    assert permissions and all(p["FunctionName"] == {"Ref": "SearchFunctionAliaslive"} for p in permissions)
    paths = resources["SearchApi"]["Properties"]["Body"]["paths"]
    integrations = [
        op.get("x-amazon-apigateway-integration", {}) for route in paths.values() for op in route.values()
    ]
    uris = [i["uri"]["Fn::Sub"] for i in integrations if i.get("type") == "aws_proxy"]
    assert uris and all("${SearchFunctionAliaslive}" in uri for uri in uris)
    versions = [v["Properties"] for v in resources.values() if v["Type"] == "AWS::Lambda::Version"]
    assert len(versions) == 2 and all("Fn::Sub" in v["Description"] for v in versions)


def test_the_dependency_layer_builds_for_arm64_and_fits(sam_build, tmp_path):
    """`Architecture=arm64`: the layer's Makefile (ARCHITECTURE=arm64, as sam gives it no
    architecture) installs aarch64 wheels only, and each function still fits with it."""
    python312 = find_python312()
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import lambda_size
    finally:
        sys.path.pop(0)
    artifacts = tmp_path / "arm64"
    proc = subprocess.run(
        ["make", "--makefile", str(REPO / "layers/dependencies/Makefile"), "build-DependenciesLayer"],
        cwd=REPO / "layers" / "dependencies",
        env={
            **tool_env(python312),
            "ARTIFACTS_DIR": str(artifacts),
            "ARCHITECTURE": "arm64",
            "PYTHON": python312,
        },
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    layer = artifacts / "python"
    assert lambda_size.native_architectures(layer) == {"arm64"}
    assert list((layer / "onnxruntime" / "capi").glob("*.cpython-312-aarch64-linux-gnu.so"))
    assert lambda_size.native_architectures(sam_build.dir / "DependenciesLayer" / "python") == {"x86_64"}
    sizes = {}
    for row in lambda_size.function_sizes(sam_build.dir):
        others = sum(p["bytes"] for p in row["parts"] if p["name"] != "DependenciesLayer")
        sizes[row["function"]] = round((others + lambda_size.tree_size(layer)) / 2**20, 1)
    record(arm64_unzipped_mb=sizes)
    print(f"\narm64 unzipped MB: {sizes}")
    assert all(mb < LIMIT_MB for mb in sizes.values()), sizes
