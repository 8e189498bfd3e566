"""Backfill, reconcile and re-index against moto S3 and embedded Qdrant."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from visual_search.catalog import Catalog
from visual_search.config import ImageLimits, IngestSettings, StoreSettings
from visual_search.ingest.events import S3Change
from visual_search.ingest.pipeline import Ingestor
from visual_search.ops.sync import Syncer, reindex
from visual_search.store import CatalogStore, Query, open_backend

BUCKET = "product-images"


class CountingS3:
    """The boto3 S3 client, counting GETs and failing chosen keys a number of times."""

    def __init__(self, client, failures: dict[str, int] | None = None):
        self.client, self.failures, self.gets = client, dict(failures or {}), []

    def get_object(self, **kwargs):
        self.gets.append(kwargs["Key"])
        if self.failures.get(kwargs["Key"], 0) > 0:
            self.failures[kwargs["Key"]] -= 1
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "slow down"}}, "GetObject")
        return self.client.get_object(**kwargs)

    def __getattr__(self, name):
        return getattr(self.client, name)


@pytest.fixture
def s3():
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


@pytest.fixture
def upload(s3, demo_images):
    def put(count: int = 12, prefix: str = "catalog/"):
        for img in demo_images[:count]:
            s3.put_object(
                Bucket=BUCKET,
                Key=prefix + img.key,
                Body=img.path.read_bytes(),
                Metadata=img.metadata,
                ContentType="image/jpeg",
            )
        s3.put_object(Bucket=BUCKET, Key=prefix + "README.txt", Body=b"not an image")

    return put


def make_syncer(embedder, s3_client, collection="sync", client=None, model_id=None):
    settings = StoreSettings(path=":memory:", collection=collection)
    store = CatalogStore(
        client or open_backend(settings), settings, model_id or embedder.model_id, embedder.dim
    )
    ingestor = Ingestor(Catalog(embedder, store), s3_client, IngestSettings(), ImageLimits())
    return Syncer(ingestor, sleep=lambda s: None)


def keys(store) -> set[str]:
    return {h.payload["key"] for h in store.scroll()}


def test_backfill_is_idempotent_and_resumable(s3, upload, embedder):
    upload(12)
    # fails all 1 + RETRIES attempts of the first run, then recovers
    flaky = CountingS3(s3, {"catalog/Alpro-Blueberry-Soyghurt/Alpro-Blueberry-Soyghurt_001.jpg": 4})
    syncer = make_syncer(embedder, flaky)
    first = syncer.backfill(BUCKET, "catalog/", batch=5)
    assert first.listed == 13 and first.skipped == 1 and first.indexed == 11
    assert first.retry == 1 and "SlowDown" in first.problems[0]
    flaky.gets.clear()
    second = syncer.backfill(BUCKET, "catalog/", batch=5)  # resume: only the failed one is fetched
    assert second.indexed == 1 and second.unchanged == 11 and len(flaky.gets) == 1
    third = syncer.backfill(BUCKET, "catalog/")
    assert third.indexed == 0 and third.unchanged == 12
    assert len(keys(syncer.catalog.store)) == 12


def test_transient_failures_are_retried_within_a_run(s3, upload, embedder):
    upload(4)
    flaky = CountingS3(
        s3, {"catalog/" + img: 2 for img in ["Alpro-Blueberry-Soyghurt/Alpro-Blueberry-Soyghurt_001.jpg"]}
    )
    report = make_syncer(embedder, flaky).backfill(BUCKET, "catalog/")
    assert report.indexed == 4 and report.retry == 0


def test_reconcile_repairs_both_kinds_of_drift(s3, upload, embedder, demo_images):
    upload(10)
    syncer = make_syncer(embedder, s3)
    syncer.backfill(BUCKET, "catalog/")
    # drift: one object deleted behind our back, one replaced, two new ones never announced
    s3.delete_object(Bucket=BUCKET, Key="catalog/" + demo_images[0].key)
    s3.put_object(Bucket=BUCKET, Key="catalog/" + demo_images[1].key, Body=demo_images[20].path.read_bytes())
    for img in demo_images[30:32]:
        s3.put_object(Bucket=BUCKET, Key="catalog/" + img.key, Body=img.path.read_bytes())
    dry = syncer.reconcile(BUCKET, "catalog/", dry_run=True)
    assert (dry.missing, dry.changed, dry.orphaned) == (2, 1, 1)
    assert len(keys(syncer.catalog.store)) == 10  # dry run changed nothing
    fixed = syncer.reconcile(BUCKET, "catalog/")
    assert fixed.indexed == 3 and fixed.deleted == 1
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"] if o["Key"].endswith(".jpg")}
    assert keys(syncer.catalog.store) == listed
    again = syncer.reconcile(BUCKET, "catalog/", dry_run=True)
    assert (again.missing, again.changed, again.orphaned) == (0, 0, 0)


def test_reconcile_converges_when_the_bucket_holds_objects_that_are_not_images(s3, upload, embedder):
    upload(3)
    s3.put_object(Bucket=BUCKET, Key="catalog/p9/README", Body=b"text", ContentType="text/plain")
    s3.put_object(
        Bucket=BUCKET,
        Key="catalog/p9/IMG_2024.05.01",
        ContentType="image/jpeg",
        Body=s3.get_object(
            Bucket=BUCKET,
            Key=next(
                iter(
                    o["Key"]
                    for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]
                    if o["Key"].endswith(".jpg")
                )
            ),
        )["Body"].read(),
    )
    syncer = make_syncer(embedder, s3)
    dry = syncer.reconcile(BUCKET, "catalog/", dry_run=True)
    assert dry.missing == 4 and dry.skipped == 2  # README.txt by name, README by content type
    syncer.reconcile(BUCKET, "catalog/")
    again = syncer.reconcile(BUCKET, "catalog/", dry_run=True)
    assert (again.missing, again.changed, again.orphaned) == (0, 0, 0)
    assert "catalog/p9/IMG_2024.05.01" in keys(syncer.catalog.store)


def test_reindex_switches_the_alias_to_a_collection_of_the_current_model(s3, upload, embedder):
    upload(8)
    client = open_backend(StoreSettings(path=":memory:"))
    # A collection built by an older model (same size vectors, another id).
    old = make_syncer(embedder, s3, "shop", client, model_id="efficientnet-lite0-imagenet-v0")
    old.backfill(BUCKET, "catalog/")
    old_physical = old.catalog.store.physical_collection()
    current = make_syncer(embedder, s3, "shop", client)
    with pytest.raises(Exception, match="efficientnet-lite0-imagenet-v0"):
        current.catalog.store.count()
    result = reindex(current.ingestor.catalog, s3, log=lambda m: None)
    assert result["previous"] == old_physical and result["collection"].startswith("shop-")
    assert current.catalog.store.physical_collection() == result["collection"]
    assert current.catalog.store.count() == 8
    assert not client.collection_exists(old_physical)
    hits = current.catalog.store.search(
        embedder.embed(
            s3.get_object(Bucket=BUCKET, Key=next(iter(keys(current.catalog.store))))["Body"].read()
        ),
        Query(top_k=3, group_by_product=False),
    )
    assert len(hits) == 3


def test_a_metadata_change_during_a_reindex_reaches_the_new_collection(s3, upload, embedder):
    """A copy-in-place with new metadata keeps the ETag; the live ingest function applies it to
    the old collection while the new one is built, and the re-index must carry it over."""
    upload(4)
    client = open_backend(StoreSettings(path=":memory:"))
    live = make_syncer(embedder, s3, "shop", client)
    live.backfill(BUCKET, "catalog/")
    key = sorted(keys(live.catalog.store))[0]
    changed = []

    def change_price_once(_):
        if changed:
            return
        s3.copy_object(
            Bucket=BUCKET,
            Key=key,
            CopySource={"Bucket": BUCKET, "Key": key},
            Metadata={"price": "9.99"},
            MetadataDirective="REPLACE",
            ContentType="image/jpeg",
        )
        changed.append(
            live.ingestor.apply([S3Change(BUCKET, key, "created", "ObjectCreated:Copy", sequencer="00AA")])[
                0
            ].status
        )

    current = make_syncer(embedder, s3, "shop", client)
    reindex(
        current.ingestor.catalog,
        s3,
        sources=[(BUCKET, "catalog/")],
        progress=change_price_once,
        log=lambda m: None,
    )
    assert changed == ["indexed"]
    assert current.catalog.store.get_images([(BUCKET, key)])[(BUCKET, key)]["price"] == 9.99


def test_a_reindex_that_fails_before_the_switch_leaves_nothing_behind(s3, upload, embedder):
    upload(4)
    client = open_backend(StoreSettings(path=":memory:"))
    live = make_syncer(embedder, s3, "shop", client)
    live.backfill(BUCKET, "catalog/")
    before = set(client.list_collections())
    with pytest.raises(ClientError):
        reindex(
            live.ingestor.catalog,
            s3,
            sources=[(BUCKET, "catalog/"), ("no-such-bucket", "")],
            log=lambda m: None,
        )
    assert set(client.list_collections()) == before
    assert live.catalog.store.count() == 4  # searches still answer from the old collection


def test_reindex_reads_only_the_folders_that_were_indexed(s3, upload, embedder, demo_images):
    """The Lambda indexed catalog/ only (INGEST_PREFIX); an operator's shell without that
    setting must not pull query uploads or other images of the bucket into the catalogue."""
    upload(12)  # two products
    client = open_backend(StoreSettings(path=":memory:"))
    live = make_syncer(embedder, s3, "shop", client)
    live.backfill(BUCKET, "catalog/")
    photo = demo_images[40].path.read_bytes()
    for key in ("query-uploads/0123abcd.jpg", "uploads-of-another-app/x.jpg", "exports/y.jpg"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=photo, ContentType="image/jpeg")
    indexed = keys(live.catalog.store)
    result = reindex(live.ingestor.catalog, s3, log=lambda m: None)
    assert list(result["sources"]) == ["s3://product-images/catalog/"]
    assert keys(live.catalog.store) == indexed
