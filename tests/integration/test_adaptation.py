"""Catalogue adaptation in the service: `adapt` fits a projection on the stored vectors, moves the
catalogue into a new collection with an `adapted` vector per point, and search, similar and
ingest follow it; stale instances are refused, small catalogues stay raw.

Real model, real qdrant-client (embedded in memory), real photos (tests/data/grocery-subset,
copied from grocery-dev: gallery = its train_ photos, held-back queries = its test_ photos).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.support.apigw import rest_event
from visual_search.adaptation.adapter import Adapter, RawCollections
from visual_search.adaptation.spaces import ADAPTED
from visual_search.api import SearchApi
from visual_search.catalog import Catalog, ImageSource
from visual_search.config import AdaptSettings, StoreSettings, load_settings
from visual_search.dev.folders import scan
from visual_search.dev.lambdas import LambdaContext
from visual_search.errors import StaleProjectionError, StoreUnavailableError
from visual_search.store import VECTOR, CatalogStore, ImagePoint, Query

GROCERY = Path(__file__).resolve().parents[1] / "data" / "grocery-subset"
SETTINGS = AdaptSettings(batch=32, grace_s=0.0, dims=(None,))  # one size: keeps the test short


def open_catalog(embedder, check_s: float = 0.0, dim: int | None = None) -> Catalog:
    """A catalogue on a fresh in-memory collection; ``dim`` smaller than the model's for tests
    that only store synthetic vectors (a fit in 64-d takes milliseconds, in 1280-d seconds)."""
    settings = StoreSettings(path=":memory:", collection=f"adapt-{uuid.uuid4().hex[:8]}")
    store = CatalogStore.open(  # the configured engine: qdrant-edge in a temporary folder
        settings,
        embedder.model_id,
        dim or embedder.dim,
        model_fingerprint=embedder.fingerprint,
    )
    return Catalog(embedder, store, projection_check_s=check_s)


def another_instance(catalog: Catalog, check_s: float) -> Catalog:
    """A second function instance on the same Qdrant (same client), with its own space cache."""
    return Catalog(
        catalog.embedder, catalog.store.for_collection(catalog.store.collection), projection_check_s=check_s
    )


def synthetic_points(
    products: int, per_product: int, dim: int, seed: int, prefix: str = "p"
) -> list[ImagePoint]:
    """Vectors whose photos of one product differ mostly along a few shared nuisance directions
    (as lighting and shelf do): raw cosine confuses products, whitening separates them."""
    rng = np.random.default_rng(seed)
    nuisance = rng.normal(size=(12, dim))
    points = []
    for p in range(products):
        centre = rng.normal(size=dim) * 0.25
        for i in range(per_product):
            v = centre + rng.normal(size=12) @ nuisance * 0.35 + rng.normal(size=dim) * 0.05
            v = (v / np.linalg.norm(v)).astype(np.float32)
            key = f"catalog/{prefix}{p}/{i}.jpg"
            payload = {
                "product_id": f"{prefix}{p}",
                "bucket": "b",
                "key": key,
                "indexed_at": "2026-01-01T00:00:00+00:00",
            }
            points.append(ImagePoint("b", key, v, payload))
    return points


def all_points(catalog: Catalog) -> list:
    space = catalog.spaces.reload()
    names = [VECTOR, ADAPTED] if space.projection is not None else [VECTOR]  # engines refuse unknown names
    return list(RawCollections(catalog.store).iter_records(space.collection, vectors=names))


def metadata_of(catalog: Catalog, collection: str) -> dict:
    return RawCollections(catalog.store).collection_metadata(collection)


def top_product(catalog: Catalog, data: bytes) -> str:
    hits = catalog.search_image(data, Query(top_k=1)).hits
    return str(hits[0].payload["product_id"]) if hits else ""


def test_adapt_raises_recall_on_held_back_photos(embedder):
    catalog = open_catalog(embedder)
    images = scan(GROCERY)
    gallery = [img for img in images if img.path.name.startswith("train_")]
    queries = [img for img in images if img.path.name.startswith("test_")]
    assert len(gallery) == 60 and len(queries) == 30
    sources = [ImageSource("b", f"catalog/{img.key}", img.path.read_bytes(), img.metadata) for img in gallery]
    for start in range(0, len(sources), 16):
        assert all(r.ok for r in catalog.index(sources[start : start + 16]).results)

    def recall() -> float:
        return float(
            np.mean([top_product(catalog, q.path.read_bytes()) == q.path.parent.name for q in queries])
        )

    before = recall()
    assert catalog.spaces.current().projection is None
    result = Adapter(catalog, SETTINGS, log=lambda m: None).run()
    assert result.status == "adapted", result.reason
    assert result.cv_recall_adapted > result.cv_recall_raw
    space = catalog.spaces.current()
    assert space.projection is not None and space.projection_id == result.projection_id
    meta = metadata_of(catalog, space.collection)
    assert meta["projection_id"] == result.projection_id
    after = recall()
    assert after > before, (before, after)
    # every point kept its raw vector and has the projection of it
    stored = all_points(catalog)
    assert len(stored) == 60
    raw = np.asarray([r.vectors[VECTOR] for r in stored], np.float32)
    adapted = np.asarray([r.vectors[ADAPTED] for r in stored], np.float32)
    assert np.allclose(adapted, space.projection.apply(raw), atol=1e-4)
    # similar searches the adapted space too, and a refit of the same catalogue changes nothing
    similar = catalog.similar(gallery[0].path.parent.name, Query(top_k=3)).hits
    assert similar and gallery[0].path.parent.name not in {h.payload["product_id"] for h in similar}
    again = Adapter(catalog, SETTINGS, log=lambda m: None).run()
    assert again.status == "unchanged" and catalog.spaces.current().collection == space.collection
    # /health reports the projection
    health = SearchApi(catalog, None, load_settings()).resolve(rest_event("GET", "/health"), LambdaContext())
    projection = json.loads(health["body"])["projection"]
    assert projection["id"] == result.projection_id and projection["photos"] == 60
    assert projection["products"] == 10 and projection["fitted_at"]
    assert projection["cv_gain"] == pytest.approx(result.cv_recall_adapted - result.cv_recall_raw, abs=1e-3)
    print(f"grocery-subset recall@1 raw {before:.3f} -> adapted {after:.3f}; {result.reason}")


def test_a_small_catalogue_keeps_the_raw_space(embedder):
    catalog = open_catalog(embedder, dim=64)
    catalog.store.upsert(synthetic_points(3, 2, 64, seed=1))
    before = catalog.spaces.current().collection
    dry = Adapter(catalog, SETTINGS, log=lambda m: None).run(dry_run=True)
    assert dry.status == "dry-run" and dry.projection_id is None
    result = Adapter(catalog, SETTINGS, log=lambda m: None).run()
    assert result.status == "raw" and "too small" in result.reason
    space = catalog.spaces.reload()
    assert space.collection == before and space.projection is None
    assert "projection_id" not in metadata_of(catalog, space.collection)
    assert all(ADAPTED not in r.vectors for r in all_points(catalog))


def test_ingest_writes_both_vectors_with_the_active_projection(embedder, demo_images):
    catalog = open_catalog(embedder)
    catalog.store.upsert(synthetic_points(8, 6, embedder.dim, seed=2))
    assert Adapter(catalog, SETTINGS, log=lambda m: None).run().status == "adapted"
    img = demo_images[0]
    catalog.index([ImageSource("b", "catalog/new/1.jpg", img.path.read_bytes(), img.metadata)])
    space = catalog.spaces.current()
    new = [r for r in all_points(catalog) if r.payload["key"] == "catalog/new/1.jpg"]
    assert len(new) == 1
    raw = np.asarray(new[0].vectors[VECTOR], np.float32)
    assert np.allclose(new[0].vectors[ADAPTED], space.projection.apply(raw), atol=1e-4)


def test_a_stale_projection_is_refused_and_retried_after_a_reload(embedder, demo_images):
    catalog = open_catalog(embedder)
    catalog.store.upsert(synthetic_points(8, 6, embedder.dim, seed=3))
    assert Adapter(catalog, SETTINGS, log=lambda m: None).run().status == "adapted"
    stale = another_instance(catalog, check_s=3600)  # a warm function that will not look again soon
    first = stale.spaces.current()
    catalog.store.upsert(synthetic_points(8, 6, embedder.dim, seed=4, prefix="q"))  # the catalogue doubles
    img = demo_images[0]
    source = ImageSource("b", "catalog/late/1.jpg", img.path.read_bytes(), img.metadata)
    refused: list[Exception] = []

    def write_during_the_grace(seconds: float) -> None:
        # the alias has switched, the old collection is still there: a stale write lands in it
        try:
            stale.index([source])
        except StaleProjectionError as exc:
            refused.append(exc)

    adapter = Adapter(
        catalog, replace(SETTINGS, grace_s=1.0), log=lambda m: None, sleep=write_during_the_grace
    )
    result = adapter.run()
    assert result.status == "adapted" and result.projection_id != first.projection_id
    assert len(refused) == 1 and "retry" in str(refused[0])
    assert stale.spaces.current().projection_id == result.projection_id  # reloaded with the refusal
    assert not [r for r in all_points(catalog) if r.payload["key"] == source.key]  # nothing mixed
    stale.index([source])  # the retry writes into the new space with the new projection
    (point,) = [r for r in all_points(catalog) if r.payload["key"] == source.key]
    projection = catalog.spaces.current().projection
    assert np.allclose(point.vectors[ADAPTED], projection.apply(np.asarray(point.vectors[VECTOR])), atol=1e-4)
    # an instance whose collection was dropped meanwhile is refused too (transient), then follows
    catalog.store.upsert(synthetic_points(12, 6, embedder.dim, seed=5, prefix="r"))
    assert Adapter(catalog, SETTINGS, log=lambda m: None).run().status == "adapted"
    with pytest.raises(StoreUnavailableError):
        stale.index([replace(source, key="catalog/late/2.jpg")])
    stale.index([replace(source, key="catalog/late/2.jpg")])
    assert stale.spaces.current().projection_id == catalog.spaces.current().projection_id


def test_adapt_during_concurrent_ingest_and_search(embedder, demo_images):
    catalog = open_catalog(embedder)
    catalog.store.upsert(synthetic_points(20, 10, embedder.dim, seed=6))
    writer = another_instance(catalog, check_s=3600)
    reader = another_instance(catalog, check_s=3600)
    photos = [img.path.read_bytes() for img in demo_images[:6]]
    stop = threading.Event()
    written: list[str] = []
    failures: list[str] = []
    queries = [0]

    def ingest() -> None:
        for n in range(40):  # bounded
            if stop.is_set():
                return
            key = f"catalog/live/{n}.jpg"
            for _attempt in range(5):  # as SQS redelivers a transient failure
                try:
                    writer.index(
                        [ImageSource("b", key, photos[n % len(photos)], {"product-id": f"live{n % 3}"})]
                    )
                    written.append(key)
                    break
                except StoreUnavailableError:
                    time.sleep(0.01)
            else:
                failures.append(f"{key} never written")

    def search() -> None:
        while not stop.is_set() and queries[0] < 400:  # bounded
            try:
                reader.search_image(photos[queries[0] % len(photos)], Query(top_k=3))
                reader.similar("p1", Query(top_k=3))
            except Exception as exc:
                failures.append(f"query failed: {type(exc).__name__}: {exc}")
            queries[0] += 1

    threads = [threading.Thread(target=ingest), threading.Thread(target=search)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.2)
        result = Adapter(catalog, replace(SETTINGS, batch=16, grace_s=0.3), log=lambda m: None).run()
    finally:
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures[:5]
    assert result.status == "adapted", result.reason
    assert queries[0] > 0 and written
    points = all_points(catalog)
    missing = [r.payload.get("key") for r in points if ADAPTED not in r.vectors]
    assert not missing, f"{len(missing)} points without their adapted vector: {missing[:5]}"
    keys = {r.payload["key"] for r in points}
    assert set(written) <= keys and len(points) == 200 + len(set(written))
    projection = catalog.spaces.current().projection
    raw = np.asarray([r.vectors[VECTOR] for r in points], np.float32)
    assert np.allclose(np.asarray([r.vectors[ADAPTED] for r in points]), projection.apply(raw), atol=1e-4)


def test_the_adapt_command_prints_the_choice_and_info_reports_it(monkeypatch, embedder, capsys):
    from visual_search.catalog import get_catalog
    from visual_search.config import get_settings
    from visual_search.dev.cli import main

    monkeypatch.setenv("QDRANT_PATH", ":memory:")
    monkeypatch.delenv("QDRANT_URL", raising=False)
    monkeypatch.setenv("ADAPT_DIMS", "full")
    get_settings.cache_clear()
    get_catalog.cache_clear()
    try:
        assert main(["ingest", str(GROCERY), "--quiet"]) == 0
        capsys.readouterr()
        assert main(["adapt", "--dry-run", "--json"]) == 0
        dry = json.loads(capsys.readouterr().out)
        assert (
            dry["status"] == "dry-run"
            and dry["projection_id"]
            and dry["cv_recall_adapted"] > dry["cv_recall_raw"]
        )
        assert get_catalog().projection is None  # nothing written
        assert main(["adapt"]) == 0
        out, err = capsys.readouterr()
        assert "writing adapted vectors" in err and "90/90" in err  # the copy's progress, with its total
        assert "cross-validated recall@1: raw" in out and "chosen shrinkage" in out and "adapted:" in out
        assert main(["info"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert (
            info["projection"]["id"] == get_catalog().projection["id"] and info["projection"]["photos"] == 90
        )
    finally:
        get_catalog.cache_clear()
        get_settings.cache_clear()
