"""The store takes only a backend, and its admin API works on collections by name."""

from __future__ import annotations

import numpy as np
import pytest
from qdrant_client import QdrantClient

from visual_search.config import StoreSettings
from visual_search.store import CatalogStore, StoreAdmin, StoredPoint, VectorSpec, open_client_backend


def test_a_raw_client_is_refused():
    settings = StoreSettings(path=":memory:", collection="raw")
    with pytest.raises(TypeError, match="takes a backend"):
        CatalogStore(QdrantClient(":memory:"), settings, "m", 4)  # type: ignore[arg-type]


def test_the_admin_api_reads_and_writes_a_collection_by_name():
    settings = StoreSettings(path=":memory:", collection="admin")
    store = CatalogStore(open_client_backend(settings), settings, "m", 4)
    admin = store.admin()
    assert isinstance(admin, StoreAdmin) and not admin.collection_exists("side")
    admin.create_collection("side", {"part": VectorSpec(1, "dot")}, {"holds": "things"})
    admin.upsert(
        "side",
        [
            StoredPoint(f"00000000-0000-0000-0000-00000000000{i}", {"part": np.ones(1, np.float32)}, {"n": i})
            for i in range(3)
        ],
    )
    admin.update_metadata("side", {"more": 1})
    assert admin.collection_metadata("side") == {"holds": "things", "more": 1}
    records, offset = admin.scroll("side", 10, where=("n", 1))
    assert [r.payload["n"] for r in records] == [1] and offset is None
    admin.delete_where("side", "n", 1)
    admin.delete_ids("side", ["00000000-0000-0000-0000-000000000000"])
    assert [r.payload["n"] for r in admin.retrieve("side", ["00000000-0000-0000-0000-000000000002"])] == [2]
    assert admin.collection_info("side").points == 1
    store.close()
