"""The built functions boot and answer like in Lambda, without Docker.

After `sam build`, the AWS Lambda Runtime Interface Emulator shipped in the aws-sam-cli wheel
(samcli/local/rapid/aws-lambda-rie-x86_64) runs `python -m awslambdaric app.handler` in the
built function folder. /opt is emulated: PYTHONPATH lists the function folder then each layer's
python/ folder (as Lambda puts /var/task and /opt/python before the runtime's boto3), and
MODEL_DIR points at the model layer's folder. The interpreter is .venv-sam/lambda-runtime, a
python3.12 holding only awslambdaric and boto3, what the Lambda runtime adds to the layers; so
a dependency missing from the layers fails here. Bytecode is not written (PYTHONDONTWRITEBYTECODE),
as /opt is read-only in Lambda, so the init time includes what the layers ship.

The store is embedded in memory (QDRANT_PATH=:memory:), so no AWS and no Qdrant server are used:
the search function answers the API events of events/, the ingest function an S3 test event.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.deploy._support import (
    INSTALL_HINT,
    REPO,
    function_environment,
    record,
    resolve_defaults,
    rie_binary,
    runtime_python,
)

INVOKE_PATH = "/2015-03-31/functions/function/invocations"
INIT_REPORT = re.compile(r"INIT REPORT\(durationMs: ([0-9.]+)\)")
# What the test environment replaces: no Qdrant server, no SSM, no real bucket.
OVERRIDES = {
    "QDRANT_PATH": ":memory:",
    "BUCKET": "product-images",
    "UPLOAD_BUCKET": "product-images",
    "POWERTOOLS_TRACE_DISABLED": "true",
}
DROPPED = ("QDRANT_URL", "QDRANT_API_KEY_PARAMETER", "QDRANT_API_KEY_SECRET")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the emulator exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"the emulator did not listen on {port} within {timeout} s")


def _stop(process: subprocess.Popen) -> None:
    """Stops the emulator and the runtime it started (one process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)  # anyone left in the group?
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)


class Emulator:
    def __init__(self, process: subprocess.Popen, port: int, log: Path):
        self.process, self.port, self.log = process, port, log

    def invoke(self, event: dict, timeout: float = 120) -> tuple[dict, float]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{INVOKE_PATH}",
            data=json.dumps(event).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        started = time.monotonic()
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.loads(response.read())
        return payload, time.monotonic() - started

    def init_ms(self) -> float | None:
        found = INIT_REPORT.findall(self.log.read_text(errors="replace"))
        return float(found[0]) if found else None


@contextlib.contextmanager
def run_emulator(build_dir: Path, template: dict, function: str, workdir: Path):
    """The built `function` under the emulator, until the block ends."""
    rie, python = rie_binary(), runtime_python()
    if not rie or not python:
        pytest.skip(f"the Lambda runtime interface emulator or awslambdaric is missing: {INSTALL_HINT}")
    resources = template["Resources"]
    layers = [layer["Ref"] for layer in template["Globals"]["Function"]["Layers"]]
    layer_dirs = [(build_dir / resources[name]["Properties"]["ContentUri"]).resolve() for name in layers]
    function_dir = build_dir / resources[function]["Properties"]["CodeUri"]
    handler = resources[function]["Properties"]["Handler"]

    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_LAMBDA_FUNCTION_NAME": function,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": os.pathsep.join(
            [str(function_dir)] + [str(d / "python") for d in layer_dirs if (d / "python").is_dir()]
        ),
    }
    for name, value in function_environment(template, function).items():
        resolved = resolve_defaults(value, template)
        if resolved is not None and name not in DROPPED:
            env[name] = resolved
    env.update(OVERRIDES)
    # /opt/<folder> in Lambda is <that layer's folder>/<folder> here.
    model_folder = Path(env["MODEL_DIR"]).relative_to("/opt")
    env["MODEL_DIR"] = str(next(d / model_folder for d in layer_dirs if (d / model_folder).is_dir()))

    port = _free_port()
    log = workdir / "rie.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [
                str(rie),
                "--runtime-interface-emulator-address",
                f"127.0.0.1:{port}",
                "--runtime-api-address",
                f"127.0.0.1:{_free_port()}",
                str(python),
                "-m",
                "awslambdaric",
                handler,
            ],
            cwd=function_dir,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        _wait_for_port(port, process)
        yield Emulator(process, port, log)
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def emulator(sam_build, tmp_path_factory):
    with run_emulator(
        sam_build.dir, sam_build.template, "SearchFunction", tmp_path_factory.mktemp("rie-search")
    ) as running:
        yield running


def _event(name: str) -> dict:
    path = REPO / "events" / name
    if not path.exists():
        pytest.fail(f"events/{name} is missing")
    return json.loads(path.read_text())


def _ok(payload: dict, log: Path) -> dict:
    assert "errorType" not in payload, f"{payload}\n{log.read_text(errors='replace')[-3000:]}"
    assert payload["statusCode"] == 200, f"{payload}\n{log.read_text(errors='replace')[-3000:]}"
    body = payload["body"]
    if payload.get("isBase64Encoded"):
        body = base64.b64decode(body)
    return json.loads(body)


def test_health_cold_start(emulator):
    payload, first_seconds = emulator.invoke(_event("api-health.json"))
    body = _ok(payload, emulator.log)
    assert body["model"]
    init_ms = emulator.init_ms()
    _, warm_seconds = emulator.invoke(_event("api-health.json"))
    record(
        rie_init_ms=init_ms,
        rie_first_invoke_s=round(first_seconds, 3),
        rie_warm_health_ms=round(warm_seconds * 1000, 1),
    )
    print(
        f"\nRIE: init {init_ms} ms, first invoke {first_seconds * 1000:.0f} ms (wall), "
        f"warm health {warm_seconds * 1000:.1f} ms"
    )
    assert init_ms is not None, "the emulator logged no INIT REPORT"


def test_search_json(emulator):
    payload, seconds = emulator.invoke(_event("api-search-json.json"))
    body = _ok(payload, emulator.log)
    _embedded_and_answered(body)
    record(rie_search_json_ms=round(seconds * 1000, 1))


def test_search_binary_image(emulator):
    # API Gateway delivers image/* bodies base64-encoded (BinaryMediaTypes).
    event = _event("api-search-binary.json")
    assert event["isBase64Encoded"] is True
    body = _ok(emulator.invoke(event)[0], emulator.log)
    _embedded_and_answered(body)


def _embedded_and_answered(body: dict) -> None:
    """The photo was decoded and embedded by the layer's default model, and the (empty,
    in-memory) catalogue answered: no results, not an error."""
    from visual_search.config import REPO_MODEL_DIR

    assert body["model"] == json.loads((REPO_MODEL_DIR / "model.json").read_text())["id"]
    assert body["results"] == [] and body["no_match"] is False
    assert body["timings_ms"]["decode"] > 0 and body["timings_ms"]["embed"] > 0


def test_ingest_function_boots_and_takes_an_sqs_batch(sam_build, tmp_path):
    # The S3 test event (sent when a notification is configured) needs neither S3 nor Qdrant
    # data: a clean boot and an empty list of batch item failures.
    with run_emulator(sam_build.dir, sam_build.template, "IngestFunction", tmp_path) as running:
        payload, _ = running.invoke(_event("sqs-s3-test-event.json"))
        assert "errorType" not in payload, f"{payload}\n{running.log.read_text(errors='replace')[-3000:]}"
        assert payload == {"batchItemFailures": []}
        record(rie_ingest_init_ms=running.init_ms())
