"""Nothing secret or internal leaves the service: not the Qdrant API key, not stack traces,
not server paths, neither in responses nor in logs."""

from __future__ import annotations

import base64
import json

import boto3
import pytest
from moto import mock_aws
from PIL import Image

from tests.conftest import jpeg_bytes
from tests.support.apigw import json_event, rest_event
from visual_search.dev.lambdas import LambdaContext, load_function

SECRET = "qdrant-secret-key-7f3a9c"


@pytest.fixture
def search_app(monkeypatch, qdrant_shim, embedder):
    monkeypatch.setenv("QDRANT_URL", qdrant_shim.url)
    monkeypatch.setenv("QDRANT_API_KEY", SECRET)
    monkeypatch.setenv("COLLECTION", "security")
    monkeypatch.setenv("BUCKET", "product-images")
    monkeypatch.setenv("QDRANT_TIMEOUT", "2")
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="product-images")
        app = load_function("search")
        yield app
        store = app.api.catalog.store
        physical = store.physical_collection()
        if physical:
            store.drop_collection(physical)


def photo() -> str:
    return base64.b64encode(jpeg_bytes(Image.new("RGB", (80, 80), "navy"))).decode()


@pytest.fixture
def service_logs():
    """Everything the service logger writes, formatted as in Lambda (JSON with traces)."""
    import io
    import logging

    from visual_search.observability import logger

    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logger.registered_formatter)
    logger.addHandler(handler)
    yield buffer
    logger.removeHandler(handler)


def test_no_secret_or_trace_in_responses_or_logs(search_app, qdrant_shim, service_logs, monkeypatch):
    events = [
        json_event("POST", "/search", {"image": photo()}),
        json_event("POST", "/search", {"image": "not base64!"}),
        rest_event("GET", "/health"),
        rest_event(
            "GET",
            "/products/x/similar",
            resource="/products/{product_id}/similar",
            path_params={"product_id": "x"},
        ),
    ]
    responses = [search_app.handler(e, LambdaContext()) for e in events]
    qdrant_shim.fail_with = 503
    try:
        responses += [search_app.handler(e, LambdaContext()) for e in events]
    finally:
        qdrant_shim.fail_with = None

    def boom(*args, **kwargs):
        raise RuntimeError(f"internal failure at /var/task/secret/path with key {SECRET}")

    monkeypatch.setattr(search_app.api.catalog, "search_image", boom)
    crash = search_app.handler(events[0], LambdaContext())
    responses.append(crash)
    assert crash["statusCode"] == 500
    assert json.loads(crash["body"]) == {
        "error": {"code": "internal_error", "message": "internal error; the request id is in the logs"}
    }
    logs = service_logs.getvalue()
    for response in responses:
        body = response["body"]
        assert SECRET not in body and "Traceback" not in body and "/var/task" not in body
        assert "/work/" not in body and "site-packages" not in body
    assert {r["statusCode"] for r in responses} >= {200, 400, 503, 500}
    # the crash is logged with its trace (for operators), but the key never is
    assert "internal failure" in logs and "Traceback" in logs
    assert SECRET not in logs.replace(f"with key {SECRET}", "")


def test_api_key_is_never_in_settings_output(monkeypatch, capsys):
    from visual_search.catalog import get_catalog
    from visual_search.config import get_settings
    from visual_search.dev.cli import main

    monkeypatch.setenv("QDRANT_API_KEY", SECRET)
    monkeypatch.setenv("QDRANT_PATH", ":memory:")
    get_settings.cache_clear()
    get_catalog.cache_clear()
    assert main(["info"]) == 0
    assert SECRET not in capsys.readouterr().out
