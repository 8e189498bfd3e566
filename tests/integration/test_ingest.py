"""The ingest function end to end: moto S3, the real model, embedded Qdrant (and the REST path
for outages). Every case ends by checking the catalogue against the bucket."""

from __future__ import annotations

import itertools
import json
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote_plus

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from visual_search.dev.lambdas import LambdaContext, load_function

BUCKET = "product-images"
EVENTS = Path(__file__).resolve().parents[2] / "events"
_sequence = itertools.count(0x55AED6DCD9000000)


def next_sequencer() -> str:
    return f"{next(_sequence):016X}"


def s3_record(name: str, key: str, sequencer: str | None = None, bucket: str = BUCKET) -> dict:
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": name,
        "s3": {
            "bucket": {"name": bucket},
            "object": {"key": quote_plus(key, safe="/"), "sequencer": sequencer or next_sequencer()},
        },
    }


def sqs(*messages: dict) -> dict:
    return {
        "Records": [
            {
                "messageId": f"m{n}",
                "receiptHandle": f"r{n}",
                "body": json.dumps(m),
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q",
            }
            for n, m in enumerate(messages)
        ]
    }


class World:
    """moto S3 + the ingest function + helpers to upload, delete and compare."""

    def __init__(self, app, s3):
        self.app, self.s3 = app, s3
        self.store = app.ingestor.catalog.store

    def put(
        self, key: str, data: bytes, metadata: dict | None = None, content_type: str = "image/jpeg"
    ) -> dict:
        self.s3.put_object(
            Bucket=BUCKET, Key=key, Body=data, Metadata=metadata or {}, ContentType=content_type
        )
        return s3_record("ObjectCreated:Put", key)

    def delete(self, key: str) -> dict:
        self.s3.delete_object(Bucket=BUCKET, Key=key)
        return s3_record("ObjectRemoved:Delete", key)

    def invoke(self, event: dict) -> dict:
        return self.app.handler(event, LambdaContext())

    def deliver(self, *records: dict) -> dict:
        """As SQS delivers them: one notification message per record, in one batch."""
        return self.invoke(sqs(*({"Records": [r]} for r in records)))

    def payload(self, key: str) -> dict | None:
        return self.store.get_images([(BUCKET, key)]).get((BUCKET, key))

    def assert_in_sync(self) -> None:
        listed = self.s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
        never_indexed = ("query-photos/", "query-uploads/")  # kept searches, query uploads
        images = {
            o["Key"]
            for o in listed
            if o["Key"].lower().endswith((".jpg", ".png")) and not o["Key"].startswith(never_indexed)
        }
        indexed = {h.payload["key"] for h in self.store.scroll()}
        assert indexed == images


@contextmanager
def ingest_world():
    """moto S3 with the bucket, and the ingest function loaded as a fresh container (its store
    configured by the environment at that moment)."""
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        app = load_function("ingest")
        try:
            yield World(app, s3)
        finally:
            app.ingestor.catalog.store.close()


@pytest.fixture
def world(monkeypatch, embedder):
    monkeypatch.setenv("QDRANT_PATH", ":memory:")
    monkeypatch.delenv("QDRANT_URL", raising=False)
    with ingest_world() as w:
        yield w


@pytest.fixture
def photos(demo_images):
    """Three real photos of three different products."""
    return [img.path.read_bytes() for img in (demo_images[0], demo_images[12], demo_images[30])]


def test_upload_indexes_with_metadata(world, photos):
    result = world.deliver(
        world.put(
            "shop/any-folder/front.jpg",
            photos[0],
            {
                "product-id": "SKU-1",
                "category": "Shoes",
                "brand": "Acme",
                "title": "Runner",
                "price": "49.90",
                "colour": "red",
            },
        )
    )
    assert result == {"batchItemFailures": []}
    payload = world.payload("shop/any-folder/front.jpg")
    assert payload["product_id"] == "SKU-1" and payload["category"] == "Shoes"
    assert payload["brand"] == "Acme" and payload["price"] == 49.9
    assert payload["metadata"] == {"colour": "red"} and payload["content_type"] == "image/jpeg"
    assert payload["etag"] and payload["size"] == len(photos[0]) and payload["sequencer"]
    assert payload["model_id"] == world.app.ingestor.catalog.model_id and payload["indexed_at"]
    world.assert_in_sync()


