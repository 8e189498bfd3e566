"""qdrant-client's REST code path against the in-process Qdrant REST shim."""

from __future__ import annotations

import threading
import uuid
import warnings
from collections.abc import Iterator

import httpx
import pytest
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from tests.support.qdrant_rest_shim import QdrantRestShim

DIM = 8
CATEGORIES = ["shoes", "bags", "shoes", "hats", "bags", "shoes"]
IDS = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"product-{i}")) for i in range(len(CATEGORIES))]


def one_hot(i: int) -> list[float]:
    return [1.0 if j == i else 0.0 for j in range(DIM)]


def by_category(value: str) -> models.Filter:
    return models.Filter(must=[models.FieldCondition(key="category", match=models.MatchValue(value=value))])


def wait_for_version_check() -> None:
    """Join the client's background compatibility check (thread named after its target)."""
    for thread in threading.enumerate():
        if "_check_compatibility" in thread.name:
            thread.join(timeout=5)


@pytest.fixture
def shim() -> Iterator[QdrantRestShim]:
    with QdrantRestShim() as running:
        yield running


@pytest.fixture
def client(shim: QdrantRestShim) -> Iterator[QdrantClient]:
    qdrant = QdrantClient(url=shim.url, prefer_grpc=False)
    yield qdrant
    wait_for_version_check()
    qdrant.close()


def create_products(client: QdrantClient, name: str = "products", *, seed: bool = True) -> None:
    assert client.create_collection(
        name,
        vectors_config={"image": models.VectorParams(size=DIM, distance=models.Distance.COSINE)},
        hnsw_config=models.HnswConfigDiff(m=16, ef_construct=100),
        quantization_config=models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, always_ram=True)
        ),
        metadata={"embedding_model": "clip-vit-b32", "schema_version": 2},
    )
    if seed:
        result = client.upsert(
            name,
            points=[
                models.PointStruct(
                    id=point_id,
                    vector={"image": one_hot(i)},
                    payload={"category": category, "sku": f"SKU-{i}", "price": 10.0 * (i + 1)},
                )
                for i, (point_id, category) in enumerate(zip(IDS, CATEGORIES))
            ],
            wait=True,
        )
        assert result.status == models.UpdateStatus.COMPLETED


def test_version_check_passes_without_warning(shim: QdrantRestShim) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        client = QdrantClient(url=shim.url, prefer_grpc=False)
        assert client.get_collections().collections == []
        wait_for_version_check()
        client.close()
    assert [str(w.message) for w in caught] == []
    assert httpx.get(shim.url).json()["version"]
    for probe in ("/healthz", "/livez", "/readyz"):
        assert httpx.get(shim.url + probe).status_code == 200


def test_collection_lifecycle_and_metadata(client: QdrantClient) -> None:
    create_products(client, seed=False)
    assert client.collection_exists("products")
    assert not client.collection_exists("missing")
    info = client.get_collection("products")
    assert info.config.metadata == {"embedding_model": "clip-vit-b32", "schema_version": 2}
    assert info.config.params.vectors["image"].size == DIM
    assert client.update_collection("products", metadata={"schema_version": 3})
    assert client.get_collection("products").config.metadata["schema_version"] == 3
    result = client.create_payload_index("products", "category", models.PayloadSchemaType.KEYWORD)
    assert result.status == models.UpdateStatus.COMPLETED
    assert [c.name for c in client.get_collections().collections] == ["products"]
    assert client.delete_collection("products")
    assert not client.collection_exists("products")


def test_points_count_retrieve_scroll(client: QdrantClient) -> None:
    create_products(client)
    assert client.count("products").count == len(IDS)
    assert client.count("products", count_filter=by_category("shoes")).count == 3

    records = client.retrieve("products", ids=IDS[:2], with_vectors=True)
    assert {r.id for r in records} == set(IDS[:2])
    assert all(len(r.vector["image"]) == DIM for r in records)
    assert {r.payload["sku"] for r in records} == {"SKU-0", "SKU-1"}

    points, next_offset = client.scroll("products", scroll_filter=by_category("bags"), limit=10)
    assert sorted(p.payload["sku"] for p in points) == ["SKU-1", "SKU-4"]
    assert next_offset is None
    first_page, next_offset = client.scroll("products", limit=4)
    assert len(first_page) == 4 and next_offset is not None


def test_query_points_filter_threshold_and_paging(client: QdrantClient) -> None:
    create_products(client)
    hits = client.query_points("products", query=one_hot(0), using="image", limit=3, with_payload=True).points
    assert hits[0].id == IDS[0] and hits[0].score == pytest.approx(1.0)
    assert len(hits) == 3

    filtered = client.query_points(
        "products", query=one_hot(1), using="image", query_filter=by_category("bags"), with_payload=True
    ).points
    assert {h.payload["category"] for h in filtered} == {"bags"}
    assert filtered[0].id == IDS[1]

    above = client.query_points("products", query=one_hot(2), using="image", score_threshold=0.5).points
    assert [h.id for h in above] == [IDS[2]]

    page = client.query_points("products", query=one_hot(0), using="image", limit=2, offset=1).points
    assert len(page) == 2 and IDS[0] not in {h.id for h in page}


