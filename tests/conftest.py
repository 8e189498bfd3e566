"""Shared fixtures: the real model, the demo photos, and stores in each Qdrant mode."""

from __future__ import annotations

import os

# Tests never reach AWS or a Qdrant server unless asked to, and never trace to X-Ray.
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "VisualSearchTests")
os.environ.setdefault("QDRANT_PATH", ":memory:")
# One BLAS thread: the projection fits (eigh of 1280x1280) run 5-7x slower, not faster, with two
# threads on a busy 2-core machine.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import io
import uuid
from pathlib import Path

import pytest
from PIL import Image

from visual_search.config import StoreSettings, get_settings
from visual_search.dev.folders import DEMO_CATALOG, scan
from visual_search.model import Embedder
from visual_search.store import CatalogStore, open_backend

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The real shipped ONNX model, loaded once for the whole run."""
    from visual_search.model import get_embedder

    get_settings.cache_clear()
    return get_embedder()


@pytest.fixture(scope="session")
def demo_images():
    return scan(DEMO_CATALOG)


@pytest.fixture(scope="session")
def qdrant_shim():
    from tests.support.qdrant_rest_shim import QdrantRestShim

    shim = QdrantRestShim()
    shim.start()
    yield shim
    shim.stop()


@pytest.fixture(params=["edge", "rest"])
def store_settings(request) -> StoreSettings:
    """Store settings for a fresh collection: the embedded engine (qdrant-edge, in a temporary
    folder), and over qdrant-client's REST path (against a real server when QDRANT_URL is set,
    else the test shim in front of qdrant-client's local mode)."""
    collection = f"test-{uuid.uuid4().hex[:8]}"
    if request.param == "edge":
        return StoreSettings(path=":memory:", collection=collection)
    url = os.environ.get("QDRANT_URL") or request.getfixturevalue("qdrant_shim").url
    return StoreSettings(
        url=url, api_key=os.environ.get("QDRANT_API_KEY"), collection=collection, timeout_s=5
    )


@pytest.fixture
def make_store(store_settings, embedder):
    """Opens stores on one shared backend, so several stores can see the same collections."""
    backend = open_backend(store_settings)
    opened = []

    def factory(
        model_id: str | None = None,
        dim: int | None = None,
        rerank_model_id=None,
        rerank_dim=None,
        **overrides,
    ) -> CatalogStore:
        settings = StoreSettings(**{**store_settings.__dict__, **overrides})
        store = CatalogStore(
            backend,
            settings,
            model_id or embedder.model_id,
            dim or embedder.dim,
            rerank_model_id=rerank_model_id,
            rerank_dim=rerank_dim,
        )
        opened.append(store)
        return store

    yield factory
    for store in opened:
        physical = store.physical_collection()
        if physical:
            store.drop_collection(physical)
    backend.close()


def jpeg_bytes(image: Image.Image, quality: int = 90, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality, **kwargs)
    return buffer.getvalue()


def png_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **kwargs)
    return buffer.getvalue()


# The quick loop is `scripts/test.sh -m "not slow"`: these start servers, browsers, SAM builds,
# fine-tunes, or run for a fixed long time. The README's test command still runs everything.
SLOW_FOLDERS = {"e2e", "deploy", "training"}
SLOW_FILES = {"test_soak.py", "test_load.py", "test_crash.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = Path(str(item.fspath))
        if SLOW_FOLDERS & set(path.parts) or path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)