def test_product_id_from_key_convention(world, photos):
    world.deliver(
        world.put("catalog/shoes/sku-123/front.jpg", photos[0]), world.put("loose-photo.jpg", photos[1])
    )
    assert world.payload("catalog/shoes/sku-123/front.jpg")["product_id"] == "sku-123"
    assert world.payload("loose-photo.jpg")["product_id"] == "loose-photo"


def test_overwrite_updates_the_point(world, photos):
    key = "catalog/p1/a.jpg"
    world.deliver(world.put(key, photos[0], {"price": "10"}))
    first = world.store.product_vectors("p1")[0]
    world.deliver(world.put(key, photos[1], {"price": "12"}))
    assert world.store.count() == 1
    assert world.payload(key)["price"] == 12.0
    assert float(world.store.product_vectors("p1")[0] @ first) < 0.99  # the new photo's vector


def test_delete_removes_the_point(world, photos):
    world.deliver(world.put("catalog/p1/a.jpg", photos[0]), world.put("catalog/p1/b.jpg", photos[1]))
    world.deliver(world.delete("catalog/p1/a.jpg"))
    assert world.payload("catalog/p1/a.jpg") is None and world.store.count() == 1
    world.assert_in_sync()


def test_duplicate_delivery_changes_nothing(world, photos):
    record = world.put("catalog/p1/a.jpg", photos[0])
    world.deliver(record)
    before = world.payload("catalog/p1/a.jpg")
    assert world.deliver(record, record) == {"batchItemFailures": []}
    assert world.payload("catalog/p1/a.jpg") == before and world.store.count() == 1


def test_out_of_order_delete_then_create(world, photos):
    key = "catalog/p1/a.jpg"
    create = world.put(key, photos[0])
    delete = world.delete(key)
    world.deliver(delete)  # the newer event first
    world.deliver(create)  # the older one late: the object is gone, nothing comes back
    assert world.payload(key) is None
    world.assert_in_sync()


def test_late_delete_does_not_remove_a_newer_upload(world, photos):
    key = "catalog/p1/a.jpg"
    world.put(key, photos[0])
    old_delete = world.delete(key)
    new_create = world.put(key, photos[1])
    world.deliver(new_create)
    world.deliver(old_delete)  # older than the applied create: ignored
    assert world.payload(key) is not None
    world.assert_in_sync()


def test_newest_change_in_a_batch_wins(world, photos):
    key = "catalog/p1/a.jpg"
    create = world.put(key, photos[0])
    delete = world.delete(key)
    result = world.deliver(delete, create)  # reordered inside one batch
    assert result == {"batchItemFailures": []}
    assert world.payload(key) is None


def test_unicode_url_encoded_key(world, photos):
    key = "catalog/Café Crème/front photo ü.jpg"
    record = world.put(key, photos[0])
    assert record["s3"]["object"]["key"] == "catalog/Caf%C3%A9+Cr%C3%A8me/front+photo+%C3%BC.jpg"
    world.deliver(record)
    payload = world.payload(key)
    assert payload["key"] == key and payload["product_id"] == "Café Crème"
    world.deliver(world.delete(key))
    assert world.store.count() == 0


def test_non_images_are_skipped(world, photos):
    result = world.deliver(
        world.put("catalog/p1/notes.txt", b"hello", content_type="text/plain"),
        world.put("catalog/p1/README", b"hello", content_type="text/plain"),
        world.put("catalog/p1/no-extension-photo", photos[0], content_type="image/jpeg"),
    )
    assert result == {"batchItemFailures": []}
    assert {h.payload["key"] for h in world.store.scroll()} == {"catalog/p1/no-extension-photo"}


