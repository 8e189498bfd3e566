"""SnapStart: the after-restore hooks both functions register give a resumed instance new
clients (Qdrant over the REST shim, S3 and SSM on moto), the Qdrant key as it is now, and new
random state; afterwards both functions still work.

The hooks are called as Lambda's runtime calls them (``snapshot_restore_py.get_after_restore``).
"""

from __future__ import annotations

import base64
import gc
import json
import random
import sys
import threading
import weakref

import boto3
import pytest
import snapshot_restore_py
from aws_lambda_powertools.utilities import parameters
from moto import mock_aws
from PIL import Image

from tests.conftest import jpeg_bytes
from tests.support.apigw import json_event
from tests.support.qdrant_rest_shim import QdrantRestShim
from visual_search.dev.lambdas import LambdaContext, load_function
from visual_search.snapstart import finish_init

KEY_NAME = "/visual-search/qdrant-api-key"
BUCKET = "product-images"


@pytest.fixture
def restore():
    """Runs the registered after-restore hooks, as the runtime does after resuming a snapshot."""
    registry = snapshot_restore_py.get_after_restore()
    registry.clear()  # hooks of functions loaded by earlier tests

    def run() -> int:
        for func, args, kwargs in list(registry):
            func(*args, **kwargs)
        return len(registry)

    yield run
    registry.clear()


@pytest.fixture
def deployed(monkeypatch):
    """A Qdrant with an API key kept in SSM, a bucket, and the environment of the template."""
    parameters.clear_caches()
    with mock_aws(), QdrantRestShim() as shim:
        ssm = boto3.client("ssm", region_name="us-east-1")
        ssm.put_parameter(Name=KEY_NAME, Value="key-1", Type="SecureString")
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        for name, value in {
            "QDRANT_URL": shim.url,
            "QDRANT_API_KEY_PARAMETER": KEY_NAME,
            "COLLECTION": "snapstart",
            "BUCKET": BUCKET,
            "QDRANT_TIMEOUT": "2",
        }.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("QDRANT_API_KEY", raising=False)
        shim.accepted_keys = {"key-1"}
        yield shim, ssm, s3
    parameters.clear_caches()


def rotate(deployed) -> None:
    """The key rotated (and the old one revoked) while the snapshot waited."""
    shim, ssm, _ = deployed
    ssm.put_parameter(Name=KEY_NAME, Value="key-2", Type="SecureString", Overwrite=True)
    shim.accepted_keys = {"key-2"}


def search(app) -> dict:
    image = base64.b64encode(jpeg_bytes(Image.new("RGB", (80, 80), "navy"))).decode()
    return app.handler(json_event("POST", "/search", {"image": image}), LambdaContext())


def test_the_search_function_resumes_with_new_clients_and_the_current_key(deployed, restore):
    shim = deployed[0]
    app = load_function("search")
    assert search(app)["statusCode"] == 200
    uploads = app.handler(json_event("POST", "/uploads", {"content_type": "image/jpeg"}), LambdaContext())
    assert uploads["statusCode"] == 200, uploads["body"]
    qdrant, s3 = app.api.catalog.store.client, app.s3.get()
    random.seed(7)
    snapshot_state = random.getstate()
    rotate(deployed)

    assert restore() == 1
    assert app.api.catalog.store.client is not qdrant and app.s3.get() is not s3
    assert random.getstate() != snapshot_state
    # The key was read again in the hook: the first request after the restore already works.
    assert search(app)["statusCode"] == 200
    assert shim.keys_seen[-1] == "key-2"
    uploads = app.handler(json_event("POST", "/uploads", {"content_type": "image/jpeg"}), LambdaContext())
    assert uploads["statusCode"] == 200 and "upload_url" in json.loads(uploads["body"])


