"""`sam local invoke` and `sam local start-api` run the built functions in containers, through
scripts/sam-local.sh, the way a developer runs them.

The script starts a docker daemon when none answers (`dockerd --bridge=none --iptables=false`:
no bridge, no iptables rules), builds the offline stand-in of AWS's Lambda Python 3.12 image
(tools/lambda_base_image.sh; .ci/run builds it before the tests) and runs `sam local` with the
host network: on the session's `sam build` (conftest.sam_build, SAM_LOCAL_NO_BUILD=1), except
for the README's health command, which builds .aws-sam/build in the checkout when needed. The functions
reach, on 127.0.0.1, a moto S3 server (holding one demo photo) and a Qdrant REST endpoint (the
test shim over an in-memory store): the ingest function indexes the photo from the SQS-wrapped S3
event of events/, then the search function finds its product from the API events (JSON, raw
JPEG, multipart) and through SAM's own API emulation (binary media types end to end).

Skipped, saying why, only where docker cannot run: no docker and no way to install it, or no
daemon and not root. A daemon the module started is stopped when it ends.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy._support import INSTALL_HINT, REPO, find_python312, find_tool, record

SCRIPT = REPO / "scripts" / "sam-local.sh"
BUCKET = "product-images"
PRODUCT = "Oatly-Oat-Milk"
PHOTO_KEY = f"catalog/{PRODUCT}/{PRODUCT}_001.jpg"
PHOTO = REPO / "data" / "demo-catalog" / PRODUCT / f"{PRODUCT}_001.jpg"


def _docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def docker() -> Iterator[None]:
    """A docker daemon and the stand-in image; the daemon is stopped at the end if started here."""
    if not find_tool("sam") or not find_python312():
        pytest.skip(f"aws-sam-cli or a python3.12 is missing: {INSTALL_HINT}")
    already_running = _docker_answers()
    if not already_running:
        if os.geteuid() != 0:
            pytest.skip("no docker daemon answers, and starting one (dockerd) needs root")
        if not shutil.which("docker") and not shutil.which("apt-get"):
            pytest.skip("docker is not installed and apt-get is not there to install docker.io")
    started = subprocess.run(
        ["bash", str(SCRIPT), "start-docker"], capture_output=True, text=True, timeout=900
    )
    if started.returncode != 0:
        pytest.fail(f"scripts/sam-local.sh start-docker failed:\n{started.stderr[-3000:]}", pytrace=False)
    try:
        began = time.monotonic()
        image = subprocess.run(
            ["bash", str(REPO / "tools" / "lambda_base_image.sh")],
            capture_output=True,
            text=True,
            timeout=1200,
        )
        assert image.returncode == 0, f"the stand-in image could not be built:\n{image.stderr[-3000:]}"
        record(lambda_base_image_check_s=round(time.monotonic() - began, 1))
        yield
    finally:
        # the untagged images SAM's rebuilds left (they carry the stand-in's label)
        subprocess.run(
            ["docker", "image", "prune", "-f", "--filter", "label=visual-search.lambda-standin"],
            capture_output=True,
            timeout=120,
        )
        if not already_running:
            subprocess.run(["bash", str(SCRIPT), "stop-docker"], capture_output=True, timeout=120)


@dataclass
class Services:
    s3_url: str
    qdrant_url: str
    env_vars: Path  # sam local --env-vars: the template's variables
    container_env: Path  # SAM_LOCAL_CONTAINER_ENV: those the template does not declare
    build_dir: Path  # the session's sam build

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            SAM_CLI_TELEMETRY="0",
            SAM_LOCAL_CONTAINER_ENV=str(self.container_env),
            SAM_LOCAL_BUILD_DIR=str(self.build_dir),
            SAM_LOCAL_NO_BUILD="1",
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_REGION="us-east-1",
        )
        env.pop("AWS_PROFILE", None)
        env.pop("PYTHONPATH", None)
        return env


@pytest.fixture(scope="module")
def services(sam_build, tmp_path_factory) -> Iterator[Services]:
    """moto's S3 server with the bucket and one demo photo (with its products.csv metadata), and
    the Qdrant REST shim; both on 127.0.0.1, where the host-network containers reach them."""
    import boto3
    from moto.server import ThreadedMotoServer

    from tests.support.qdrant_rest_shim import QdrantRestShim

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    shim = QdrantRestShim()
    shim.start()
    try:
        host, port = server.get_host_and_port()
        s3_url = f"http://{host}:{port}"
        s3 = boto3.client(
            "s3",
            endpoint_url=s3_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        s3.create_bucket(Bucket=BUCKET)
        with open(REPO / "data/demo-catalog/products.csv", newline="") as products:
            rows = {row["product_id"]: row for row in csv.DictReader(products)}
        metadata = {k: v for k, v in rows[PRODUCT].items() if k != "product_id"}
        s3.put_object(Bucket=BUCKET, Key=PHOTO_KEY, Body=PHOTO.read_bytes(), Metadata=metadata)

        folder = tmp_path_factory.mktemp("sam-local")
        env_vars = folder / "env-vars.json"
        env_vars.write_text(
            json.dumps(
                {
                    "Parameters": {
                        "QDRANT_URL": shim.url,
                        "QDRANT_API_KEY_PARAMETER": "",
                        "BUCKET": BUCKET,
                        "UPLOAD_BUCKET": BUCKET,
                        "MODELS_BUCKET": BUCKET,
                        "LEARN_FROM_CLICKS": "false",
                    }
                }
            )
        )
        container_env = folder / "container-env.json"
        container_env.write_text(
            json.dumps({"AWS_ENDPOINT_URL_S3": s3_url, "POWERTOOLS_TRACE_DISABLED": "true"})
        )
        yield Services(s3_url, shim.url, env_vars, container_env, sam_build.dir)
    finally:
        shim.stop()
        server.stop()


def _sam_local(services: Services, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args, "--env-vars", str(services.env_vars), "--region", "us-east-1"],
        cwd=REPO,
        env=services.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _response(proc: subprocess.CompletedProcess) -> dict:
    """The function's response: the JSON document `sam local invoke` prints last on stdout."""
    assert proc.returncode == 0, f"sam local failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(
        f"no JSON response in sam local's output:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    )