def test_dotted_names_with_an_image_content_type_are_indexed(world, photos):
    keys = ["catalog/p1/IMG_2024.05.01", "catalog/p2/front.v2", "catalog/p3/photo.jfif"]
    world.deliver(
        *(world.put(k, photo) for k, photo in zip(keys, photos)),
        world.put("catalog/p4/sizes.v2", b"S,M,L", content_type="text/csv"),
    )
    assert {h.payload["key"] for h in world.store.scroll()} == set(keys)


def test_query_uploads_are_never_indexed(world, photos):
    world.deliver(
        world.put("query-uploads/4f1c-query.jpg", photos[0]), world.put("catalog/p1/a.jpg", photos[1])
    )
    assert {h.payload["key"] for h in world.store.scroll()} == {"catalog/p1/a.jpg"}


def test_an_image_replaced_by_something_unindexable_loses_its_point(world, photos, monkeypatch):
    world.deliver(
        world.put("catalog/p1/photo", photos[0]),
        world.put("catalog/p2/a.jpg", photos[1], {"price": "10"}),
        world.put("catalog/p3/b.jpg", photos[2]),
    )
    assert world.store.count() == 3
    world.app.ingestor.limits = type(world.app.ingestor.limits)(max_bytes=len(photos[2]) + 10)
    result = world.deliver(
        world.put("catalog/p1/photo", b"now a text file", content_type="text/plain"),
        world.put("catalog/p2/a.jpg", photos[1][: len(photos[1]) // 3], {"price": "99"}),
        world.put("catalog/p3/b.jpg", photos[2] + b"\0" * 100),
    )
    assert result == {"batchItemFailures": []}  # permanent: acknowledged, and the old points go
    assert world.store.count() == 0


def test_a_malformed_metadata_value_fails_nothing(world, photos):
    result = world.deliver(
        world.put("catalog/p1/good.jpg", photos[0]),
        world.put("catalog/p2/odd.jpg", photos[1], {"title": "=?UTF-8?B?a?="}),
    )
    assert result == {"batchItemFailures": []}
    assert world.payload("catalog/p2/odd.jpg")["title"] == "=?UTF-8?B?a?="  # kept as sent
    world.assert_in_sync()


def test_prefix_and_suffix_filter(monkeypatch, embedder, photos):
    monkeypatch.setenv("QDRANT_PATH", ":memory:")
    monkeypatch.setenv("INGEST_PREFIX", "catalog/")
    monkeypatch.setenv("INGEST_SUFFIXES", ".jpg")
    with ingest_world() as w:
        w.deliver(
            w.put("catalog/p/a.jpg", photos[0]),
            w.put("other/p/b.jpg", photos[1]),
            w.put("catalog/p/c.png", photos[2]),
        )
        assert {h.payload["key"] for h in w.store.scroll()} == {"catalog/p/a.jpg"}


def test_corrupt_and_oversized_images_are_permanent_failures(world, photos, monkeypatch):
    broken = photos[0][: len(photos[0]) // 3]
    result = world.deliver(
        world.put("catalog/p1/broken.jpg", broken),
        world.put("catalog/p1/fake.jpg", b"<html>not a photo</html>"),
        world.put("catalog/p2/good.jpg", photos[1]),
    )
    assert result == {"batchItemFailures": []}  # acknowledged: retrying cannot help
    assert {h.payload["key"] for h in world.store.scroll()} == {"catalog/p2/good.jpg"}
    world.app.ingestor.limits = type(world.app.ingestor.limits)(max_bytes=1000)
    outcomes = world.app.ingestor.apply(
        [world.app.parse_sqs_body(json.dumps({"Records": [world.put("catalog/p3/big.jpg", photos[2])]}))[0]]
    )
    assert outcomes[0].status == "failed" and "limit" in outcomes[0].reason


def test_test_events_are_acknowledged(world):
    assert world.invoke(json.loads((EVENTS / "s3-test-event.json").read_text())) == {"outcomes": []}
    assert world.invoke(json.loads((EVENTS / "sqs-s3-test-event.json").read_text())) == {
        "batchItemFailures": []
    }


def test_an_event_without_records_is_acknowledged(world):
    assert world.invoke({"Records": []}) == {"outcomes": []}


def test_direct_s3_event(world, photos):
    result = world.invoke({"Records": [world.put("catalog/p1/a.jpg", photos[0])]})
    assert result["outcomes"][0]["status"] == "indexed"
    result = world.invoke({"Records": [world.delete("catalog/p1/a.jpg")]})
    assert result["outcomes"][0]["status"] == "deleted"
    world.assert_in_sync()


def test_unreadable_message_is_a_batch_failure(world, photos):
    event = sqs({"Records": [world.put("catalog/p1/a.jpg", photos[0])]})
    event["Records"].append({**event["Records"][0], "messageId": "bad", "body": "{not json"})
    assert world.invoke(event) == {"batchItemFailures": [{"itemIdentifier": "bad"}]}
    assert world.store.count() == 1


class FlakyS3:
    """The boto3 S3 client, throttled on chosen keys (S3's 503 SlowDown)."""

    def __init__(self, client, failing: set[str]):
        self.client, self.failing = client, failing

    def get_object(self, **kwargs):
        if kwargs["Key"] in self.failing:
            raise ClientError(
                {
                    "Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."},
                    "ResponseMetadata": {"HTTPStatusCode": 503},
                },
                "GetObject",
            )
        return self.client.get_object(**kwargs)


def test_s3_throttling_fails_only_that_record(world, photos):
    world.app.ingestor.s3 = FlakyS3(world.s3, {"catalog/p2/b.jpg"})
    event = sqs(
        {"Records": [world.put("catalog/p1/a.jpg", photos[0])]},
        {"Records": [world.put("catalog/p2/b.jpg", photos[1])]},
    )
    assert world.invoke(event) == {"batchItemFailures": [{"itemIdentifier": "m1"}]}
    assert world.payload("catalog/p1/a.jpg") and world.payload("catalog/p2/b.jpg") is None
    world.app.ingestor.s3 = world.s3  # throttling over: SQS redelivers the failed message
    retry = {"Records": [event["Records"][1]]}
    assert world.invoke(retry) == {"batchItemFailures": []}
    world.assert_in_sync()


def test_transient_failure_in_a_direct_s3_event_raises(world, photos):
    world.app.ingestor.s3 = FlakyS3(world.s3, {"catalog/p1/a.jpg"})
    with pytest.raises(RuntimeError, match="SlowDown"):
        world.invoke({"Records": [world.put("catalog/p1/a.jpg", photos[0])]})


def test_qdrant_down_then_recovered(monkeypatch, embedder, photos, qdrant_shim):
    """Every record fails while Qdrant is down; redelivered after recovery, the catalogue
    matches the bucket exactly."""
    monkeypatch.setenv("QDRANT_URL", qdrant_shim.url)
    monkeypatch.setenv("COLLECTION", "ingest-outage")
    monkeypatch.setenv("QDRANT_TIMEOUT", "2")
    with ingest_world() as w:
        w.deliver(w.put("catalog/p0/gone.jpg", photos[2]))
        event = sqs(
            {"Records": [w.put("catalog/p1/a.jpg", photos[0])]},
            {"Records": [w.put("catalog/p2/b.jpg", photos[1])]},
            {"Records": [w.delete("catalog/p0/gone.jpg")]},
        )
        qdrant_shim.fail_with = 503
        try:
            result = w.invoke(event)
        finally:
            qdrant_shim.fail_with = None
        assert sorted(f["itemIdentifier"] for f in result["batchItemFailures"]) == ["m0", "m1", "m2"]
        assert w.invoke(event) == {"batchItemFailures": []}
        w.assert_in_sync()
        w.store.drop_collection(w.store.physical_collection())


@pytest.mark.parametrize(
    "name",
    [
        "s3-put.json",
        "s3-put-unicode-key.json",
        "sqs-s3-put.json",
        "sqs-s3-batch.json",
        "s3-delete.json",
        "sqs-s3-delete.json",
    ],
)
def test_sample_events(world, name, photos):
    """Each sample event in events/ runs through the handler against objects it names."""
    event = json.loads((EVENTS / name).read_text())
    from visual_search.ingest.events import changes_in_message, event_kind, parse_sqs_body

    changes = (
        changes_in_message(event)
        if event_kind(event) == "s3"
        else [c for r in event["Records"] for c in parse_sqs_body(r["body"])]
    )
    for change in changes:
        if change.kind == "created":
            world.s3.put_object(Bucket=change.bucket, Key=change.key, Body=photos[0])
    result = world.invoke(event)
    assert result in ({"batchItemFailures": []},) or all(
        o["status"] in ("indexed", "deleted") for o in result["outcomes"]
    )
    world.assert_in_sync()


def test_older_events_are_recognised_as_stale(world, photos):
    from visual_search.ingest.events import parse_s3_record

    key = "catalog/p1/a.jpg"
    old = parse_s3_record(world.put(key, photos[0]))
    new = parse_s3_record(world.put(key, photos[1]))
    assert [o.status for o in world.app.ingestor.apply([new])] == ["indexed"]
    assert [o.status for o in world.app.ingestor.apply([old])] == ["stale"]
    assert [o.status for o in world.app.ingestor.apply([old, new])] == ["superseded", "stale"]
    assert world.payload(key)["sequencer"] == new.sequencer


@pytest.mark.parametrize(
    "older,newer",
    [
        ("0055AED6DCD90281E5", "0055AED6DCD90281E6"),
        ("0055AED6DCD90281E5", "0055AED6DCD90281E50001"),
        ("A", "B0"),
    ],
)
def test_sequencer_order(older, newer):
    from visual_search.ingest.events import is_newer

    assert is_newer(newer, older) and not is_newer(older, newer) and not is_newer(older, older)


def test_a_batch_larger_than_the_embed_chunk(monkeypatch, embedder, demo_images):
    """With INGEST_EMBED_CHUNK=2 a batch of seven changes is embedded in chunks as downloads
    finish: every image is indexed once with its own vector, the bad and deleted ones end as
    they would in one chunk, and an object replaced while an early chunk is being written is
    applied again from the bucket."""
    import numpy as np

    monkeypatch.setenv("QDRANT_PATH", ":memory:")
    monkeypatch.delenv("QDRANT_URL", raising=False)
    monkeypatch.setenv("INGEST_EMBED_CHUNK", "2")
    photos = [img.path.read_bytes() for img in demo_images[:5]] + [demo_images[40].path.read_bytes()]
    with ingest_world() as w:
        assert w.app.ingestor.settings.embed_chunk == 2
        w.deliver(w.put("catalog/gone/a.jpg", photos[0]))
        records = [w.put(f"catalog/p{n}/a.jpg", photos[n]) for n in range(5)]
        records.append(w.put("catalog/bad/a.jpg", b"\xff\xd8\xff not really a jpeg"))
        records.append(w.delete("catalog/gone/a.jpg"))
        from visual_search.store import CatalogStore

        # on the class: the catalogue writes through a store pinned to the physical collection
        real_upsert, writes = CatalogStore.upsert, []

        def upsert_then_replace(store, points):
            writes.append(len(points))
            if len(writes) == 1:  # another writer replaces an image of the first chunk meanwhile
                w.put(points[0].key, photos[5])
            return real_upsert(store, points)

        monkeypatch.setattr(CatalogStore, "upsert", upsert_then_replace)
        assert w.deliver(*records) == {"batchItemFailures": []}
        monkeypatch.setattr(CatalogStore, "upsert", real_upsert)
        assert max(writes) <= 2 and sum(writes) >= 6  # chunks of two, one key written again
        assert {h.payload["key"] for h in w.store.scroll()} == {f"catalog/p{n}/a.jpg" for n in range(5)}
        for n in range(5):
            key = f"catalog/p{n}/a.jpg"
            body = w.s3.get_object(Bucket=BUCKET, Key=key)
            assert w.store.get_images([(BUCKET, key)])[(BUCKET, key)]["etag"] == body["ETag"]
            vector = np.asarray(w.store.vectors_of([(BUCKET, key)])[(BUCKET, key)], np.float32)
            assert float(vector @ embedder.embed(body["Body"].read())) > 0.999
