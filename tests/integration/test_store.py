"""The Qdrant store, embedded in memory and over qdrant-client's REST path, with real embeddings
of real product photos."""

from __future__ import annotations

import numpy as np
import pytest

from visual_search.catalog import ImageSource, build_payload
from visual_search.errors import ModelMismatchError, NotFoundError
from visual_search.store import ImagePoint, Query, point_id

BUCKET = "products"


@pytest.fixture(scope="module")
def demo_points(embedder, demo_images):
    """The 60 demo photos, embedded once, as points with their products.csv metadata."""
    vectors = embedder.embed_many([img.path.read_bytes() for img in demo_images])
    points = []
    for img, vector in zip(demo_images, vectors):
        source = ImageSource(BUCKET, img.key, img.path.read_bytes(), img.metadata)
        points.append(ImagePoint(BUCKET, img.key, vector, build_payload(source, embedder.model_id)))
    return points


@pytest.fixture
def store(make_store, demo_points):
    store = make_store()
    store.upsert(demo_points)
    return store


def query_vector(demo_points, index=0):
    return demo_points[index].vector


def test_point_ids_are_deterministic():
    assert point_id("b", "k/1.jpg") == point_id("b", "k/1.jpg") != point_id("b", "k/2.jpg")
    assert point_id("b1", "k") != point_id("b2", "k")


def test_collection_records_the_model_and_refuses_another(make_store, demo_points):
    store = make_store()
    store.upsert(demo_points[:2])
    assert store.collection_metadata()["model_id"] == store.model_id
    other = make_store(model_id="clip-vit-b32")
    with pytest.raises(ModelMismatchError) as err:
        other.upsert(demo_points[:1])
    assert "clip-vit-b32" in str(err.value) and store.model_id in str(err.value)
    with pytest.raises(ModelMismatchError):
        make_store(model_id="clip-vit-b32").search(demo_points[0].vector, Query())


def test_upsert_is_idempotent_and_replaces(store, demo_points):
    assert store.count() == 60
    store.upsert(demo_points[:10])
    assert store.count() == 60
    changed = ImagePoint(
        BUCKET, demo_points[0].key, demo_points[0].vector, {**demo_points[0].payload, "category": "Replaced"}
    )
    store.upsert([changed])
    assert store.count() == 60
    assert store.get_images([(BUCKET, changed.key)])[(BUCKET, changed.key)]["category"] == "Replaced"


def test_delete_by_image_and_by_product(store, demo_points):
    store.delete_images([(BUCKET, demo_points[0].key), (BUCKET, "never/indexed.jpg")])
    assert store.count() == 59
    assert store.get_images([(BUCKET, demo_points[0].key)]) == {}
    product = demo_points[10].payload["product_id"]
    store.delete_product(product)
    assert store.count({"product_id": product}) == 0
    assert store.count() == 59 - sum(1 for p in demo_points[1:] if p.payload["product_id"] == product)


def test_nearest_image_is_itself(store, demo_points):
    hits = store.search(query_vector(demo_points, 7), Query(top_k=3, group_by_product=False))
    assert hits[0].payload["key"] == demo_points[7].key
    assert hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_grouping_gives_one_result_per_product(store, demo_points):
    hits = store.search(query_vector(demo_points), Query(top_k=10))
    products = [h.payload["product_id"] for h in hits]
    assert len(products) == len(set(products)) == 10
    ungrouped = store.search(query_vector(demo_points), Query(top_k=10, group_by_product=False))
    assert len({h.payload["product_id"] for h in ungrouped}) < 10
    # each group's hit is that product's best image
    best = {}
    for h in store.search(query_vector(demo_points), Query(top_k=60, group_by_product=False)):
        best.setdefault(h.payload["product_id"], h.score)
    for h in hits:
        assert h.score == pytest.approx(best[h.payload["product_id"]], abs=1e-5)


@pytest.mark.parametrize("group", [True, False])
def test_pagination_has_no_duplicates_or_gaps(store, demo_points, group):
    vector = query_vector(demo_points, 3)
    everything = store.search(vector, Query(top_k=60, group_by_product=group))
    pages = []
    for offset in range(0, len(everything), 4):
        pages += store.search(vector, Query(top_k=4, offset=offset, group_by_product=group))
    assert [h.id for h in pages] == [h.id for h in everything]
    assert len(everything) == (10 if group else 60)


