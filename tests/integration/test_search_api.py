"""The search function through API Gateway REST proxy events: every input form, filter,
grouping, threshold, pagination, similar products, uploads, health and each error code, against
embedded Qdrant holding the demo catalogue embedded by the real model."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import boto3
import pytest
from moto import mock_aws
from PIL import Image, ImageOps

from tests.conftest import jpeg_bytes
from tests.support.apigw import json_event, multipart_body, rest_event
from visual_search.api import SearchApi
from visual_search.catalog import ImageSource
from visual_search.config import StoreSettings, load_settings
from visual_search.dev.lambdas import LambdaContext, load_function
from visual_search.store import CatalogStore

BUCKET = "product-images"
EVENTS = Path(__file__).resolve().parents[2] / "events"
ERROR_KEYS = {"code", "message"}


@pytest.fixture(scope="module")
def env():
    with pytest.MonkeyPatch.context() as mp, mock_aws():
        mp.setenv("QDRANT_PATH", ":memory:")
        mp.delenv("QDRANT_URL", raising=False)
        mp.setenv("BUCKET", BUCKET)
        mp.setenv("UPLOAD_PREFIX", "query-uploads/")
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        app = load_function("search")
        yield app, s3


@pytest.fixture(scope="module")
def catalog(env, demo_images):
    """The demo catalogue indexed from moto S3, with a 'colour' metadata key on half of it."""
    app, s3 = env
    sources = []
    for n, img in enumerate(demo_images):
        metadata = {**img.metadata, "colour": "red" if n % 2 else "blue"}
        key = f"catalog/{img.key}"
        s3.put_object(Bucket=BUCKET, Key=key, Body=img.path.read_bytes(), Metadata=metadata)
        sources.append(ImageSource(BUCKET, key, img.path.read_bytes(), metadata))
    app.api.catalog.index(sources)
    return {img.metadata["product-id"]: img.metadata for img in demo_images}


def call(env, event) -> tuple[int, dict, dict]:
    app, _ = env
    response = app.handler(event, LambdaContext())
    return response["statusCode"], json.loads(response["body"]), headers_of(response)


def headers_of(response: dict) -> dict:
    """A REST proxy response's headers (Powertools answers with multiValueHeaders)."""
    headers = dict(response.get("headers") or {})
    headers.update({k: v[-1] for k, v in (response.get("multiValueHeaders") or {}).items()})
    return headers


