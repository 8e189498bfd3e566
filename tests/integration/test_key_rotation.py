"""A Qdrant API key kept in SSM or Secrets Manager can be rotated under running functions.

A warm (or SnapStart-restored) function re-reads the key every KEY_MAX_AGE_S, so a rotation
that keeps both keys valid for that long fails no request; a key revoked at once costs one
retryable 503 per running function, never a stuck one. The shim checks the ``api-key`` header
as a secured Qdrant does; SSM and Secrets Manager are moto.
"""

from __future__ import annotations

import base64
import json

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters
from moto import mock_aws
from PIL import Image

from tests.conftest import jpeg_bytes
from tests.support.apigw import json_event, rest_event
from tests.support.qdrant_rest_shim import QdrantRestShim
from visual_search.config import StoreSettings
from visual_search.dev.lambdas import LambdaContext, load_function
from visual_search.errors import StoreUnavailableError
from visual_search.store import CatalogStore
from visual_search.store import connection as store_module

NAME = "/visual-search/qdrant-api-key"


class KeyStore:
    """Where the key lives (SSM SecureString or Secrets Manager secret), under moto."""

    def __init__(self, kind: str):
        self.kind = kind
        self.ssm = boto3.client("ssm", region_name="us-east-1")
        self.secrets = boto3.client("secretsmanager", region_name="us-east-1")

    def settings(self, url: str, collection: str) -> StoreSettings:
        source = {"api_key_parameter": NAME} if self.kind == "ssm" else {"api_key_secret": NAME}
        return StoreSettings(url=url, collection=collection, timeout_s=5, **source)

    def env(self) -> dict[str, str]:
        return {"QDRANT_API_KEY_PARAMETER" if self.kind == "ssm" else "QDRANT_API_KEY_SECRET": NAME}

    def put(self, key: str) -> None:
        if self.kind == "ssm":
            self.ssm.put_parameter(Name=NAME, Value=key, Type="SecureString", Overwrite=True)
        else:
            try:
                self.secrets.put_secret_value(SecretId=NAME, SecretString=key)
            except self.secrets.exceptions.ResourceNotFoundException:
                self.secrets.create_secret(Name=NAME, SecretString=key)


@pytest.fixture
def shim():
    with QdrantRestShim() as server:
        yield server


@pytest.fixture(params=["ssm", "secret"])
def keys(request):
    parameters.clear_caches()
    with mock_aws():
        store = KeyStore(request.param)
        store.put("key-1")
        yield store
    parameters.clear_caches()


def open_store(keys: KeyStore, shim: QdrantRestShim, embedder) -> CatalogStore:
    return CatalogStore.open(keys.settings(shim.url, "rotation"), embedder.model_id, embedder.dim)


def test_a_rotated_key_is_picked_up_without_a_failed_request(keys, shim, embedder, monkeypatch):
    monkeypatch.setattr(store_module, "KEY_MAX_AGE_S", 0)  # as if the re-read interval had passed
    shim.accepted_keys = {"key-1"}
    store = open_store(keys, shim, embedder)
    assert store.count() == 0 and shim.keys_seen[-1] == "key-1"
    # Rotation: the new key is valid next to the old one, then stored, then the old one revoked.
    shim.accepted_keys = {"key-1", "key-2"}
    keys.put("key-2")
    assert store.count() == 0 and shim.keys_seen[-1] == "key-2"
    shim.accepted_keys = {"key-2"}
    assert store.count() == 0


def test_a_key_is_not_re_read_before_its_interval(keys, shim, embedder):
    shim.accepted_keys = {"key-1", "key-2"}
    store = open_store(keys, shim, embedder)
    keys.put("key-2")
    store.count()
    assert set(shim.keys_seen) == {"key-1"}  # one read per KEY_MAX_AGE_S, not one per request


def test_a_revoked_key_costs_one_retryable_failure(keys, shim, embedder):
    shim.accepted_keys = {"key-1"}
    store = open_store(keys, shim, embedder)
    store.count()
    keys.put("key-3")
    shim.accepted_keys = {"key-3"}  # the old key revoked at once
    with pytest.raises(StoreUnavailableError, match=r"a new one was read from .*: retry"):
        store.count()
    assert store.count() == 0 and shim.keys_seen[-1] == "key-3"


def test_a_wrong_key_is_reported_as_such(keys, shim, embedder):
    shim.accepted_keys = {"another-key"}
    store = open_store(keys, shim, embedder)
    for _ in range(2):
        with pytest.raises(StoreUnavailableError, match=r"refused the API key .*check that it is valid"):
            store.count()


def test_a_key_from_the_environment_is_never_re_read(shim, embedder, monkeypatch):
    monkeypatch.setattr(store_module, "KEY_MAX_AGE_S", 0)
    shim.accepted_keys = {"env-key"}
    store = CatalogStore.open(
        StoreSettings(url=shim.url, api_key="env-key", collection="env"), embedder.model_id, embedder.dim
    )
    assert store.count() == 0
    shim.accepted_keys = {"other"}
    with pytest.raises(StoreUnavailableError, match=r"from QDRANT_API_KEY\): check"):
        store.count()


@pytest.fixture
def search_function(keys, shim, embedder, monkeypatch):
    env = {
        "QDRANT_URL": shim.url,
        "COLLECTION": "rotation-api",
        "BUCKET": "product-images",
        "QDRANT_TIMEOUT": "2",
        **keys.env(),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("QDRANT_API_KEY", raising=False)
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="product-images")
    shim.accepted_keys = {"key-1"}
    return load_function("search")


def search(app) -> dict:
    image = base64.b64encode(jpeg_bytes(Image.new("RGB", (80, 80), "navy"))).decode()
    return app.handler(json_event("POST", "/search", {"image": image}), LambdaContext())


def test_the_search_function_opens_no_qdrant_connection_at_init(search_function, shim):
    # SnapStart snapshots the init phase: a connection made there would be stale on restore.
    assert shim.connections == 0 and shim.keys_seen == []
    assert search(search_function)["statusCode"] == 200
    assert shim.connections >= 1


def test_the_search_api_answers_503_once_then_serves_with_the_new_key(search_function, shim, keys):
    assert search(search_function)["statusCode"] == 200
    keys.put("key-2")
    shim.accepted_keys = {"key-2"}
    refused = search(search_function)
    assert refused["statusCode"] == 503, refused["body"]
    assert "retry" in json.loads(refused["body"])["error"]["message"]
    assert search(search_function)["statusCode"] == 200
    health = search_function.handler(rest_event("GET", "/health"), LambdaContext())
    assert health["statusCode"] == 200
