"""Learning from shoppers' clicks, through the search API and the ingest pipeline on moto S3 and
embedded Qdrant with the real model: searches kept, POST /feedback and each of its refusals, the
shopper view indexed as a photo of the product, the cap, the views going with their product, a
failed write that loses nothing, and the review that holds back a wrong click."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from moto import mock_aws
from PIL import Image, ImageOps

from tests.conftest import jpeg_bytes
from tests.support.apigw import json_event
from visual_search.api import SearchApi
from visual_search.catalog import Catalog
from visual_search.config import FeedbackSettings, StoreSettings, load_settings
from visual_search.dev.devstack.bridge import next_sequencer
from visual_search.dev.lambdas import LambdaContext
from visual_search.domain import Query
from visual_search.feedback import review_views
from visual_search.feedback.review import disowned
from visual_search.feedback.views import metadata_value
from visual_search.ingest.events import S3Change
from visual_search.ingest.pipeline import Ingestor
from visual_search.store import CatalogStore

BUCKET = "shop"
PRODUCTS = 12  # demo products indexed (a few photos each)


class Shop:
    """The search API and the ingest pipeline over one bucket, as deployed."""

    def __init__(self, s3, embedder, feedback: FeedbackSettings):
        base = load_settings()
        self.settings = replace(
            base,
            store=StoreSettings(path=":memory:", collection="shop"),
            api=replace(base.api, bucket=BUCKET, upload_bucket=BUCKET, result_image_urls=False),
            feedback=feedback,
        )
        store = CatalogStore.open(
            self.settings.store, embedder.model_id, embedder.dim, embedder.card.distance
        )
        self.s3 = s3
        self.catalog = Catalog(embedder, store, projection_check_s=0.0)
        self.ingestor = Ingestor(self.catalog, s3, self.settings.ingest, self.catalog.image_limits, feedback)
        self.api = SearchApi(self.catalog, s3, self.settings)

    def deliver(self, created=(), removed=()):
        """The bucket's notifications for these keys, applied by the ingest pipeline."""
        changes = [S3Change(BUCKET, k, "created", "ObjectCreated:Put", next_sequencer()) for k in created]
        changes += [S3Change(BUCKET, k, "removed", "ObjectRemoved:Delete", next_sequencer()) for k in removed]
        return self.ingestor.apply(changes)

    def call(self, path, payload):
        response = self.api.resolve(json_event("POST", path, payload), LambdaContext())
        return response["statusCode"], json.loads(response["body"])

    def search(self, photo: bytes, top_k=5):
        status, body = self.call("/search", {"image": base64.b64encode(photo).decode(), "top_k": top_k})
        assert status == 200, body
        return body

    def keys(self, prefix):
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def snapshot(path, crop=0.12) -> bytes:
    """A shopper's own photo of a catalogue product: mirrored and cropped."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    dx, dy = int(w * crop), int(h * crop)
    return jpeg_bytes(ImageOps.mirror(image).crop((dx, dy, w - dx, h - dy)))


@pytest.fixture(scope="module")
def catalogue(demo_images):
    products = sorted({img.metadata["product-id"] for img in demo_images})[:PRODUCTS]
    return [img for img in demo_images if img.metadata["product-id"] in products]


@pytest.fixture
def shop(embedder, catalogue):
    def make(**options):
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        made = Shop(s3, embedder, FeedbackSettings(**options))
        keys = []
        for img in catalogue:
            key = f"catalog/{img.key}"
            s3.put_object(Bucket=BUCKET, Key=key, Body=img.path.read_bytes(), Metadata=img.metadata)
            keys.append(key)
        assert {o.status for o in made.deliver(created=keys)} == {"indexed"}
        return made

    with mock_aws():
        yield make


def test_a_search_is_kept_with_its_photo_and_the_products_it_showed(shop, catalogue):
    s = shop()
    photo = snapshot(catalogue[0].path)
    body = s.search(photo)
    search_id = body["search_id"]
    assert len(search_id) == 32 and int(search_id, 16) >= 0
    kept = s.keys(f"query-photos/{search_id}/")
    assert kept == [f"query-photos/{search_id}/photo.jpg", f"query-photos/{search_id}/search.json"]
    assert s.s3.get_object(Bucket=BUCKET, Key=kept[0])["Body"].read() == photo
    record = json.loads(s.s3.get_object(Bucket=BUCKET, Key=kept[1])["Body"].read())
    assert record["shown"] == [r["product_id"] for r in body["results"]]
    # never indexed: the ingest pipeline skips what is kept
    assert {o.status for o in s.deliver(created=kept)} == {"skipped"}


def test_a_click_makes_the_photo_a_shopper_view_of_the_product(shop, catalogue):
    s = shop()
    product = catalogue[0].metadata["product-id"]
    photo = snapshot(catalogue[0].path)
    body = s.search(photo)
    shown = [r["product_id"] for r in body["results"]]
    pick = shown[-1] if shown[-1] != product else shown[-2]  # a product other than the first
    status, taken = s.call("/feedback", {"search_id": body["search_id"], "product_id": pick})
    assert status == 200, taken
    key = taken["view"]["key"]
    assert key.startswith("shopper-views/") and key.endswith(f"-{body['search_id']}.jpg")
    head = s.s3.head_object(Bucket=BUCKET, Key=key)
    assert head["Metadata"]["product-id"] == pick and head["Metadata"]["source"] == "shopper"
    assert s.deliver(created=[key])[0].status == "indexed"
    stored = s.catalog.stored([(BUCKET, key)])[(BUCKET, key)]
    original = s.catalog.product_payload(pick)
    assert stored["source"] == "shopper" and stored["product_id"] == pick
    assert stored.get("category") == original.get("category")
    # the same photo now finds the picked product first, through its new view
    again = s.search(photo)
    assert again["results"][0]["product_id"] == pick and again["results"][0]["image"]["key"] == key
    # once per search, whatever the product
    for product_id in (pick, product):
        status, refused = s.call("/feedback", {"search_id": body["search_id"], "product_id": product_id})
        assert status == 409 and refused["error"]["code"] == "feedback_given"


def test_feedback_refusals_say_why(shop, catalogue):
    s = shop()
    body = s.search(snapshot(catalogue[3].path), top_k=2)
    shown = {r["product_id"] for r in body["results"]}
    other = next(i.metadata["product-id"] for i in catalogue if i.metadata["product-id"] not in shown)
    cases = [
        ({"search_id": body["search_id"], "product_id": other}, 422, "not_shown"),
        ({"search_id": "0" * 32, "product_id": other}, 404, "unknown_search"),
        ({"search_id": "../../etc", "product_id": other}, 404, "unknown_search"),
        ({"search_id": body["search_id"]}, 422, "invalid_options"),
        ({"search_id": body["search_id"], "product_id": "a\x00b"}, 422, "invalid_options"),
        ({"search_id": body["search_id"], "product_id": "\ud800"}, 422, "invalid_options"),
    ]
    for payload, status, code in cases:
        got, answer = s.call("/feedback", payload)
        assert (got, answer["error"]["code"]) == (status, code), payload
    # an old search: its record is there, its time is past QUERY_PHOTO_TTL_H
    key = f"query-photos/{body['search_id']}/search.json"
    record = json.loads(s.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    record["created"] = (datetime.now(UTC) - timedelta(hours=25)).isoformat()
    s.s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(record).encode())
    got, answer = s.call("/feedback", {"search_id": body["search_id"], "product_id": sorted(shown)[0]})
    assert got == 410 and answer["error"]["code"] == "search_expired"
    assert s.keys("shopper-views/") == []


def test_learning_off_keeps_nothing_and_refuses_feedback(shop, catalogue):
    s = shop(learn=False)
    body = s.search(snapshot(catalogue[0].path))
    assert body["search_id"] is None and s.keys("query-photos/") == []
    got, answer = s.call("/feedback", {"search_id": "0" * 32, "product_id": "x"})
    assert got == 403 and answer["error"]["code"] == "feedback_disabled"


def test_views_are_capped_per_product_oldest_first(shop, catalogue):
    s = shop(max_views=2)
    product = catalogue[0].metadata["product-id"]
    written = []
    for crop in (0.05, 0.1, 0.15):
        body = s.search(snapshot(catalogue[0].path, crop))
        assert product in [r["product_id"] for r in body["results"]]
        status, taken = s.call("/feedback", {"search_id": body["search_id"], "product_id": product})
        assert status == 200
        s.deliver(created=[taken["view"]["key"]], removed=taken["dropped"])
        written.append((taken["view"]["key"], taken["dropped"]))
    assert written[0][1] == [] and written[1][1] == [] and written[2][1] == [written[0][0]]
    assert s.keys("shopper-views/") == sorted(k for k, _ in written[1:])
    assert s.catalog.stored([(BUCKET, written[0][0])]) == {}


def test_a_products_views_go_with_its_last_catalogue_photo(shop, catalogue):
    s = shop()
    product = catalogue[0].metadata["product-id"]
    body = s.search(snapshot(catalogue[0].path))
    status, taken = s.call("/feedback", {"search_id": body["search_id"], "product_id": product})
    assert status == 200
    s.deliver(created=[taken["view"]["key"]])
    photos = [f"catalog/{i.key}" for i in catalogue if i.metadata["product-id"] == product]
    for key in photos[:-1]:  # while one catalogue photo is left, the view stays
        s.s3.delete_object(Bucket=BUCKET, Key=key)
    s.deliver(removed=photos[:-1])
    assert s.keys("shopper-views/") == [taken["view"]["key"]]
    s.s3.delete_object(Bucket=BUCKET, Key=photos[-1])
    s.deliver(removed=photos[-1:])
    assert s.keys("shopper-views/") == []
    s.deliver(removed=[taken["view"]["key"]])  # its own delete event
    assert s.catalog.product_payload(product) is None


class FailingViews:
    """An S3 client whose first write of a shopper view fails (a fault shim over moto)."""

    def __init__(self, s3):
        self._s3, self.failed = s3, False

    def put_object(self, **kwargs):
        if kwargs["Key"].startswith("shopper-views/") and not self.failed:
            self.failed = True
            raise ConnectionError("S3 is unreachable")
        return self._s3.put_object(**kwargs)

    def __getattr__(self, name):
        return getattr(self._s3, name)


def test_a_view_that_could_not_be_written_loses_nothing(shop, catalogue):
    s = shop()
    s.api.feedback.views.s3 = FailingViews(s.s3)
    body = s.search(snapshot(catalogue[0].path))
    click = {"search_id": body["search_id"], "product_id": body["results"][0]["product_id"]}
    status, answer = s.call("/feedback", click)
    assert status == 503 and answer["error"]["code"] == "store_unavailable"
    assert s.keys("shopper-views/") == []
    status, taken = s.call("/feedback", click)  # the shopper's retry is taken
    assert status == 200 and s.keys("shopper-views/") == [taken["view"]["key"]]


def test_the_review_holds_back_a_wrong_click_and_searches_stop_using_it(shop, catalogue):
    s = shop()
    by_product: dict[str, list] = {}
    for img in catalogue:
        by_product.setdefault(img.metadata["product-id"], []).append(img)
    a, b = [p for p, imgs in by_product.items() if len(imgs) >= 2][:2]
    # a shopper photographs product a and picks b; others photograph b and pick b
    wrong = s.search(snapshot(by_product[a][0].path), top_k=PRODUCTS)
    status, bad = s.call("/feedback", {"search_id": wrong["search_id"], "product_id": b})
    assert status == 200
    s.deliver(created=[bad["view"]["key"]])
    view_id = next(v.id for v in s.catalog.shopper_views())
    photo = snapshot(by_product[a][0].path, 0.2)
    assert s.search(photo)["results"][0]["image"]["key"] == bad["view"]["key"]  # it misleads
    result = review_views(s.catalog, log=lambda line: None)
    assert result.as_dict() == {"checked": 1, "held": 1, "released": 0}
    answer = s.search(photo, top_k=PRODUCTS)
    assert bad["view"]["key"] not in [r["image"]["key"] for r in answer["results"]]
    assert answer["results"][0]["product_id"] == a
    # held, not lost: the review still sees it, and the fit's sample leaves it out
    held = s.catalog.nearest_images(s.catalog.embedder.embed(photo), 3)
    assert view_id in [h.id for h in held]
    ungrouped = s.catalog.search_image(photo, Query(top_k=50, group_by_product=False)).hits
    assert view_id not in [h.id for h in ungrouped]


def test_disowned_is_decided_by_the_nearest_other_photo():
    class H:
        def __init__(self, id, product):
            self.id, self.payload = id, {"product_id": product}

    near = [H("v", "b"), H("x", "a"), H("y", "b")]
    assert disowned("v", "b", near, set())  # nearest other photo is a's
    assert not disowned("v", "b", near, {"x"})  # without x, b's own photo is nearest
    assert not disowned("v", "a", near, set())
    assert not disowned("v", "b", [H("v", "b")], set())  # nothing else: nothing disowns it


def test_shopper_views_are_listed_and_purged_by_product_and_date(shop, catalogue, capsys):
    from visual_search.dev.cli import main

    s = shop()
    first, second = catalogue[0].metadata["product-id"], catalogue[-1].metadata["product-id"]
    for img, product in ((catalogue[0], first), (catalogue[-1], second)):
        body = s.search(snapshot(img.path), top_k=PRODUCTS)
        assert s.call("/feedback", {"search_id": body["search_id"], "product_id": product})[0] == 200
    capsys.readouterr()
    assert main(["shopper-views", "list", "--bucket", BUCKET, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(v["product_id"] for v in listed) == sorted([first, second])
    assert main(["shopper-views", "list", "--bucket", BUCKET, "--before", "2000-01-01"]) == 0
    assert "0 shopper views of 0 products" in capsys.readouterr().out
    assert main(["shopper-views", "purge", "--bucket", BUCKET, "--product", first, "--dry-run"]) == 0
    assert "would delete 1 shopper views" in capsys.readouterr().out
    assert len(s.keys("shopper-views/")) == 2
    assert main(["shopper-views", "purge", "--bucket", BUCKET, "--product", first]) == 0
    assert [v["product_id"] for v in listed if v["key"] in s.keys("shopper-views/")] == [second]
    with pytest.raises(SystemExit):  # argparse: "not an ISO date or date-time"
        main(["shopper-views", "list", "--before", "yesterday", "--bucket", BUCKET])
    assert "not an ISO date" in capsys.readouterr().err


def test_a_product_id_with_accents_and_a_slash_keeps_its_views(shop, catalogue):
    s = shop()
    product = "Caffè Latte/Grande ☕"
    photo = catalogue[5].path.read_bytes()
    key = "catalog/other/latte.jpg"
    s.s3.put_object(Bucket=BUCKET, Key=key, Body=photo, Metadata={"product-id": metadata_value(product)})
    assert s.deliver(created=[key])[0].status == "indexed"
    body = s.search(snapshot(catalogue[5].path), top_k=PRODUCTS)
    assert product in [r["product_id"] for r in body["results"]]
    status, taken = s.call("/feedback", {"search_id": body["search_id"], "product_id": product})
    assert status == 200, taken
    assert s.deliver(created=[taken["view"]["key"]])[0].status == "indexed"
    view = s.catalog.stored([(BUCKET, taken["view"]["key"])])[(BUCKET, taken["view"]["key"])]
    assert view["product_id"] == product and view["source"] == "shopper"
    assert [v.product_id for v in s.api.feedback.views.list_views(product)] == [product]