def test_query_groups_and_batch(client: QdrantClient) -> None:
    create_products(client)
    groups = client.query_points_groups(
        "products", group_by="category", query=one_hot(0), using="image", limit=3, group_size=2
    ).groups
    assert {g.id for g in groups} == {"shoes", "bags", "hats"}
    assert all(len(g.hits) <= 2 for g in groups)

    responses = client.query_batch_points(
        "products",
        requests=[
            models.QueryRequest(query=one_hot(0), using="image", limit=1),
            models.QueryRequest(query=one_hot(3), using="image", limit=1, with_payload=True),
        ],
    )
    assert [r.points[0].id for r in responses] == [IDS[0], IDS[3]]
    assert responses[1].points[0].payload["category"] == "hats"


def test_payload_and_vector_updates(client: QdrantClient) -> None:
    create_products(client)
    client.set_payload("products", payload={"on_sale": True}, points=[IDS[0]])
    client.delete_payload("products", keys=["price"], points=by_category("shoes"))
    client.update_vectors("products", points=[models.PointVectors(id=IDS[0], vector={"image": one_hot(7)})])
    (record,) = client.retrieve("products", ids=[IDS[0]], with_vectors=True)
    assert record.payload == {"category": "shoes", "sku": "SKU-0", "on_sale": True}
    assert record.vector["image"] == pytest.approx(one_hot(7))


def test_delete_by_ids_and_by_filter(client: QdrantClient) -> None:
    create_products(client)
    client.delete("products", points_selector=models.PointIdsList(points=IDS[:1]), wait=True)
    assert client.count("products").count == len(IDS) - 1
    client.delete("products", points_selector=models.FilterSelector(filter=by_category("bags")), wait=True)
    assert client.count("products").count == len(IDS) - 3
    assert client.count("products", count_filter=by_category("bags")).count == 0


def test_aliases_route_queries_and_switch(client: QdrantClient) -> None:
    create_products(client, "products_v1")
    create_products(client, "products_v2", seed=False)
    client.upsert("products_v2", [models.PointStruct(id=IDS[5], vector={"image": one_hot(5)}, payload={})])
    client.update_collection_aliases(
        [
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name="products_v1", alias_name="products")
            )
        ]
    )
    assert [(a.alias_name, a.collection_name) for a in client.get_aliases().aliases] == [
        ("products", "products_v1")
    ]
    assert client.query_points("products", query=one_hot(1), using="image", limit=1).points[0].id == IDS[1]

    client.update_collection_aliases(
        [
            models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name="products")),
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name="products_v2", alias_name="products")
            ),
        ]
    )
    assert [a.alias_name for a in client.get_collection_aliases("products_v2").aliases] == ["products"]
    assert client.get_collection_aliases("products_v1").aliases == []
    assert client.count("products").count == 1
    assert client.query_points("products", query=one_hot(1), using="image", limit=5).points[0].id == IDS[5]


def test_missing_collection_is_404(client: QdrantClient) -> None:
    with pytest.raises(UnexpectedResponse) as excinfo:
        client.get_collection("missing")
    assert excinfo.value.status_code == 404
    assert "error" in excinfo.value.structured()["status"]
    with pytest.raises(UnexpectedResponse) as excinfo:
        client.query_points("missing", query=one_hot(0), using="image")
    assert excinfo.value.status_code == 404


def test_bad_request_is_400(client: QdrantClient) -> None:
    response = httpx.post(f"{client.init_options['url']}/collections/x/points/query", json={"nope": 1})
    assert response.status_code == 400
    assert "error" in response.json()["status"]


def test_fail_with_makes_client_raise(shim: QdrantRestShim, client: QdrantClient) -> None:
    wait_for_version_check()
    shim.fail_with = 503
    with pytest.raises(UnexpectedResponse) as excinfo:
        client.get_collections()
    assert excinfo.value.status_code == 503
    shim.fail_with = None
    assert client.get_collections().collections == []


def test_delay_exceeding_client_timeout_raises(shim: QdrantRestShim) -> None:
    client = QdrantClient(url=shim.url, prefer_grpc=False, timeout=1)
    wait_for_version_check()
    shim.delay_seconds = 1.3
    with pytest.raises(ResponseHandlingException) as excinfo:
        client.get_collections()
    assert isinstance(excinfo.value.source, httpx.TimeoutException)
    client.close()