def test_deep_grouped_pages_of_products_with_many_images(make_store, monkeypatch):
    """Past the images one over-fetch may take, pages come from Qdrant's own grouping: still
    every product once, in score order, with nothing skipped."""
    import visual_search.store.queries as store_module

    rng = np.random.default_rng(7)
    store = make_store(model_id="synthetic", dim=16)
    points = []
    for product in range(150):
        centre = rng.normal(size=16)
        for image in range(6):
            vector = (centre + 0.3 * rng.normal(size=16)).astype(np.float32)
            vector /= np.linalg.norm(vector)
            points.append(
                ImagePoint(
                    BUCKET,
                    f"p{product}/{image}.jpg",
                    vector,
                    {"product_id": f"p{product}", "bucket": BUCKET, "key": f"p{product}/{image}.jpg"},
                )
            )
    store.upsert(points)
    query = rng.normal(size=16).astype(np.float32)
    query /= np.linalg.norm(query)
    best: dict[str, float] = {}
    for point in points:
        best[point.payload["product_id"]] = max(
            best.get(point.payload["product_id"], -2.0), float(point.vector @ query)
        )
    truth = sorted(best, key=lambda p: -best[p])
    monkeypatch.setattr(store_module, "MAX_GROUP_FETCH", 256)  # 150 x 6 images do not fit
    pages = []
    for offset in range(0, 150, 20):
        hits = store.search(query, Query(top_k=20, offset=offset))
        pages += [h.payload["product_id"] for h in hits]
    assert pages == truth


def test_facets_count_images_per_category_and_brand(store, demo_points):
    facets = store.facets()
    expected: dict[str, dict[str, int]] = {"category": {}, "brand": {}}
    for point in demo_points:
        for name in expected:
            value = point.payload[name]
            expected[name][value] = expected[name].get(value, 0) + 1
    for name in expected:
        assert {f["value"]: f["count"] for f in facets[name]} == expected[name]


def test_score_threshold(store, demo_points):
    hits = store.search(
        query_vector(demo_points), Query(top_k=60, group_by_product=False, score_threshold=0.8)
    )
    assert hits and all(h.score >= 0.8 for h in hits)
    assert len(hits) < 60


@pytest.mark.parametrize(
    "filters",
    [
        {"category": "Milk"},
        {"category": ["Juice", "Yoghurt"]},
        {"brand": "Arla"},
        {"product_id": ["Oatly-Oat-Milk", "Bravo-Apple-Juice"]},
        {"price": {"gte": 2.0, "lte": 2.5}},
        {"price": {"lt": 1.6}},
        {"category": "Milk", "price": {"gte": 1.6}},
    ],
)
def test_filters_never_leak(store, demo_points, filters):
    def matches(payload):
        for name, want in filters.items():
            have = payload.get(name)
            if isinstance(want, dict):
                if have is None or not all(
                    {"gt": have > v, "gte": have >= v, "lt": have < v, "lte": have <= v}[op]
                    for op, v in want.items()
                ):
                    return False
            elif isinstance(want, list):
                if have not in want:
                    return False
            elif have != want:
                return False
        return True

    expected = {p.payload["product_id"] for p in demo_points if matches(p.payload)}
    assert expected, "the filter should match something"
    hits = store.search(query_vector(demo_points), Query(top_k=60, filters=filters))
    assert {h.payload["product_id"] for h in hits} == expected


def test_filter_on_other_metadata(make_store, embedder, demo_points):
    store = make_store()
    tagged = [
        ImagePoint(
            p.bucket, p.key, p.vector, {**p.payload, "metadata": {"colour": "red" if i % 2 else "blue"}}
        )
        for i, p in enumerate(demo_points[:20])
    ]
    store.upsert(tagged)
    hits = store.search(tagged[0].vector, Query(top_k=20, group_by_product=False, filters={"colour": "red"}))
    assert len(hits) == 10 and all(h.payload["metadata"]["colour"] == "red" for h in hits)


def test_similar_products_excludes_itself(store, demo_points):
    product = demo_points[0].payload["product_id"]
    hits = store.similar(product, Query(top_k=5))
    assert len(hits) == 5 and product not in {h.payload["product_id"] for h in hits}
    assert len({h.payload["product_id"] for h in hits}) == 5
    with pytest.raises(NotFoundError):
        store.similar("no-such-product", Query())


def test_vector_of_the_wrong_size_is_refused(make_store, demo_points):
    store = make_store()
    with pytest.raises(ValueError, match="expects"):
        store.upsert([ImagePoint(BUCKET, "x.jpg", np.zeros(7, np.float32), {})])
