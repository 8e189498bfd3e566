"""The pure parsers on their own: query-string / form options, merging them with a body, the
filter model -> the domain Filter, and S3 notifications -> S3Change."""

from __future__ import annotations

import json

import pytest

from visual_search.api.models import Filters, SearchOptions, merge_options, options_from_fields, parse_options
from visual_search.domain import Filter, Range
from visual_search.errors import InvalidOptions
from visual_search.ingest.events import EventError, is_newer, parse_s3_record, parse_sqs_body


def record(name="ObjectCreated:Put", key="catalog/p1/a+b%C3%A9.jpg", **obj):
    return {"eventName": name, "s3": {"bucket": {"name": "shop"}, "object": {"key": key, **obj}}}


# -- options ------------------------------------------------------------------------------


def test_flat_filters_split_on_commas_and_repeat():
    raw = options_from_fields({"category": ["Milk, Juice"], "brand": ["A", "B"], "top_k": ["3"]})
    assert raw == {"top_k": "3", "filters": {"category": ["Milk", "Juice"], "brand": ["A", "B"]}}
    options = parse_options(SearchOptions, raw)
    assert options.top_k == 3 and options.filters.category == ["Milk", "Juice"]


def test_price_min_max_make_one_range():
    raw = options_from_fields({"price_min": ["1"], "price_max": ["2.5"]})
    assert raw == {"filters": {"price": {"gte": "1", "lte": "2.5"}}}


def test_json_filters_field_and_a_flat_filter_combine():
    raw = options_from_fields({"filters": [json.dumps({"brand": "A"})], "category": ["Milk"]})
    assert raw["filters"] == {"brand": "A", "category": "Milk"}


@pytest.mark.parametrize(
    "fields",
    [
        {"filters": [json.dumps({"category": "A"})], "category": ["B"]},
        {"filters": [json.dumps({"price": {"gte": 1}})], "price_max": ["3"]},
        {"filters": ["{not json"]},
        {"filters": ["[1, 2]"]},
    ],
)
def test_conflicting_or_broken_fields_are_invalid_options(fields):
    with pytest.raises(InvalidOptions) as info:
        options_from_fields(fields)
    assert info.value.details and info.value.details[0]["loc"][0] == "filters"


def test_merge_keeps_both_sides_and_refuses_the_same_option_twice():
    merged = merge_options(
        {"top_k": 5, "filters": {"brand": "A"}}, {"offset": "10", "filters": {"category": "M"}}
    )
    assert merged == {"top_k": 5, "offset": "10", "filters": {"brand": "A", "category": "M"}}
    with pytest.raises(InvalidOptions, match="top_k is given both"):
        merge_options({"top_k": 5}, {"top_k": "6"})
    with pytest.raises(InvalidOptions, match="filter brand is given both"):
        merge_options({"filters": {"brand": "A"}}, {"filters": {"brand": "B"}})


@pytest.mark.parametrize(
    "raw",
    [{"top_k": 0}, {"top_k": 2.5}, {"top_k": True}, {"offset": 5000}, {"unknown": 1}, {"score_threshold": 3}],
)
def test_out_of_range_options_are_refused(raw):
    with pytest.raises(InvalidOptions):
        parse_options(SearchOptions, raw)


# -- filters ------------------------------------------------------------------------------


def test_the_filter_model_becomes_the_domain_filter():
    model = Filters.model_validate(
        {"category": "Milk", "brand": ["A", "B"], "price": {"gte": 1, "lt": 3}, "Colour": True}
    )
    got = model.to_filter()
    assert got.category == ("Milk",) and got.brand == ("A", "B")
    assert got.price == Range(gte=1.0, lt=3.0)
    assert got.metadata == {"colour": ("true",)}  # S3 metadata: lower-case names, string values


@pytest.mark.parametrize(
    "raw",
    [
        {"price": {"gte": 5, "lte": 1}},
        {"price": {"gt": 2, "lt": 2}},
        {"price": {}},
        {"bucket": "other"},
        {"bad.key": "x"},
        {"category": []},
        {"category": ["x"] * 51},
    ],
)
def test_bad_filters_are_refused(raw):
    with pytest.raises(InvalidOptions):
        parse_options(SearchOptions, {"filters": raw})


def test_filter_of_the_plain_form():
    got = Filter.of({"category": "Milk", "metadata.colour": "red", "size": ["S", "M"], "price": {"lte": 2}})
    assert got.category == ("Milk",) and got.price == Range(lte=2.0)
    assert got.metadata == {"colour": ("red",), "size": ("S", "M")}
    assert Filter.of(None).empty and Filter.of(got) is got
    with pytest.raises(ValueError):
        Filter.of({"price": {"about": 2}})


# -- S3 events ----------------------------------------------------------------------------


def test_an_s3_record_becomes_a_change_with_its_key_decoded():
    change = parse_s3_record(record(size=12, sequencer="00AB", eTag="e1", versionId="v1"))
    assert (change.bucket, change.key, change.kind) == ("shop", "catalog/p1/a bé.jpg", "created")
    assert (change.size, change.sequencer, change.etag, change.version_id) == (12, "00AB", "e1", "v1")
    assert parse_s3_record(record("ObjectRemoved:Delete")).kind == "removed"


@pytest.mark.parametrize(
    "bad",
    [
        {"eventName": "ObjectCreated:Put"},
        record("ObjectRestore:Completed"),
        record(key=""),
        record(size="big"),
        record(sequencer="not-hex"),
    ],
)
def test_bad_s3_records_are_event_errors(bad):
    with pytest.raises(EventError):
        parse_s3_record(bad)


def test_sqs_bodies_direct_via_sns_and_test_events():
    direct = json.dumps({"Records": [record()]})
    assert [c.key for c in parse_sqs_body(direct)] == ["catalog/p1/a bé.jpg"]
    via_sns = json.dumps({"Type": "Notification", "Message": direct})
    assert len(parse_sqs_body(via_sns)) == 1
    assert parse_sqs_body(json.dumps({"Event": "s3:TestEvent"})) == []
    for bad in ("not json", "[]", json.dumps({"Records": "x"})):
        with pytest.raises(EventError):
            parse_sqs_body(bad)


def test_sequencers_compare_after_padding():
    assert is_newer("0A1", "0A0") and not is_newer("0A0", "0A1")
    assert not is_newer("0A10", "0A1")  # "0A1" pads to "0A10...": the same position
    assert is_newer(None, "0A") and is_newer("0A", None)
