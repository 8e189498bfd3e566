"""Helpers of the deploy tests: the template, the names the code reads, the deploy tools.

The tools (aws-sam-cli, cfn-lint, a python3.12, the Lambda runtime interface client) live in
.venv-sam/, installed by tools/install_deploy_tools.sh; tests that need them skip with the
command to run when they are missing.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"
ARTIFACTS = REPO / "test-artifacts"
MEASUREMENTS = ARTIFACTS / "deploy-measurements.json"
SAM_VENV = Path(os.environ.get("SAM_VENV", REPO / ".venv-sam"))
INSTALL_HINT = "run `bash tools/install_deploy_tools.sh` (installs them into .venv-sam/)"
LIMIT_MB = 230.0


def _load_tool_module(name: str):
    spec = importlib.util.spec_from_file_location(f"_deploy_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


lambda_size = _load_tool_module("lambda_size")
load_template = lambda_size.load_template  # CloudFormation YAML, short-form tags as dicts


# ---------------------------------------------------------------------------- the template


def resources_of_type(template: dict, kind: str) -> dict[str, dict]:
    return {name: res for name, res in template["Resources"].items() if res["Type"] == kind}


def function_environment(template: dict, function: str) -> dict:
    """Globals' variables merged with the function's own, as SAM merges them."""
    glob = ((template.get("Globals") or {}).get("Function") or {}).get("Environment") or {}
    props = template["Resources"][function]["Properties"]
    own = (props.get("Environment") or {}).get("Variables") or {}
    return {**(glob.get("Variables") or {}), **own}


def function_setting(template: dict, function: str, name: str):
    props = template["Resources"][function]["Properties"]
    if name in props:
        return props[name]
    return ((template.get("Globals") or {}).get("Function") or {}).get(name)


def resolve_defaults(value, template: dict):
    """A value with Refs to parameters replaced by their defaults; None when it cannot be."""
    if isinstance(value, (str, int, float)):
        return str(value)
    params = template.get("Parameters", {})
    if isinstance(value, dict) and set(value) == {"Ref"}:
        param = params.get(value["Ref"])
        if param and "Default" in param:
            return str(param["Default"])
    if isinstance(value, dict) and set(value) == {"Fn::Sub"} and isinstance(value["Fn::Sub"], str):
        names = re.findall(r"\$\{([^}]+)\}", value["Fn::Sub"])
        if all("Default" in params.get(n, {}) for n in names):
            return re.sub(r"\$\{([^}]+)\}", lambda m: str(params[m.group(1)]["Default"]), value["Fn::Sub"])
    return None


# ---------------------------------------------------------------------------- the code

ENV_HELPER = re.compile(r"^_?env(_\w+)?$")


def _call_name(func: ast.expr) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def env_names_in_source(paths: list[Path]) -> set[str]:
    """Names read from the environment: os.environ.get("X"), os.environ["X"], os.getenv("X"),
    environ.setdefault/pop("X"), and helpers named like _env*("X", ...)."""
    names: set[str] = set()
    for root in paths:
        for file in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
            for node in ast.walk(tree):
                first = None
                if isinstance(node, ast.Call) and node.args:
                    name = _call_name(node.func)
                    last = name.rsplit(".", 1)[-1]
                    if (
                        name.endswith(("environ.get", "environ.setdefault", "environ.pop"))
                        or last == "getenv"
                        or ENV_HELPER.match(last)
                    ):
                        first = node.args[0]
                elif isinstance(node, ast.Subscript) and _call_name(node.value).endswith("environ"):
                    first = node.slice
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    names.add(first.value)
    return names


@lru_cache(maxsize=1)
def powertools_env_names() -> frozenset[str]:
    """POWERTOOLS_* names that aws_lambda_powertools (the installed one) reads."""
    spec = importlib.util.find_spec("aws_lambda_powertools")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    found: set[str] = set()
    for location in spec.submodule_search_locations:
        for file in Path(location).rglob("*.py"):
            found.update(re.findall(r"[\"'](POWERTOOLS_[A-Z0-9_]+)[\"']", file.read_text("utf-8")))
    return frozenset(found)


# ---------------------------------------------------------------------------- the tools


def _is_python312(path: str | Path) -> str | None:
    try:
        out = subprocess.run(
            [str(path), "-c", "import sys; print(sys.version_info[:2] == (3, 12), sys.executable)"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    ok, _, executable = out.stdout.strip().partition(" ")
    return executable if out.returncode == 0 and ok == "True" else None


@lru_cache(maxsize=1)
def find_python312() -> str | None:
    """The python3.12 that `sam build` runs: .venv-sam's own, else $SAM_PYTHON, pyenv's, PATH's."""
    candidates = [SAM_VENV / "bin" / "python3.12", os.environ.get("SAM_PYTHON", "")]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += sorted(pyenv_root.glob("versions/3.12.*/bin/python3.12"), reverse=True)
    candidates += [shutil.which("python3.12") or ""]
    for candidate in candidates:
        if candidate and Path(candidate).exists() and _is_python312(candidate):
            return str(candidate)
    return None


def find_tool(name: str) -> str | None:
    """.venv-sam's, else the test venv's (cfn-lint is pinned there too), else PATH's."""
    for folder in (SAM_VENV / "bin", Path(sys.executable).parent):
        if (folder / name).exists():
            return str(folder / name)
    return shutil.which(name)


def tool_env(python312: str | None = None) -> dict[str, str]:
    """Environment for sam / cfn-lint: no telemetry, and python3.12 first on PATH."""
    env = dict(os.environ)
    env["SAM_CLI_TELEMETRY"] = "0"
    env.pop("PYTHONPATH", None)
    path = [str(SAM_VENV / "bin")]
    if python312:
        path.insert(0, str(Path(python312).parent))
    env["PATH"] = os.pathsep.join([*path, env.get("PATH", "")])
    return env


def rie_binary() -> Path | None:
    found = sorted(SAM_VENV.glob("lib/python*/site-packages/samcli/local/rapid/aws-lambda-rie-x86_64"))
    return found[0] if found else None


def runtime_python() -> Path | None:
    """python3.12 with awslambdaric and boto3: what the Lambda runtime adds to the layers."""
    python = SAM_VENV / "lambda-runtime" / "bin" / "python"
    return python if python.exists() else None


def record(**values) -> None:
    """Merges measurements into test-artifacts/deploy-measurements.json (for docs/deploy.md)."""
    ARTIFACTS.mkdir(exist_ok=True)
    data = json.loads(MEASUREMENTS.read_text()) if MEASUREMENTS.exists() else {}
    data.update(values)
    MEASUREMENTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
