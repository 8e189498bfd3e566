"""The search API's contract fixes of issue 14: region search (`crop`), `next_offset` null when no
result follows, every image type the decoder reads (and octet-stream, sniffed), 405 for a known
route's wrong method, case-sensitive keyword filter values, the last of a repeated field,
upload URLs bound to a stated size."""

from __future__ import annotations

import base64
import io
import json
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from PIL import Image

from tests.integration.test_region_search import LEFT, RIGHT, collage
from tests.integration.test_search_api import (  # noqa: F401 - fixtures
    assert_error,
    call,
    catalog,
    env,
    products,
    query_photo,
)
from tests.support.apigw import json_event, multipart_body, rest_event

LEFT_HALF = {"x": 0, "y": 0, "width": 0.5, "height": 1}
RIGHT_HALF = {"x": 0.5, "y": 0, "width": 0.5, "height": 1}


def test_crop_as_a_json_field_a_query_parameter_and_a_form_field(env, catalog, demo_images):
    photo = collage(demo_images)
    encoded = base64.b64encode(photo).decode()
    status, body, _ = call(
        env, json_event("POST", "/search", {"image": encoded, "top_k": 1, "crop": LEFT_HALF})
    )
    assert status == 200 and products(body) == [LEFT]
    query = f"/search?top_k=1&crop={quote(json.dumps(RIGHT_HALF))}"
    status, body, _ = call(env, rest_event("POST", query, body=photo, content_type="image/jpeg"))
    assert status == 200 and products(body) == [RIGHT]
    data, content_type = multipart_body({"top_k": "1", "crop": json.dumps(LEFT_HALF)}, photo)
    status, body, _ = call(env, rest_event("POST", "/search", body=data, content_type=content_type))
    assert status == 200 and products(body) == [LEFT]


@pytest.mark.parametrize(
    "crop",
    [
        {"x": 0.6, "y": 0, "width": 0.5, "height": 1},  # past the right edge
        {"x": 0, "y": 0.2, "width": 1, "height": 0.9},  # past the bottom
        {"x": 0, "y": 0, "width": 0, "height": 1},  # empty
        {"x": -0.1, "y": 0, "width": 0.5, "height": 0.5},
        {"x": 0, "y": 0, "width": 0.5},  # no height
        "not json",
    ],
)
def test_a_crop_outside_the_image_or_empty_is_422(env, catalog, demo_images, crop):
    value = crop if isinstance(crop, str) else json.dumps(crop)
    status, body, _ = call(
        env,
        rest_event(
            "POST", f"/search?crop={quote(value)}", body=query_photo(demo_images), content_type="image/jpeg"
        ),
    )
    assert_error(status, body, 422, "invalid_options")
    assert body["error"]["details"][0]["loc"][0] == "crop"


def test_crop_is_refused_where_there_is_no_query_image(env, catalog):
    query = quote(json.dumps(LEFT_HALF))
    status, body, _ = call(env, rest_event("GET", f"/products/{LEFT}/similar?crop={query}"))
    assert_error(status, body, 422, "invalid_options")


def test_next_offset_is_null_when_no_result_follows(env, catalog, demo_images):
    photo = base64.b64encode(query_photo(demo_images, 9)).decode()
    last = call(env, json_event("POST", "/search", {"image": photo, "top_k": 5, "offset": 5}))[1]
    assert len(last["results"]) == 5 and last["next_offset"] is None  # 10 products in all
    first = call(env, json_event("POST", "/search", {"image": photo, "top_k": 5}))[1]
    assert first["next_offset"] == 5


@pytest.mark.parametrize("fmt,media", [("GIF", "image/gif"), ("BMP", "image/bmp"), ("TIFF", "image/tiff")])
def test_every_image_type_the_decoder_reads_is_accepted(env, catalog, demo_images, fmt, media):
    buffer = io.BytesIO()
    Image.open(io.BytesIO(query_photo(demo_images, 21))).save(buffer, fmt)
    status, body, _ = call(
        env, rest_event("POST", "/search?top_k=1", body=buffer.getvalue(), content_type=media)
    )
    assert status == 200 and products(body) == [demo_images[21].metadata["product-id"]]


def test_octet_stream_is_sniffed(env, catalog, demo_images):
    photo = query_photo(demo_images, 33)
    status, body, _ = call(
        env, rest_event("POST", "/search?top_k=1", body=photo, content_type="application/octet-stream")
    )
    assert status == 200 and products(body) == [demo_images[33].metadata["product-id"]]
    status, body, _ = call(
        env,
        rest_event("POST", "/search", body=b"%PDF-1.7 not a photo", content_type="application/octet-stream"),
    )
    assert_error(status, body, 400, "unsupported_image")


@pytest.mark.parametrize("method,path,allow", [("GET", "/search", "POST"), ("POST", "/health", "GET")])
def test_a_known_route_with_another_method_is_405(env, method, path, allow):
    status, body, headers = call(env, rest_event(method, path))
    assert_error(status, body, 405, "method_not_allowed")
    assert headers["Allow"] == allow


def test_keyword_filter_values_are_case_sensitive(env, catalog, demo_images):
    photo = query_photo(demo_images, 0)
    ok = call(env, rest_event("POST", "/search?category=Milk", body=photo, content_type="image/jpeg"))[1]
    lower = call(env, rest_event("POST", "/search?category=milk", body=photo, content_type="image/jpeg"))[1]
    assert ok["results"] and lower["results"] == []


def test_a_field_repeated_in_the_query_string_counts_its_last_value(env, catalog, demo_images):
    photo = query_photo(demo_images, 0)
    status, body, _ = call(
        env, rest_event("POST", "/search?top_k=3&top_k=5", body=photo, content_type="image/jpeg")
    )
    assert status == 200 and len(body["results"]) == 5


def test_an_upload_url_is_bound_to_a_stated_size(env):
    status, body, _ = call(
        env, json_event("POST", "/uploads", {"content_type": "image/gif", "content_length": 1234})
    )
    assert status == 200 and body["headers"] == {"Content-Type": "image/gif", "Content-Length": "1234"}
    signed = parse_qs(urlsplit(body["upload_url"]).query)["X-Amz-SignedHeaders"][0].split(";")
    assert "content-length" in signed and "content-type" in signed
    status, body, _ = call(env, json_event("POST", "/uploads", {"content_length": 10**9}))
    assert_error(status, body, 413, "image_too_large")
