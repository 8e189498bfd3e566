"""Fixtures of the deploy tests: the parsed template and one `sam build` per session."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy._support import (
    INSTALL_HINT,
    REPO,
    TEMPLATE,
    find_python312,
    find_tool,
    load_template,
    record,
    tool_env,
)


@pytest.fixture(scope="session")
def template() -> dict:
    return load_template(TEMPLATE)


@dataclass
class Build:
    dir: Path
    seconds: float
    log: str

    @property
    def template(self) -> dict:
        return load_template(self.dir / "template.yaml")


@pytest.fixture(scope="session")
def sam_build(tmp_path_factory):
    """`sam build` of template.yaml into a temporary folder, once per session (~15-60 s: pip
    fetches the Lambda wheels, then tools/trim_layer.py trims and compiles them)."""
    sam = find_tool("sam")
    if not sam:
        pytest.skip(f"aws-sam-cli is not installed: {INSTALL_HINT}")
    python312 = find_python312()
    if not python312:
        pytest.skip(
            "sam build needs a python3.12 for the python3.12 runtime: none found "
            "(pyenv install 3.12, or set SAM_PYTHON), then " + INSTALL_HINT
        )
    build_dir = tmp_path_factory.mktemp("sam") / "build"
    started = time.monotonic()
    proc = subprocess.run(
        [sam, "build", "--template-file", str(TEMPLATE), "--build-dir", str(build_dir)],
        cwd=REPO,
        env=tool_env(python312),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    seconds = time.monotonic() - started
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"sam build failed ({proc.returncode}):\n{log[-6000:]}", pytrace=False)
    record(sam_build_seconds=round(seconds, 1))
    print(f"\nsam build: {seconds:.1f} s")
    yield Build(dir=build_dir, seconds=seconds, log=log)
    shutil.rmtree(build_dir, ignore_errors=True)  # ~200 MB; pytest keeps its last 3 tmp dirs