def query_photo(demo_images, index=0) -> bytes:
    """A mirrored, cropped copy of a catalogue photo, as a shopper's own snapshot might be."""
    image = Image.open(demo_images[index].path).convert("RGB")
    w, h = image.size
    return jpeg_bytes(ImageOps.mirror(image).crop((w // 10, h // 10, w - w // 10, h - h // 10)))


def product_of(demo_images, index=0) -> str:
    return demo_images[index].metadata["product-id"]


def products(body) -> list[str]:
    return [r["product_id"] for r in body["results"]]


# -- input forms -------------------------------------------------------------------------------


def test_json_base64(env, catalog, demo_images):
    photo = query_photo(demo_images, 13)
    status, body, _ = call(
        env, json_event("POST", "/search", {"image": base64.b64encode(photo).decode(), "top_k": 5})
    )
    assert status == 200
    assert products(body)[0] == product_of(demo_images, 13)
    assert len(body["results"]) == 5 and body["model"] == env[0].api.catalog.model_id
    assert set(body["timings_ms"]) == {"decode", "embed", "search", "total"}
    first = body["results"][0]
    assert set(first) == {"product_id", "score", "confidence", "image", "metadata"}
    assert first["confidence"] is None and body["no_match"] is False  # not calibrated: never adapted
    assert first["image"]["bucket"] == BUCKET and first["image"]["key"].startswith("catalog/")
    assert first["image"]["url"].startswith("https://")
    assert first["metadata"]["category"] == catalog[first["product_id"]]["category"]
    assert isinstance(first["metadata"]["price"], float)
    for internal in ("sequencer", "model_id", "etag", "indexed_at"):
        assert internal not in first["metadata"]


def test_json_data_url(env, catalog, demo_images):
    photo = base64.b64encode(query_photo(demo_images, 40)).decode()
    status, body, _ = call(env, json_event("POST", "/search", {"image": f"data:image/jpeg;base64,{photo}"}))
    assert status == 200 and products(body)[0] == product_of(demo_images, 40)


def test_raw_binary_body_with_query_options(env, catalog, demo_images):
    photo = query_photo(demo_images, 25)
    status, body, _ = call(
        env, rest_event("POST", "/search?top_k=3&brand=Arla,Oatly", body=photo, content_type="image/jpeg")
    )
    assert status == 200 and len(body["results"]) == 3
    assert {catalog[p]["brand"] for p in products(body)} <= {"Arla", "Oatly"}


def test_multipart_form(env, catalog, demo_images):
    data, content_type = multipart_body(
        {"top_k": "4", "category": "Milk", "price_max": "1.6"}, query_photo(demo_images, 0)
    )
    status, body, _ = call(env, rest_event("POST", "/search", body=data, content_type=content_type))
    assert status == 200 and body["results"]
    for p in products(body):
        assert catalog[p]["category"] == "Milk" and float(catalog[p]["price"]) <= 1.6


def test_s3_key_of_an_upload(env, catalog, demo_images):
    _app, s3 = env
    status, upload, _ = call(env, json_event("POST", "/uploads", {"content_type": "image/jpeg"}))
    assert status == 200 and upload["s3_key"].startswith("query-uploads/")
    s3.put_object(
        Bucket=BUCKET, Key=upload["s3_key"], Body=query_photo(demo_images, 50), ContentType="image/jpeg"
    )
    status, body, _ = call(env, json_event("POST", "/search", {"s3_key": upload["s3_key"]}))
    assert status == 200 and products(body)[0] == product_of(demo_images, 50)
    status, body, _ = call(env, json_event("POST", "/search", {"s3_key": "query-uploads/none.jpg"}))
    assert status == 404 and body["error"]["code"] == "not_found"


def test_upload_url_is_short_lived_and_bound_to_key_and_type(env):
    status, upload, _ = call(env, json_event("POST", "/uploads", {"content_type": "image/png"}))
    assert status == 200 and upload["method"] == "PUT"
    url = urlsplit(upload["upload_url"])
    params = parse_qs(url.query)
    assert url.path.endswith(upload["s3_key"]) and upload["s3_key"].endswith(".png")
    assert int(params["X-Amz-Expires"][0]) == upload["expires_in"] <= 900
    assert "content-type" in params["X-Amz-SignedHeaders"][0]
    assert upload["headers"] == {"Content-Type": "image/png"}
    status, body, _ = call(env, json_event("POST", "/uploads", {"content_type": "text/html"}))
    assert status == 415 and body["error"]["code"] == "unsupported_media_type"


# -- filters, grouping, threshold, pages ----------------------------------------------------------

FILTERS = [
    ({"category": "Milk"}, lambda m: m["category"] == "Milk"),
    ({"category": ["Juice", "Yoghurt"]}, lambda m: m["category"] in ("Juice", "Yoghurt")),
    ({"brand": "Alpro"}, lambda m: m["brand"] == "Alpro"),
    ({"brand": ["Arla", "Valio"]}, lambda m: m["brand"] in ("Arla", "Valio")),
    (
        {"product_id": ["Oatly-Oat-Milk", "Bravo-Apple-Juice"]},
        lambda m: m["product-id"] in ("Oatly-Oat-Milk", "Bravo-Apple-Juice"),
    ),
    ({"price": {"gte": 2.0, "lte": 2.5}}, lambda m: 2.0 <= float(m["price"]) <= 2.5),
    ({"price": {"gt": 2.49}}, lambda m: float(m["price"]) > 2.49),
    (
        {"category": "Yoghurt", "price": {"lte": 2.8}},
        lambda m: m["category"] == "Yoghurt" and float(m["price"]) <= 2.8,
    ),
]


@pytest.mark.parametrize("filters,allowed", FILTERS, ids=[json.dumps(f[0]) for f in FILTERS])
@pytest.mark.parametrize("group", [True, False])
def test_filters_never_leak(env, catalog, demo_images, filters, allowed, group):
    expected = {p for p, m in catalog.items() if allowed(m)}
    status, body, _ = call(
        env,
        json_event(
            "POST",
            "/search",
            {
                "image": base64.b64encode(query_photo(demo_images, 7)).decode(),
                "top_k": 100,
                "group_by_product": group,
                "filters": filters,
            },
        ),
    )
    assert status == 200
    found = set(products(body))
    assert found == expected  # everything allowed is found, nothing else
    if not group:
        assert len(body["results"]) == 6 * len(expected)


def test_metadata_filter(env, catalog, demo_images):
    status, body, _ = call(
        env,
        json_event(
            "POST",
            "/search",
            {
                "image": base64.b64encode(query_photo(demo_images, 7)).decode(),
                "top_k": 100,
                "group_by_product": False,
                "filters": {"colour": "red"},
            },
        ),
    )
    assert status == 200 and len(body["results"]) == 30
    assert all(r["metadata"]["colour"] == "red" for r in body["results"])


def test_price_range_in_query_string(env, catalog, demo_images):
    status, body, _ = call(
        env,
        rest_event(
            "POST",
            "/search?top_k=100&price_min=1.5&price_max=2.2",
            body=query_photo(demo_images, 3),
            content_type="image/jpeg",
        ),
    )
    assert status == 200
    assert set(products(body)) == {p for p, m in catalog.items() if 1.5 <= float(m["price"]) <= 2.2}


def test_grouping_on_and_off(env, catalog, demo_images):
    photo = base64.b64encode(query_photo(demo_images, 5)).decode()
    _, grouped, _ = call(env, json_event("POST", "/search", {"image": photo, "top_k": 20}))
    _, flat, _ = call(
        env, json_event("POST", "/search", {"image": photo, "top_k": 20, "group_by_product": False})
    )
    assert len(products(grouped)) == len(set(products(grouped))) == 10
    assert len(flat["results"]) == 20 and len(set(products(flat))) < 20


def test_score_threshold(env, catalog, demo_images):
    photo = base64.b64encode(query_photo(demo_images, 5)).decode()
    _, body, _ = call(
        env,
        json_event(
            "POST",
            "/search",
            {"image": photo, "top_k": 100, "group_by_product": False, "score_threshold": 0.75},
        ),
    )
    scores = [r["score"] for r in body["results"]]
    assert scores and min(scores) >= 0.75 and len(scores) < 60


@pytest.mark.parametrize("group", [True, False])
def test_pagination_has_no_duplicates_or_gaps(env, catalog, demo_images, group):
    photo = base64.b64encode(query_photo(demo_images, 9)).decode()
    _, everything, _ = call(
        env, json_event("POST", "/search", {"image": photo, "top_k": 100, "group_by_product": group})
    )
    pages, offset = [], 0
    while offset is not None:
        _, page, _ = call(
            env,
            json_event(
                "POST", "/search", {"image": photo, "top_k": 7, "offset": offset, "group_by_product": group}
            ),
        )
        pages += [(r["product_id"], r["image"]["key"]) for r in page["results"]]
        offset = page["next_offset"]
    assert pages == [(r["product_id"], r["image"]["key"]) for r in everything["results"]]
    assert len(pages) == (10 if group else 60) and len(set(pages)) == len(pages)


def test_next_offset_never_points_past_the_offset_limit(env, catalog, demo_images, monkeypatch):
    import visual_search.api.responses as api_module

    monkeypatch.setattr(api_module, "MAX_OFFSET", 20)
    photo = base64.b64encode(query_photo(demo_images, 9)).decode()
    pages = {
        offset: call(
            env,
            json_event(
                "POST", "/search", {"image": photo, "top_k": 10, "offset": offset, "group_by_product": False}
            ),
        )[1]
        for offset in (10, 15)
    }
    assert pages[10]["next_offset"] == 20 and len(pages[15]["results"]) == 10
    assert pages[15]["next_offset"] is None  # offset 25 would be refused


@pytest.mark.parametrize(
    "query",
    [
        "?price_min=1&filters=" + json.dumps({"price": {"gte": 2.5}}),
        "?filters=" + json.dumps({"price": {"gte": 2.5}}) + "&price_min=1",
        "?brand=Valio&filters=" + json.dumps({"brand": "Arla"}),
        "?filters=" + json.dumps({"brand": "Arla"}) + "&brand=Valio",
    ],
)
def test_a_filter_given_twice_is_a_conflict_whatever_the_order(env, catalog, demo_images, query):
    event = rest_event("POST", "/search" + query, body=query_photo(demo_images, 2), content_type="image/jpeg")
    status, body, _ = call(env, event)
    assert status == 422 and body["error"]["details"][0]["msg"] == "conflict", body


@pytest.mark.parametrize(
    "value,status", [("banana", 422), ("", 422), ("false", 200), ("FALSE", 200), ("yes", 200)]
)
def test_group_by_product_in_the_query_string_is_validated(env, catalog, demo_images, value, status):
    event = rest_event(
        "POST",
        f"/search?group_by_product={value}&top_k=20",
        body=query_photo(demo_images, 2),
        content_type="image/jpeg",
    )
    got, body, _ = call(env, event)
    assert got == status, body
    if value.lower() == "false":
        assert len(set(products(body))) < 20  # several images of one product


def test_query_string_options_apply_to_json_and_form_bodies(env, catalog, demo_images):
    photo = query_photo(demo_images, 2)
    as_json = json_event("POST", "/search?top_k=2&category=Milk", {"image": base64.b64encode(photo).decode()})
    status, body, _ = call(env, as_json)
    assert status == 200 and len(body["results"]) == 2
    assert {catalog[p]["category"] for p in products(body)} == {"Milk"}
    form, content_type = multipart_body({"group_by_product": "false"}, photo)
    status, body, _ = call(env, rest_event("POST", "/search?top_k=13", body=form, content_type=content_type))
    assert status == 200 and len(body["results"]) == 13  # more than the 10 products
    twice = json_event("POST", "/search?top_k=2", {"image": base64.b64encode(photo).decode(), "top_k": 5})
    status, body, _ = call(env, twice)
    assert status == 422 and body["error"]["details"][0] == {"loc": ["top_k"], "msg": "conflict"}
    status, _, _ = call(
        env, json_event("POST", "/search?top_k=banana", {"image": base64.b64encode(photo).decode()})
    )
    assert status == 422


def test_line_wrapped_base64_is_accepted(env, catalog, demo_images):
    wrapped = base64.encodebytes(query_photo(demo_images, 13)).decode()  # 76 columns, as base64(1)
    assert "\n" in wrapped.strip()
    status, body, _ = call(env, json_event("POST", "/search", {"image": wrapped}))
    assert status == 200 and products(body)[0] == product_of(demo_images, 13)


def test_metadata_filter_keys_match_whatever_their_case(env, catalog, demo_images):
    photo = base64.b64encode(query_photo(demo_images, 2)).decode()
    answers = [
        call(
            env,
            json_event(
                "POST",
                "/search",
                {"image": photo, "top_k": 100, "group_by_product": False, "filters": {key: "red"}},
            ),
        )[1]
        for key in ("colour", "Colour")
    ]
    assert len(answers[0]["results"]) == 30 and answers[0] == {
        **answers[1],
        "timings_ms": answers[0]["timings_ms"],
        "search_id": answers[0]["search_id"],
    }


def test_a_boolean_filter_matches_metadata_written_as_true(env, catalog, demo_images):
    app, _ = env
    key = "catalog/featured/a.jpg"
    app.api.catalog.index(
        [
            ImageSource(
                BUCKET, key, demo_images[3].path.read_bytes(), {"product-id": "Featured", "featured": "true"}
            )
        ]
    )
    try:
        photo = base64.b64encode(query_photo(demo_images, 2)).decode()
        found = {
            flag: products(
                call(env, json_event("POST", "/search", {"image": photo, "filters": {"featured": flag}}))[1]
            )
            for flag in (True, False)
        }
        assert found == {True: ["Featured"], False: []}
    finally:
        app.api.catalog.remove([(BUCKET, key)])


@pytest.mark.parametrize(
    "price",
    [{"gte": 1, "gt": 3, "lt": 2}, {"gt": 2, "lte": 2}, {"gte": 2, "lt": 2}, {"gt": 1, "gte": 0, "lte": 0.5}],
)
def test_contradictory_price_bounds_are_refused(env, catalog, demo_images, price):
    photo = base64.b64encode(query_photo(demo_images, 2)).decode()
    status, body, _ = call(env, json_event("POST", "/search", {"image": photo, "filters": {"price": price}}))
    assert status == 422 and "lower price bound" in body["error"]["message"]


def test_similar_takes_the_decoded_product_id_of_an_encoded_path(env, catalog, demo_images):
    app, _s3 = env
    product = "Caffè Latte/Large"
    key = "catalog/special/a.jpg"
    data = demo_images[3].path.read_bytes()
    app.api.catalog.index([ImageSource(BUCKET, key, data, {"product-id": product})])
    try:
        # as API Gateway sends it: the path as the client encoded it, the parameter decoded
        event = rest_event(
            "GET",
            "/products/Caff%C3%A8%20Latte%2FLarge/similar?top_k=3",
            resource="/products/{product_id}/similar",
            path_params={"product_id": product},
        )
        status, body, _ = call(env, event)
        assert status == 200 and len(body["results"]) == 3 and product not in products(body)
    finally:
        app.api.catalog.remove([(BUCKET, key)])


# -- similar, health, openapi ------------------------------------------------------------------


def test_similar_products(env, catalog):
    status, body, _ = call(
        env,
        rest_event(
            "GET",
            "/products/Oatly-Oat-Milk/similar?top_k=4",
            resource="/products/{product_id}/similar",
            path_params={"product_id": "Oatly-Oat-Milk"},
        ),
    )
    assert status == 200 and len(body["results"]) == 4
    assert "Oatly-Oat-Milk" not in products(body) and len(set(products(body))) == 4
    assert body["timings_ms"]["embed"] == 0.0
    status, body, _ = call(
        env,
        rest_event(
            "GET",
            "/products/Arla-Sour-Cream/similar?category=Milk",
            resource="/products/{product_id}/similar",
            path_params={"product_id": "Arla-Sour-Cream"},
        ),
    )
    assert status == 200 and {catalog[p]["category"] for p in products(body)} == {"Milk"}


def test_similar_unknown_product_is_404(env, catalog):
    status, body, _ = call(
        env,
        rest_event(
            "GET",
            "/products/nope/similar",
            resource="/products/{product_id}/similar",
            path_params={"product_id": "nope"},
        ),
    )
    assert status == 404 and body["error"]["code"] == "not_found" and "nope" in body["error"]["message"]
    long_id = "x" * 5000
    status, body, _ = call(
        env,
        rest_event(
            "GET",
            f"/products/{long_id}/similar",
            resource="/products/{product_id}/similar",
            path_params={"product_id": long_id},
        ),
    )
    assert status == 404 and len(body["error"]["message"]) < 200  # the id is not echoed whole


def test_health(env, catalog, demo_images):
    status, body, _ = call(env, rest_event("GET", "/health"))
    assert status == 200
    assert body == {
        "status": "ok",
        "model": env[0].api.catalog.model_id,
        "collection": "products",
        "store": "memory",
        "store_reachable": True,
        "points": len(demo_images),  # every photo the catalog fixture indexed, one point each
        "projection": None,  # not adapted: the raw space (see test_adaptation.py)
        "calibration": None,  # nor calibrated (see test_confidence.py)
    }


def test_openapi_document(env):
    status, body, _ = call(env, rest_event("GET", "/openapi.json"))
    assert status == 200 and body["openapi"].startswith("3.")
    assert {"/search", "/products/{product_id}/similar", "/uploads", "/health"} <= set(body["paths"])
    content = body["paths"]["/search"]["post"]["requestBody"]["content"]
    assert {"application/json", "image/jpeg", "image/png", "image/webp", "multipart/form-data"} <= set(
        content
    )
    assert "SearchRequest" in body["components"]["schemas"]


@pytest.mark.parametrize(
    "name",
    [
        "api-search-json.json",
        "api-search-json-filters.json",
        "api-search-binary.json",
        "api-search-multipart.json",
        "api-search-s3-key.json",
        "api-similar.json",
        "api-uploads.json",
        "api-health.json",
        "api-openapi.json",
    ],
)
def test_sample_events(env, catalog, name):
    _app, s3 = env
    if name == "api-search-s3-key.json":
        s3.put_object(
            Bucket=BUCKET,
            Key="query-uploads/example.jpg",
            Body=(EVENTS.parent / "data/demo-catalog/Oatly-Oat-Milk/Oatly-Oat-Milk_011.jpg").read_bytes(),
        )
    status, body, _ = call(env, json.loads((EVENTS / name).read_text()))
    assert status == 200, body
    if name.startswith("api-search") or name == "api-similar.json":
        assert body["results"]
        if name != "api-similar.json":
            assert body["results"][0]["product_id"] == "Oatly-Oat-Milk"


# -- errors ------------------------------------------------------------------------------------


def assert_error(status, body, expected_status, code=None):
    assert status == expected_status, body
    assert set(body) == {"error"} and ERROR_KEYS <= set(body["error"]) <= ERROR_KEYS | {"details"}
    assert "Traceback" not in body["error"]["message"]
    if code:
        assert body["error"]["code"] == code


@pytest.mark.parametrize(
    "payload,status,code",
    [
        ({"image": base64.b64encode(b"plain text, not a photo").decode()}, 400, "unsupported_image"),
        ({"image": "%%% not base64 %%%"}, 400, "invalid_image"),
        ({"image": ""}, 400, "empty_image"),
        ({"top_k": 5}, 422, "invalid_options"),
        ({"image": "aGk=", "s3_key": "x.jpg"}, 422, "invalid_options"),
        ({"image": "aGk=", "top_k": 0}, 422, "invalid_options"),
        ({"image": "aGk=", "top_k": 10000}, 422, "invalid_options"),
        ({"image": "aGk=", "top_k": "ten"}, 422, "invalid_options"),
        ({"image": "aGk=", "offset": -1}, 422, "invalid_options"),
        ({"image": "aGk=", "colour": "red"}, 422, "invalid_options"),
        ({"image": "aGk=", "filters": {"price": "cheap"}}, 422, "invalid_options"),
        ({"image": "aGk=", "filters": {"price": {"gte": 5, "lte": 1}}}, 422, "invalid_options"),
        ({"image": "aGk=", "filters": {"category": {"nested": 1}}}, 422, "invalid_options"),
        ({"image": "aGk=", "filters": {"bad key!": "x"}}, 422, "invalid_options"),
        ({"image": "aGk=", "filters": {"sequencer": "x"}}, 422, "invalid_options"),
        ({"image": "aGk=", "filters": "category=Milk"}, 422, "invalid_options"),
    ],
)
def test_json_errors(env, catalog, payload, status, code):
    s, body, _ = call(env, json_event("POST", "/search", payload))
    assert_error(s, body, status, code)
    if status == 422 and code == "invalid_options" and "image" in payload:
        assert body["error"]["details"][0]["loc"]  # field-level


def test_truncated_jpeg_is_400(env, demo_images):
    data = demo_images[0].path.read_bytes()
    s, body, _ = call(
        env, rest_event("POST", "/search", body=data[: len(data) // 2], content_type="image/jpeg")
    )
    assert_error(s, body, 400, "corrupt_image")


def test_malformed_json_is_400(env):
    s, body, _ = call(env, rest_event("POST", "/search", body='{"image": ', content_type="application/json"))
    assert_error(s, body, 400, "invalid_json")


def test_empty_body_is_400(env):
    s, body, _ = call(env, rest_event("POST", "/search", body="", content_type="image/jpeg"))
    assert_error(s, body, 400, "empty_body")


def test_unsupported_media_type_is_415(env):
    s, body, _ = call(env, rest_event("POST", "/search", body="hello", content_type="text/plain"))
    assert_error(s, body, 415, "unsupported_media_type")


def test_body_over_the_limit_is_413(env):
    s, body, _ = call(
        env, rest_event("POST", "/search", body=b"\xff" * (7 * 1024 * 1024), content_type="image/jpeg")
    )
    assert_error(s, body, 413, "body_too_large")


def test_query_string_errors_are_422(env, demo_images):
    s, body, _ = call(
        env, rest_event("POST", "/search?top_k=ten", body=query_photo(demo_images), content_type="image/jpeg")
    )
    assert_error(s, body, 422, "invalid_options")
    assert body["error"]["details"][0]["loc"] == ["top_k"]
    s, body, _ = call(
        env,
        rest_event(
            "POST", "/search?price_min=cheap", body=query_photo(demo_images), content_type="image/jpeg"
        ),
    )
    assert_error(s, body, 422, "invalid_options")


def test_multipart_without_file_is_400(env):
    data, content_type = multipart_body({"top_k": "3"}, None)
    s, body, _ = call(env, rest_event("POST", "/search", body=data, content_type=content_type))
    assert_error(s, body, 400, "no_image")


def test_unknown_route_is_404(env):
    s, body, _ = call(env, rest_event("GET", "/nope"))
    assert_error(s, body, 404, "not_found")


def test_store_unreachable_is_503_with_retry_after(env, qdrant_shim, embedder):
    app, s3 = env
    settings = load_settings()
    store = CatalogStore.open(
        StoreSettings(url=qdrant_shim.url, collection="api-outage", timeout_s=2),
        embedder.model_id,
        embedder.dim,
    )
    catalog = type(app.api.catalog)(embedder, store)
    api = SearchApi(catalog, s3, settings)
    qdrant_shim.fail_with = 503
    try:
        response = api.resolve(
            json_event(
                "POST",
                "/search",
                {"image": base64.b64encode(jpeg_bytes(Image.new("RGB", (64, 64), "red"))).decode()},
            ),
            LambdaContext(),
        )
        health = api.resolve(rest_event("GET", "/health"), LambdaContext())
    finally:
        qdrant_shim.fail_with = None
    body = json.loads(response["body"])
    assert_error(response["statusCode"], body, 503, "store_unavailable")
    assert headers_of(response).get("Retry-After") == "5"
    assert json.loads(health["body"])["store_reachable"] is False


def test_cors_headers(env, monkeypatch):
    app, s3 = env
    monkeypatch.setenv("CORS_ORIGINS", "https://shop.example")
    api = SearchApi(app.api.catalog, s3, load_settings())
    response = api.resolve(
        rest_event("GET", "/health", headers={"Origin": "https://shop.example"}), LambdaContext()
    )
    assert headers_of(response)["Access-Control-Allow-Origin"] == "https://shop.example"


def test_several_cors_origins_vary_on_origin(env, monkeypatch):
    app, s3 = env
    monkeypatch.setenv("CORS_ORIGINS", "https://shop.example,https://admin.example")
    api = SearchApi(app.api.catalog, s3, load_settings())
    for origin in ("https://shop.example", "https://admin.example"):
        response = api.resolve(rest_event("GET", "/health", headers={"Origin": origin}), LambdaContext())
        headers = headers_of(response)
        assert headers["Access-Control-Allow-Origin"] == origin and headers["Vary"] == "Origin"


def emitted_metrics(text: str) -> dict:
    """Metric values from the EMF blocks Powertools prints at the end of an invocation."""
    values: dict = {}
    for line in text.splitlines():
        if line.startswith('{"_aws"'):
            block = json.loads(line)
            for metric in block["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
                values[metric["Name"]] = block[metric["Name"]]
    return values


@pytest.mark.parametrize(
    "event,status",
    [
        (rest_event("GET", "/nowhere"), 404),
        ({"httpMethod": "POST", "path": None, "body": 5}, 400),
        (json_event("POST", "/search", {"image": "!!"}), 400),
    ],
)
def test_every_error_answer_is_counted(env, catalog, capsys, monkeypatch, event, status):
    from visual_search.observability import metrics

    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    app, _ = env
    metrics.clear_metrics()  # what earlier tests' direct api.resolve calls left unflushed
    capsys.readouterr()
    assert app.handler(event, LambdaContext())["statusCode"] == status
    assert emitted_metrics(capsys.readouterr().out).get(f"Errors{status}") in (1, 1.0, [1.0])


def test_responses_are_not_sniffed_and_do_not_echo_long_headers(env, catalog):
    event = rest_event("POST", "/search", body=b"x", content_type="text/" + "a" * 9000)
    status, body, headers = call(env, event)
    assert status == 415 and len(body["error"]["message"]) < 300
    assert headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "value", ["a\x00b", "\ud800", "x" * 5000], ids=["nul", "lone-surrogate", "over-long"]
)
def test_a_bad_filter_value_is_a_422_in_every_form(env, catalog, demo_images, value):
    photo = query_photo(demo_images, 5)
    image = base64.b64encode(photo).decode()
    for filters in ({"category": value}, {"colour": value}, {"brand": [value]}):
        status, body, _ = call(env, json_event("POST", "/search", {"image": image, "filters": filters}))
        assert status == 422 and body["error"]["code"] == "invalid_options", (filters, body)
    # The JSON filter object in a form field, and a flat filter in the query string.
    form, content_type = multipart_body({"filters": json.dumps({"category": value})}, photo)
    status, body, _ = call(env, rest_event("POST", "/search", body=form, content_type=content_type))
    assert status == 422, body
    if value != "\ud800":  # a query string is bytes: a lone surrogate cannot be percent-encoded
        status, body, _ = call(
            env,
            rest_event(
                "POST",
                "/search?" + urlencode({"category": value}),
                body=photo,
                content_type="image/jpeg",
            ),
        )
        assert status == 422, body
