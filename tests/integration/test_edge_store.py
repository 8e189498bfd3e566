"""What the qdrant-edge adapter adds to the engine: collections, aliases and metadata in a
catalogue file, one process per folder, real sizes, migrating qdrant-client local-mode folders,
and grouping in rounds (the engine has no group query)."""

from __future__ import annotations

import json
import multiprocessing

import numpy as np
import pytest

from visual_search.config import StoreSettings
from visual_search.errors import StoreUnavailableError
from visual_search.store import CatalogStore, ImagePoint, Query, VectorSpec, open_backend, queries
from visual_search.store.edge_backend import CATALOGUE, EdgeBackend, LegacyFolderError
from visual_search.store.migrate import migrate_local_mode

BUCKET = "b"


def synthetic(n_products: int, per_product: int, dim: int = 16, seed: int = 3) -> list[ImagePoint]:
    rng = np.random.default_rng(seed)
    points = []
    for product in range(n_products):
        centre = rng.normal(size=dim)
        for image in range(per_product):
            vector = (centre + 0.3 * rng.normal(size=dim)).astype(np.float32)
            vector /= np.linalg.norm(vector)
            key = f"p{product}/{image}.jpg"
            points.append(
                ImagePoint(
                    BUCKET,
                    key,
                    vector,
                    {
                        "product_id": f"p{product}",
                        "bucket": BUCKET,
                        "key": key,
                        "category": f"c{product % 3}",
                    },
                )
            )
    return points


def folder_store(path, collection="edge", dim=16, **kwargs) -> CatalogStore:
    settings = StoreSettings(path=str(path), collection=collection)
    return CatalogStore(open_backend(settings), settings, "synthetic", dim, **kwargs)


def test_the_catalogue_survives_a_reopen(tmp_path):
    store = folder_store(tmp_path / "q")
    points = synthetic(5, 3)
    store.upsert(points)
    physical = store.physical_collection()
    store.close()
    catalogue = json.loads((tmp_path / "q" / CATALOGUE).read_text())
    assert catalogue["aliases"] == {"edge": physical}
    assert catalogue["collections"][physical]["metadata"]["model_id"] == "synthetic"
    again = folder_store(tmp_path / "q")
    assert again.count() == 15 and again.physical_collection() == physical
    hits = again.search(points[4].vector, Query(top_k=1, group_by_product=False))
    assert hits[0].payload["key"] == points[4].key
    again.close()


def _open_in_child(path, queue):
    try:
        folder_store(path).count()
        queue.put("opened")
    except StoreUnavailableError as exc:
        queue.put(str(exc))


def test_a_second_process_is_refused_with_a_clear_message(tmp_path):
    store = folder_store(tmp_path / "q")
    store.count()
    queue = multiprocessing.get_context("spawn").Queue()
    child = multiprocessing.get_context("spawn").Process(target=_open_in_child, args=(tmp_path / "q", queue))
    child.start()
    child.join(60)
    assert "in use by another process" in queue.get(timeout=5)
    store.close()


def test_sizes_are_real_bytes_not_the_sparse_wal(tmp_path):
    store = folder_store(tmp_path / "q")
    store.upsert(synthetic(4, 2))
    info = store.info()
    apparent = sum(f.stat().st_size for f in (tmp_path / "q").rglob("*") if f.is_file())
    assert 0 < info["disk_bytes"] < apparent / 4  # the WAL preallocates 32 MiB it does not use
    assert info["points"] == 8
    store.close()


def test_a_local_mode_folder_is_refused_then_migrated_with_every_point(tmp_path, monkeypatch):
    from qdrant_client import QdrantClient

    from visual_search.store.client_backend import ClientBackend
    from visual_search.store.connection import Connection

    folder = tmp_path / "q"
    settings = StoreSettings(path=str(folder), collection="edge")
    legacy = ClientBackend(Connection(QdrantClient(path=str(folder)), settings), settings)
    old = CatalogStore(legacy, settings, "synthetic", 16)
    points = synthetic(6, 2)
    old.upsert(points)
    old.close()
    with pytest.raises(LegacyFolderError, match="visual-search migrate-store"):
        open_backend(settings)
    result = migrate_local_mode(folder, settings, log=lambda m: None)
    assert sum(result["collections"].values()) == 12
    store = folder_store(folder)
    assert store.count() == 12
    stored = store.vectors_of([(BUCKET, points[5].key)])[(BUCKET, points[5].key)]
    assert np.allclose(stored, points[5].vector, atol=1e-6)
    assert store.search(points[5].vector, Query(top_k=1))[0].payload["key"] == points[5].key
    store.close()