def _invoke(services: Services, function: str, event: str) -> dict:
    began = time.monotonic()
    payload = _response(_sam_local(services, "invoke", function, "-e", str(REPO / "events" / event)))
    print(f"\nsam local invoke {function} {event}: {time.monotonic() - began:.1f} s")
    return payload


def _body(payload: dict) -> dict:
    assert "errorType" not in payload, payload
    assert payload["statusCode"] == 200, payload
    body = payload["body"]
    if payload.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return json.loads(body)


def _finds_the_product(body: dict) -> None:
    assert body["results"], body
    assert body["results"][0]["product_id"] == PRODUCT, body
    assert body["results"][0]["metadata"]["brand"] == "Oatly", body


@pytest.fixture(scope="module")
def ingested(docker, services) -> dict:
    """The ingest function, in its container, indexes the demo photo from the SQS-wrapped S3 event."""
    return _invoke(services, "IngestFunction", "sqs-s3-put.json")


def test_ingest_function_indexes_the_photo_from_s3(ingested):
    assert ingested == {"batchItemFailures": []}


@pytest.mark.parametrize(
    "event", ["api-search-binary.json", "api-search-json.json", "api-search-multipart.json"]
)
def test_search_function_finds_the_ingested_product(ingested, services, event):
    _finds_the_product(_body(_invoke(services, "SearchFunction", event)))


def test_the_script_prints_the_health_response(docker):
    """The command of the README, as is, with its local defaults (scripts/sam-local-env.json: no
    Qdrant listens there, so the health is degraded, and still answered with 200)."""
    began = time.monotonic()
    proc = subprocess.run(
        ["bash", str(SCRIPT), "invoke", "SearchFunction", "-e", "events/api-health.json"],
        cwd=REPO,
        env={**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    body = _body(_response(proc))
    record(sam_local_script_health_s=round(time.monotonic() - began, 1))
    assert body["model"] and body["store_reachable"] is False, body


@pytest.fixture(scope="module")
def api(ingested, services) -> Iterator[str]:
    """`sam local start-api` on 127.0.0.1 and a free port, until the module ends."""
    port = _free_port()
    log = services.env_vars.parent / "start-api.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [
                "bash",
                str(SCRIPT),
                "start-api",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--warm-containers",
                "LAZY",
                "--env-vars",
                str(services.env_vars),
                "--region",
                "us-east-1",
            ],
            cwd=REPO,
            env=services.env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"sam local start-api exited:\n{log.read_text(errors='replace')[-4000:]}", pytrace=False
                )
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"start-api did not listen:\n{log.read_text(errors='replace')[-4000:]}")
                time.sleep(0.5)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)  # sam removes its warm containers on Ctrl-C
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def _request(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_start_api_health(api):
    status, body = _request(f"{api}/health")
    assert status == 200, body
    assert body["status"] == "ok" and body["points"] == 1, body


def test_start_api_searches_a_raw_jpeg(api):
    """image/jpeg is a binary media type of the API: SAM's emulation base64-encodes the body,
    as API Gateway does, and the function decodes it."""
    began = time.monotonic()
    status, body = _request(
        f"{api}/search?top_k=3", data=PHOTO.read_bytes(), headers={"Content-Type": "image/jpeg"}
    )
    record(sam_local_start_api_search_s=round(time.monotonic() - began, 1))
    assert status == 200, body
    _finds_the_product(body)
