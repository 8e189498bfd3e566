""" "More like this" / "not this" through the search API: the demo catalogue embedded by the real
model in the embedded engine; the ranking effect, point ids as examples, and bad ids (422)."""

from __future__ import annotations

import base64
import json

import boto3
import numpy as np
import pytest
from moto import mock_aws

from tests.integration.test_search_api import query_photo
from tests.support.apigw import json_event, rest_event
from visual_search.catalog import ImageSource
from visual_search.dev.lambdas import LambdaContext, load_function
from visual_search.domain import point_id
from visual_search.examples import MAX_EXAMPLES

BUCKET = "product-images"


@pytest.fixture(scope="module")
def app(demo_images):
    with pytest.MonkeyPatch.context() as mp, mock_aws():
        mp.setenv("QDRANT_PATH", ":memory:")
        mp.delenv("QDRANT_URL", raising=False)
        mp.setenv("BUCKET", BUCKET)
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        app = load_function("search")
        app.api.catalog.index(
            [ImageSource(BUCKET, f"catalog/{i.key}", i.path.read_bytes(), i.metadata) for i in demo_images]
        )
        yield app


def search(app, photo: bytes, **options) -> tuple[int, dict]:
    body = {"image": base64.b64encode(photo).decode(), "top_k": 10, **options}
    response = app.handler(json_event("POST", "/search", body), LambdaContext())
    return response["statusCode"], json.loads(response["body"])


def ranking(body) -> list[str]:
    return [r["product_id"] for r in body["results"]]


def look_alikes(app, product: str) -> list[str]:
    """The other products by how close their stored images' mean is to ``product``'s."""
    store = app.api.catalog.spaces.current().store
    ids = sorted({h.payload["product_id"] for h in store.scroll()})
    centroid = {p: store.product_vectors(p).mean(axis=0) for p in ids}
    unit = {p: v / np.linalg.norm(v) for p, v in centroid.items()}
    return sorted((p for p in ids if p != product), key=lambda p: -float(unit[p] @ unit[product]))


def test_not_this_leaves_the_page_and_its_look_alikes_fall(app, demo_images):
    shifts = []
    for index in range(0, 60, 10):  # a photo of six products
        photo = query_photo(demo_images, index)
        status, before = search(app, photo)
        assert status == 200 and len(before["results"]) == 10
        rejected = ranking(before)[0]
        status, after = search(app, photo, negative=[rejected])
        assert status == 200, after
        assert rejected not in ranking(after)
        for alike in look_alikes(app, rejected)[:2]:
            if alike in ranking(before) and alike in ranking(after):
                # Left alone (the rejected product only filtered out), it would move up one place.
                left_alone = ranking(before).index(alike) - 1
                shifts.append(ranking(after).index(alike) - left_alone)
    # The rejected products' nearest look-alikes fall below where they would have been.
    assert len(shifts) >= 6 and sum(shifts) / len(shifts) > 0, shifts


def test_more_like_this_raises_the_product_and_point_ids_work(app, demo_images):
    photo = query_photo(demo_images, 20)
    _, before = search(app, photo)
    wanted = ranking(before)[5]
    _, after = search(app, photo, positive=[wanted])
    assert ranking(after).index(wanted) < 5
    # An image of a result, by its point id: the same effect on its product, as "not this" too.
    image = next(r["image"] for r in before["results"] if r["product_id"] == wanted)
    pid = point_id(image["bucket"], image["key"])
    _, by_point = search(app, photo, positive=[pid])
    assert ranking(by_point).index(wanted) < 5
    _, away = search(app, photo, negative=[pid.upper()])
    assert wanted not in ranking(away)
    # The query string and form fields take comma-separated ids.
    event = rest_event(
        "POST",
        f"/search?negative={ranking(before)[0]},{ranking(before)[1]}",
        body=photo,
        content_type="image/jpeg",
    )
    response = app.handler(event, LambdaContext())
    body = json.loads(response["body"])
    assert response["statusCode"] == 200 and not set(ranking(before)[:2]) & set(ranking(body))


@pytest.mark.parametrize(
    "options, where",
    [
        ({"positive": ["No-Such-Product"]}, ["positive", "0"]),
        ({"negative": ["Oatly-Oat-Milk", "00000000-0000-0000-0000-000000000000"]}, ["negative", "1"]),
        ({"positive": [""]}, ["positive", "0"]),
        ({"negative": ["bad\x00id"]}, ["negative", "0"]),
        ({"negative": ["\ud800"]}, ["negative", "0"]),
        ({"positive": ["Oatly-Oat-Milk"] * (MAX_EXAMPLES + 1)}, ["positive"]),
        ({"positive": "Oatly-Oat-Milk"}, ["positive"]),
    ],
)
def test_bad_examples_are_a_422_that_names_them(app, demo_images, options, where):
    status, body = search(app, query_photo(demo_images, 3), **options)
    assert status == 422, body
    locs = [d.get("loc") for d in body["error"].get("details") or []]
    assert any(loc[: len(where)] == where for loc in locs if loc), (locs, body)