def test_the_ingest_function_resumes_with_new_clients_and_indexes(deployed, restore):
    shim, _, s3 = deployed
    app = load_function("ingest")
    qdrant = app.ingestor.catalog.store.client
    app.s3.get()  # made before the snapshot
    made_before = app.s3.get()
    rotate(deployed)

    assert restore() == 1
    assert app.ingestor.catalog.store.client is not qdrant and app.s3.get() is not made_before
    key = "catalog/Navy-Tee/1.jpg"
    s3.put_object(Bucket=BUCKET, Key=key, Body=jpeg_bytes(Image.new("RGB", (90, 90), "navy")))
    record = {
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": BUCKET}, "object": {"key": key}},
    }
    result = app.handler({"Records": [record]}, LambdaContext())
    assert [o["status"] for o in result["outcomes"]] == ["indexed"]
    assert app.ingestor.catalog.store.count() == 1 and shim.keys_seen[-1] == "key-2"


def test_without_a_restore_the_key_is_not_read_again(deployed, restore):
    # The control: the same functions, no hook run, keep the key of the snapshot (and fail
    # once with a retryable 503 when it was revoked), so the test above can fail.
    app = load_function("search")
    assert search(app)["statusCode"] == 200
    rotate(deployed)
    assert search(app)["statusCode"] == 503


@pytest.mark.parametrize(("init_type", "made"), [("on-demand", False), ("snap-start", True)])
def test_the_s3_client_is_made_at_init_only_when_the_init_is_snapshotted(
    deployed, restore, monkeypatch, init_type, made
):
    monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", init_type)
    app = load_function("search")
    assert app.s3.made is made
    restore()
    assert not app.s3.made  # dropped after a restore, made again on first use


@pytest.fixture
def unfrozen():
    """No object frozen before the test, none left frozen after it (the freeze is process-wide)."""
    gc.unfreeze()
    yield
    gc.unfreeze()


@pytest.mark.parametrize("in_lambda", [False, True])
def test_an_init_in_lambda_runs_without_collections_and_ends_with_what_it_made_frozen(
    deployed, restore, monkeypatch, unfrozen, in_lambda
):
    monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
    if in_lambda:
        monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "visual-search-search")
    else:  # the tests and the local stack, which load the functions again and again
        monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    collections: list[int] = []
    monkeypatch.delitem(sys.modules, "lambda_search_app", raising=False)
    this_thread = threading.get_ident()

    def count(phase: str, info: dict) -> None:
        # From the app's call of begin_init to the freeze that ends its init, on this thread:
        # other threads of the test process (servers and clients earlier tests left) allocate
        # too, and each collection they set off runs this callback on their own thread.
        app = sys.modules.get("lambda_search_app")
        if (
            phase == "start"
            and threading.get_ident() == this_thread
            and app is not None
            and "begin_init" in vars(app)
            and gc.get_freeze_count() == 0
        ):
            collections.append(info["generation"])

    threshold = gc.get_threshold()
    gc.set_threshold(100, 10**6, 10**6)  # a young collection every 100 allocations, no older one
    gc.callbacks.append(count)
    try:
        app = load_function("search")
    finally:
        gc.callbacks.remove(count)
        gc.set_threshold(*threshold)
    assert gc.isenabled()  # on again once the init is done
    assert (collections == []) is in_lambda  # paused for the whole init in Lambda only
    assert (gc.get_freeze_count() > 0) is in_lambda
    assert search(app)["statusCode"] == 200


@pytest.mark.parametrize(("init_type", "collected"), [("on-demand", False), ("snap-start", True)])
def test_only_a_snapshotted_init_collects_its_garbage_before_the_freeze(
    monkeypatch, unfrozen, init_type, collected
):
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "visual-search-search")
    monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", init_type)

    class Node:
        other: Node

    gc.disable()  # no automatic collection between making the garbage and the freeze
    try:
        first, second = Node(), Node()
        first.other, second.other = second, first
        garbage = weakref.ref(first)
        del first, second  # a reference cycle: only the cyclic collector frees it
        finish_init()
        assert (garbage() is None) is collected
        gc.unfreeze()
        gc.collect()
        assert garbage() is None  # frozen garbage is kept, not lost: unfrozen, it is collected
    finally:
        gc.enable()