def test_grouping_in_rounds_equals_exact_grouping(tmp_path, monkeypatch):
    """Past one over-fetch the engine cannot group: rounds that exclude the products found give
    every product once, in the order of its best image, with nothing skipped."""
    store = folder_store(tmp_path / "q")
    points = synthetic(150, 6)
    store.upsert(points)
    query = points[0].vector
    best: dict[str, float] = {}
    for p in points:
        pid = p.payload["product_id"]
        best[pid] = max(best.get(pid, -2.0), float(p.vector @ query))
    truth = sorted(best, key=lambda p: -best[p])
    monkeypatch.setattr(queries, "MAX_GROUP_FETCH", 128)
    monkeypatch.setattr(queries, "GROUP_ROUND", 8)
    pages = []
    for offset in range(0, 150, 25):
        pages += [h.payload["product_id"] for h in store.search(query, Query(top_k=25, offset=offset))]
    assert pages == truth
    filtered = store.search(query, Query(top_k=60, filters={"category": "c1"}))
    assert [h.payload["product_id"] for h in filtered] == [p for p in truth if int(p[1:]) % 3 == 1]
    store.close()


def test_optimize_builds_the_index_and_search_still_agrees(tmp_path):
    store = folder_store(tmp_path / "q")
    points = synthetic(300, 4)
    store.upsert(points)
    before = [h.id for h in store.search(points[7].vector, Query(top_k=10))]
    store.optimize()
    after = [h.id for h in store.search(points[7].vector, Query(top_k=10))]
    assert before == after
    store.close()


def test_filtered_searches_with_acorn_agree_with_plain_ones(tmp_path):
    """QDRANT_FILTERED_ACORN passes ACORN's parameters to the engine for filtered searches."""
    from dataclasses import replace

    plain = folder_store(tmp_path / "q")
    points = synthetic(300, 4)
    plain.upsert(points)
    plain.optimize()
    query = Query(top_k=10, filters={"category": "c2"})
    want = [h.id for h in plain.search(points[11].vector, query)]
    plain.close()
    settings = replace(StoreSettings(path=str(tmp_path / "q"), collection="edge"), filtered_acorn=True)
    acorn = CatalogStore(open_backend(settings), settings, "synthetic", 16)
    got = acorn.search(points[11].vector, query)
    assert [h.id for h in got] == want and {h.payload["category"] for h in got} == {"c2"}
    acorn.close()


@pytest.mark.parametrize("mode", ["edge", "rest"])
def test_a_new_named_vector_is_set_with_update_vectors_and_searched_with_using(request, mode, tmp_path):
    if mode == "edge":
        settings = StoreSettings(path=str(tmp_path / "q"), collection="named")
    else:
        settings = StoreSettings(
            url=request.getfixturevalue("qdrant_shim").url, collection="named", timeout_s=5
        )
    store = CatalogStore(
        open_backend(settings), settings, "synthetic", 16, vectors={"adapted": VectorSpec(8)}
    )
    points = synthetic(10, 2)
    store.upsert(points)  # the new vector is optional on upsert
    rng = np.random.default_rng(0)
    adapted = {p.id: (v := rng.normal(size=8).astype(np.float32)) / np.linalg.norm(v) for p in points}
    store.update_vectors("adapted", adapted)
    target = points[13]
    hits = store.search(adapted[target.id], Query(top_k=1, group_by_product=False, using="adapted"))
    assert hits[0].id == target.id
    with pytest.raises(ValueError, match="not finite"):
        store.update_vectors("adapted", {target.id: np.full(8, np.nan, np.float32)})
    with pytest.raises(ValueError, match="no vector named"):
        store.update_vectors("nope", {target.id: np.ones(8, np.float32)})
    store.update_metadata({"projection_id": "proj-1"})
    assert store.collection_metadata()["projection_id"] == "proj-1"
    assert store.collection_metadata()["model_id"] == "synthetic"
    store.drop_collection(store.physical_collection())
    store.close()


def test_the_memory_mode_leaves_no_folder_behind():
    settings = StoreSettings(path=":memory:", collection="tmp")
    backend = open_backend(settings)
    assert isinstance(backend, EdgeBackend)
    root = backend.root
    CatalogStore(backend, settings, "synthetic", 16).upsert(synthetic(1, 1))
    backend.close()
    assert not root.exists()
