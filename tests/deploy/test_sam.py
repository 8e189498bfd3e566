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

from tests.deploy._support import INSTALL_HINT, LIMIT_MB, REPO, TEMPLATE, find_tool, record, tool_env


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
    for package in (
        "onnxruntime",
        "numpy",
        "PIL",
        "qdrant_client",
        "aws_lambda_powertools",
        "pydantic",
        "tqdm",
        "aws_xray_sdk",
    ):
        assert (deps / package).is_dir(), f"{package} is missing from the dependency layer"
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
    assert set(sizes) == {"IngestFunction", "SearchFunction"}
    assert all(not row["unmeasured_layers"] for row in report["functions"])
    assert not report["over_limit"], f"over {LIMIT_MB} MB: {sizes}"
    assert proc.returncode == 0
