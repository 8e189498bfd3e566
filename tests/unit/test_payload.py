"""How an S3 object's key and user metadata become a product payload."""

from __future__ import annotations

import pytest

from visual_search.api.models import RESERVED
from visual_search.api.responses import INTERNAL_PAYLOAD
from visual_search.catalog import (
    DESCRIPTIVE_FIELDS,
    ImageSource,
    build_payload,
    is_image_key,
    parse_price,
    product_id_for,
)
from visual_search.domain import RECORD_FIELDS


@pytest.mark.parametrize(
    "key,metadata,expected",
    [
        ("catalog/shoes/sku-123/front.jpg", {}, "sku-123"),
        ("front.jpg", {}, "front"),
        ("a/b.png", {"product-id": "P-9"}, "P-9"),
        ("a/b.png", {"product-id": "  "}, "a"),
    ],
)
def test_product_id(key, metadata, expected):
    assert product_id_for(key, metadata) == expected


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("12.5", 12.5),
        ("3,99", 3.99),
        ("", None),
        ("cheap", None),
        (None, None),
        ("nan", None),
        ("1,299.00", 1299.0),
        ("1,299", 1299.0),
        ("1.299,50", 1299.5),
        ("1 299,50", 1299.5),
        ("1,299,000", 1299000.0),
        ("1.299.000", 1299000.0),
        ("$5", 5.0),
        ("€12", 12.0),
        ("12.50 EUR", 12.5),
        ("CHF 1'299.90", 1299.9),
        ("-5", None),
        ("- 5", None),
        ("inf", None),
        ("1e400", None),
        ("12 or 13", None),
        ("about 12", None),
        ("0", 0.0),
    ],
)
def test_price(raw, expected):
    assert parse_price(raw) == expected


def test_payload_fields():
    source = ImageSource(
        "bucket",
        "shop/sku-1/a.jpg",
        b"x" * 10,
        {"Category": "shoes", "brand": "Acme", "price": "19.90", "title": "Runner", "colour": "red"},
        content_type="image/jpeg",
        etag="abc",
        sequencer="00A",
    )
    payload = build_payload(source, "model-1")
    assert payload["product_id"] == "sku-1" and payload["category"] == "shoes"
    assert payload["price"] == 19.9 and isinstance(payload["price"], float)
    assert payload["metadata"] == {"colour": "red"}
    assert payload["bucket"] == "bucket" and payload["key"] == "shop/sku-1/a.jpg"
    assert payload["size"] == 10 and payload["etag"] == "abc" and payload["model_id"] == "model-1"
    assert payload["indexed_at"].endswith("+00:00")


def test_every_payload_field_is_the_products_or_the_images_record():
    """A field added to the payload is either the product's (compared on re-ingest) or part of
    the image's record (hidden from results, refused as a filter): never neither."""
    source = ImageSource(
        "bucket",
        "shop/sku-1/a.jpg",
        b"x",
        {"category": "shoes", "brand": "Acme", "price": "1", "title": "Runner", "colour": "red"},
        content_type="image/jpeg",
        etag="abc",
        version_id="v1",
        sequencer="00A",
    )
    fields = set(build_payload(source, "model-1"))
    # a shopper view's record (visual_search.feedback); "held" is set by its review, not by ingest
    view_only = {"source", "search_id", "held"}
    assert fields == set(DESCRIPTIVE_FIELDS) | (RECORD_FIELDS - view_only)
    view = ImageSource(
        "bucket",
        "shopper-views/sku-1/f00.jpg",
        b"x",
        {**source.metadata, "product-id": "sku-1", "source": "shopper", "search-id": "f00"},
    )
    payload = build_payload(view, "model-1")
    assert set(payload) == set(DESCRIPTIVE_FIELDS) | (
        RECORD_FIELDS - {"version_id", "etag", "sequencer", "content_type", "held"}
    )
    assert (
        payload["source"] == "shopper" and payload["search_id"] == "f00" and payload["product_id"] == "sku-1"
    )
    assert "source" not in payload["metadata"] and payload["metadata"] == {"colour": "red"}
    assert not set(DESCRIPTIVE_FIELDS) & RECORD_FIELDS
    assert RECORD_FIELDS <= RESERVED and RECORD_FIELDS <= INTERNAL_PAYLOAD
    assert not (set(DESCRIPTIVE_FIELDS) - {"title", "metadata"}) & RESERVED  # the product's are filters


@pytest.mark.parametrize(
    "key,content_type,expected",
    [
        ("a.JPG", None, True),
        ("a.webp", None, True),
        ("a.txt", None, False),
        ("a", "image/png", True),
        ("notes.csv", "text/csv", False),
    ],
)
def test_is_image_key(key, content_type, expected):
    assert is_image_key(key, content_type) is expected


def test_rfc2047_metadata_is_decoded():
    source = ImageSource(
        "b", "k/a.jpg", b"x", {"title": "=?UTF-8?B?Q2Fmw6kgQ3LDqG1l?=", "brand": "=?utf-8?q?K=C3=A4se?="}
    )
    payload = build_payload(source, "m")
    assert payload["title"] == "Café Crème" and payload["brand"] == "Käse"
