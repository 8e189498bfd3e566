"""End to end on the local stack: boto3 uploads to its S3 endpoint become searchable through
its REST API, deletions disappear, and the stack stops cleanly, releasing its data folder."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request

import boto3
import pytest
from qdrant_client import QdrantClient

from tests.e2e.conftest import RunningStack


def s3_for(stack):
    return boto3.client(
        "s3",
        endpoint_url=stack.s3_url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )


def post_image(stack, data: bytes, query: str = "") -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{stack.api}/search?{query}", data=data, method="POST", headers={"Content-Type": "image/jpeg"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_for(condition, timeout=30.0, every=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not met in time")


def settled(health: dict, points: int) -> bool:
    """Every notification handled (the local stack's backlog in /health), and ``points`` indexed."""
    backlog = health["backlog"]
    return backlog["queued"] == 0 and backlog["in_flight"] == 0 and health["points"] == points


def test_start_banner_and_demo_catalogue(stack):
    out = stack.output()
    assert stack.api in out and stack.s3_url in out and "curl" in out and "aws --endpoint-url" in out
    assert '"level":"INFO"' not in out  # the functions' JSON logs only with --verbose
    health = stack.get("/health")
    assert health["store_reachable"] and health["points"] == 60 and health["store"] == "embedded"
    with urllib.request.urlopen(stack.api + "/", timeout=10) as page:
        assert b"Visual product search" in page.read()
    # the progress lines count what the ingest function did: the demo's 60 images at least
    counted = lambda: [int(n) for n in re.findall(r"indexing: (\d+) indexed", stack.output())]  # noqa: E731
    wait_for(lambda: max(counted(), default=0) >= 60, 15)


def test_upload_search_filter_delete(stack, demo_images):
    s3 = s3_for(stack)
    photo = demo_images[33].path.read_bytes()
    key = "catalog/e2e-sku/front photo é.jpg"
    s3.put_object(
        Bucket="product-images",
        Key=key,
        Body=photo,
        ContentType="image/jpeg",
        Metadata={"category": "E2E", "brand": "Acme", "price": "9.99"},
    )

    def found():
        status, body = post_image(stack, photo, "top_k=3&category=E2E")
        assert status == 200, body
        return body["results"]

    results = wait_for(found)
    assert results[0]["product_id"] == "e2e-sku" and results[0]["image"]["key"] == key
    assert results[0]["metadata"] == {"category": "E2E", "brand": "Acme", "price": 9.99}
    # the filter keeps everything else out
    assert all(r["metadata"]["category"] == "E2E" for r in results)
    s3.delete_object(Bucket="product-images", Key=key)
    wait_for(lambda: found() == [])
    assert stack.get("/health")["points"] == 60


def test_query_uploads_are_not_indexed(stack, demo_images):
    s3 = s3_for(stack)
    s3.put_object(Bucket="product-images", Key="query-uploads/q.jpg", Body=demo_images[0].path.read_bytes())
    time.sleep(1.0)
    assert stack.get("/health")["points"] == 60
    request = urllib.request.Request(
        f"{stack.api}/search",
        method="POST",
        data=json.dumps({"s3_key": "q.jpg", "top_k": 1}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.loads(response.read())
    assert body["results"][0]["product_id"] == demo_images[0].metadata["product-id"]


def test_errors_come_back_as_json(stack):
    status, body = post_image(stack, b"not an image")
    assert status == 400 and body["error"]["code"] == "unsupported_image"


@pytest.mark.parametrize(
    "framing,status",
    [("Content-Length: abc", 400), ("Content-Length: -1", 400), ("Transfer-Encoding: chunked", 411)],
)
def test_a_body_the_gateway_cannot_frame_gets_an_error(stack, framing, status):
    import socket as sockets

    with sockets.create_connection(("127.0.0.1", stack.api_port), timeout=10) as conn:
        conn.sendall(
            f"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n{framing}\r\n\r\n".encode()
        )
        chunks = []
        while chunk := conn.recv(65536):  # the gateway closes the connection after answering
            chunks.append(chunk)
        reply = b"".join(chunks).decode("utf-8", "replace")
    assert reply.startswith((f"HTTP/1.0 {status}", f"HTTP/1.1 {status}")), reply
    assert '"error"' in reply


def test_port_taken_is_a_clear_error(stack, tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "visual_search",
            "dev",
            "--api-port",
            str(stack.api_port),
            "--data-dir",
            str(tmp_path / "d"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"port {stack.api_port}" in result.stderr and "--api-port" in result.stderr


def test_restart_keeps_bucket_and_catalogue_and_releases_the_lock(tmp_path, demo_images):
    """A clean stop releases the folder; a restart at once on the same ports works (TIME_WAIT
    sockets do not count as taken); what was deleted stays deleted, the demo included."""
    data = tmp_path / "data"
    first = RunningStack(data)
    try:
        first.wait_ready()
        s3 = s3_for(first)
        s3.put_object(
            Bucket="product-images", Key="catalog/kept/a.jpg", Body=demo_images[5].path.read_bytes()
        )
        demo_key = f"catalog/{demo_images[0].key}"
        s3.delete_object(Bucket="product-images", Key=demo_key)
        wait_for(lambda: settled(first.get("/health"), 60))  # 60 demo photos - 1 + 1
    finally:
        assert first.stop() == 0
    assert "stopped" in first.output()
    client = QdrantClient(path=str(data / "qdrant"))  # the lock is free again
    client.close()
    second = RunningStack(data, api_port=first.api_port, s3_port=first.s3_port)
    try:
        second.wait_ready()
        assert second.get("/health")["points"] == 60
        keys = {o["Key"] for o in s3_for(second).list_objects_v2(Bucket="product-images")["Contents"]}
        assert "catalog/kept/a.jpg" in keys and demo_key not in keys and len(keys) == 60
        assert "demo catalogue" not in second.output()  # uploaded into an empty data folder only
    finally:
        assert second.stop() == 0


def test_a_catalogue_built_by_another_model_is_reindexed_from_the_bucket_at_start(tmp_path, demo_images):
    """After the default model changes (or MODEL_DIR does), the next start re-indexes the
    catalogue from the stack's own bucket instead of refusing to start."""
    import shutil

    from visual_search.config import REPO_MODEL_DIR

    earlier = tmp_path / "earlier-model"
    shutil.copytree(REPO_MODEL_DIR, earlier)
    card = json.loads((earlier / "model.json").read_text())
    card["id"] = "an-earlier-model"  # same weights, another id: another embedding space to the store
    (earlier / "model.json").write_text(json.dumps(card))
    data = tmp_path / "data"
    first = RunningStack(data, env={"MODEL_DIR": str(earlier)})
    try:
        first.wait_ready()
        wait_for(lambda: settled(first.get("/health"), 60), 120)
        assert first.get("/health")["model"] == "an-earlier-model"
    finally:
        assert first.stop() == 0
    second = RunningStack(data)
    try:
        second.wait_ready(180)
        health = second.get("/health")
        assert health["model"] == json.loads((REPO_MODEL_DIR / "model.json").read_text())["id"]
        assert health["points"] == 60
        assert "built by an-earlier-model" in second.output() and "re-indexed with" in second.output()
        status, body = post_image(second, demo_images[7].path.read_bytes())
        assert status == 200 and body["results"][0]["product_id"] == demo_images[7].key.split("/")[0]
    finally:
        assert second.stop() == 0


def test_a_second_stack_on_the_same_data_folder_is_refused(stack):
    import subprocess
    import sys

    from tests.e2e.conftest import free_port

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "visual_search",
            "dev",
            "--no-demo",
            "--api-port",
            str(free_port()),
            "--s3-port",
            str(free_port()),
            "--data-dir",
            str(stack.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "in use by another process" in result.stderr
    assert "loading the model" not in result.stdout  # refused before the slow part
    assert stack.get("/health")["store_reachable"]  # the running stack is unharmed


def run_cli(stack, *argv: str):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("QDRANT_", "AWS_ENDPOINT"))}
    env["QDRANT_PATH"] = str(stack.data_dir / "qdrant")
    return subprocess.run(
        [sys.executable, "-m", "visual_search", *argv], capture_output=True, text=True, timeout=120, env=env
    )


def test_commands_while_the_stack_runs_work_through_it_or_say_what_works(stack):
    from visual_search.dev.folders import DEMO_CATALOG

    info = run_cli(stack, "info")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["points"] == 60 and stack.api in info.stdout
    ingest = run_cli(stack, "ingest", str(DEMO_CATALOG))
    assert ingest.returncode == 1 and "Traceback" not in ingest.stderr
    assert (
        f"visual-search upload {DEMO_CATALOG} s3://product-images/catalog --endpoint-url {stack.s3_url}"
        in (ingest.stderr)
    )
    reconcile = run_cli(stack, "reconcile", "s3://product-images/")
    assert reconcile.returncode == 1 and "reconciles the whole bucket at every start" in reconcile.stderr
    # the upload it names: the demo is already there with the same metadata, nothing is sent
    upload = run_cli(
        stack, "upload", str(DEMO_CATALOG), "s3://product-images/catalog", "--endpoint-url", stack.s3_url
    )
    assert upload.returncode == 0, upload.stderr
    assert "60 images; 0 uploaded (0.0 MiB), 60 already there and unchanged, 0 failed" in upload.stdout


def test_a_raw_body_over_lambdas_limit_once_base64_encoded_is_413_as_deployed(stack):
    """4.8 MB of JPEG is under MAX_BODY_BYTES, but base64-encoded (as API Gateway passes a
    binary body) it is over Lambda's 6 MB request: deployed that never reaches the function."""
    status, body = post_image(stack, b"\xff\xd8\xff" + bytes(4_800_000))
    assert status == 413 and body["error"]["code"] == "body_too_large"
    assert "POST /uploads" in body["error"]["message"]


def put(url: str, data: bytes, content_type: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method="PUT", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_a_presigned_upload_refuses_another_content_type_as_s3_does(stack, demo_images):
    request = urllib.request.Request(
        f"{stack.api}/uploads",
        method="POST",
        data=json.dumps({"content_type": "image/jpeg"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        upload = json.loads(response.read())
    photo = demo_images[7].path.read_bytes()
    status, body = put(upload["upload_url"], photo, "image/png")
    assert status == 403 and b"SignatureDoesNotMatch" in body
    assert put(upload["upload_url"], photo, "image/jpeg")[0] == 200
    request = urllib.request.Request(
        f"{stack.api}/uploads",
        method="POST",
        data=json.dumps({"content_type": "image/jpeg", "content_length": len(photo)}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        sized = json.loads(response.read())
    status, body = put(sized["upload_url"], photo + b"\0" * 1000, "image/jpeg")  # over its stated size
    assert status == 403 and b"SignatureDoesNotMatch" in body
    assert put(sized["upload_url"], photo, "image/jpeg")[0] == 200
