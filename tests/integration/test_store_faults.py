"""An unreachable or failing Qdrant is a StoreUnavailableError (the API's 503), never a hang."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from visual_search.config import StoreSettings
from visual_search.errors import StoreUnavailableError
from visual_search.store import CatalogStore, Query


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_nothing_listening_is_unavailable():
    settings = StoreSettings(url=f"http://127.0.0.1:{free_port()}", timeout_s=1)
    store = CatalogStore.open(settings, "m", 4)
    assert store.ping() is False
    with pytest.raises(StoreUnavailableError, match="unreachable"):
        store.search(np.ones(4, np.float32), Query())


def test_server_errors_are_unavailable(qdrant_shim):
    store = CatalogStore.open(StoreSettings(url=qdrant_shim.url, collection="faults", timeout_s=2), "m", 4)
    store.ensure_collection()
    qdrant_shim.fail_with = 503
    try:
        with pytest.raises(StoreUnavailableError, match="503"):
            store.search(np.ones(4, np.float32), Query())
    finally:
        qdrant_shim.fail_with = None
    assert store.search(np.ones(4, np.float32), Query()) == []


def test_slow_server_times_out(qdrant_shim):
    store = CatalogStore.open(StoreSettings(url=qdrant_shim.url, collection="slow", timeout_s=1), "m", 4)
    store.ensure_collection()
    qdrant_shim.delay_seconds = 3
    started = time.perf_counter()
    try:
        with pytest.raises(StoreUnavailableError):
            store.count()
    finally:
        qdrant_shim.delay_seconds = 0
    assert time.perf_counter() - started < 2.9


@pytest.mark.parametrize("mode", ["rest", "edge"])
def test_a_collection_deleted_underneath_is_recreated(request, mode):
    settings = (
        StoreSettings(path=":memory:", collection="vanishing")
        if mode == "edge"
        else StoreSettings(
            url=request.getfixturevalue("qdrant_shim").url, collection="vanishing", timeout_s=2
        )
    )
    store = CatalogStore.open(settings, "m", 4)
    assert store.count() == 0
    store.drop_collection(store.physical_collection())
    with pytest.raises(StoreUnavailableError, match="re-created"):
        store.count()
    assert store.count() == 0  # the next request finds it missing and creates it again
    store.drop_collection(store.physical_collection())


def test_many_instances_using_a_new_collection_at_once(qdrant_shim):
    """A fresh deploy: several function instances find no collection and create it together;
    the ones that lose the race use the winner's collection instead of failing."""
    import threading
    import uuid

    from visual_search.store import ImagePoint

    name = f"race-{uuid.uuid4().hex[:6]}"
    stores = [
        CatalogStore.open(StoreSettings(url=qdrant_shim.url, collection=name, timeout_s=5), "m", 4)
        for _ in range(8)
    ]
    start, errors = threading.Barrier(len(stores)), []

    def first_write(store, n):
        start.wait()
        try:
            store.upsert([ImagePoint("b", f"k{n}", np.ones(4, np.float32), {"product_id": "p"})])
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=first_write, args=(s, n)) for n, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and stores[0].count() == len(stores)
    stores[0].drop_collection(stores[0].physical_collection())


def test_a_locked_embedded_folder_is_a_clear_error(tmp_path):
    from visual_search.store import open_backend

    holder = open_backend(StoreSettings(path=str(tmp_path / "qdrant")))
    try:
        with pytest.raises(StoreUnavailableError, match="in use by another process"):
            open_backend(StoreSettings(path=str(tmp_path / "qdrant")))
    finally:
        holder.close()
