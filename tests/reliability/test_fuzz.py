"""Property-based fuzzing of both handlers (hypothesis).

What it proves, for every generated input:

- search (API Gateway REST proxy events): random bytes and mutated real images (JPEG, PNG, GIF,
  BMP, TIFF, WebP seeds with flipped bytes, truncations and spliced tails) as raw image bodies,
  random bytes and random parts as multipart forms, random JSON values and near-valid option
  objects as the JSON body, random filter objects with a valid image, random query strings on
  POST /search and GET /products/{id}/similar: the answer is never 5xx (the store is healthy
  here, so even 503 would be a bug); a 4xx always has the one error shape with no traceback; a
  200 on an unfiltered search has results, and on a filtered one only results inside the filter;
- ingest: random JSON, random text and structurally plausible S3 notifications with random field
  types, bare or wrapped in SNS, as SQS message bodies: the handler never raises (a bad message
  is a batch item failure, unparseable ones always are, and the failures name only messages of
  the batch); random whole events: the handler returns, or raises only its documented
  ``EventError`` (a ValueError) or, for a direct S3 event with transient failures, its
  ``RuntimeError("transient failures: ...")``.

Early runs hit product bugs (metadata filter keys Qdrant reads as paths, bad S3 record sizes and
sequencers, malformed SQS envelopes; fixed in 09fb913, with regression tests in
test_bad_input.py): on the code before the fix the filter-object, SQS and whole-event properties
fail. Sized to run in about half a minute on 2 cores; the counts land in test-artifacts/fuzz.json.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.integration.test_ingest import BUCKET, World, sqs
from tests.integration.test_search_api import catalog, env, headers_of  # noqa: F401 (fixtures)
from tests.reliability.conftest import assert_error, report, write_artifact
from tests.reliability.samples import encode, noise_photo
from tests.support.apigw import json_event, rest_event
from visual_search.api.models import METADATA_KEY
from visual_search.dev.lambdas import LambdaContext, load_function
from visual_search.ingest.events import EventError

pytestmark = [
    pytest.mark.filterwarnings("ignore:No application metrics"),
    pytest.mark.filterwarnings("ignore::UserWarning:PIL"),
]  # corrupt TIFF/EXIF chatter

COUNTS: Counter = Counter()  # examples run per property, and their outcomes
FUZZ = {
    "deadline": None,
    "database": None,
    "derandomize": False,
    "print_blob": True,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
        HealthCheck.filter_too_much,
    ],
}
CLIENT_ERRORS = {400, 404, 413, 415, 422}


@pytest.fixture(scope="module", autouse=True)
def figures():
    yield COUNTS
    if COUNTS:
        write_artifact("fuzz.json", dict(sorted(COUNTS.items())))
        report(f"\nfuzz figures: {dict(sorted(COUNTS.items()))}")


# -- strategies ----------------------------------------------------------------------------------

json_leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
json_values = st.recursive(
    json_leaves,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4),
    max_leaves=16,
)


def _seeds() -> list[bytes]:
    photo = noise_photo((24, 18), seed=11)
    frames = [noise_photo((16, 16), seed=s).convert("P") for s in (1, 2)]
    animated = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    return [
        encode(photo, "JPEG", quality=80),
        encode(photo, "JPEG", progressive=True),
        encode(photo.convert("CMYK"), "JPEG"),
        encode(photo, "PNG"),
        encode(photo.convert("RGBA"), "PNG"),
        encode(photo.convert("P"), "PNG", transparency=0),
        encode(Image.new("I;16", (12, 12), 4000), "PNG"),
        animated,
        encode(photo, "BMP"),
        encode(photo, "TIFF", compression="tiff_lzw"),
        encode(photo, "TIFF"),
        encode(photo, "WEBP", quality=60),
    ]


SEEDS = _seeds()


@st.composite
def mutated_images(draw) -> bytes:
    """A real image with a few bytes flipped, maybe truncated, maybe with a random tail."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.integers(0, 4)) == 0:
        data += draw(st.binary(max_size=64))
    return bytes(data)


image_bytes = st.binary(max_size=2048) | mutated_images()
TINY = encode(noise_photo((8, 8), seed=4), "PNG")
TINY_B64 = base64.b64encode(TINY).decode()
OPTION_NAMES = [
    "top_k",
    "offset",
    "score_threshold",
    "group_by_product",
    "category",
    "brand",
    "product_id",
    "price_min",
    "price_max",
    "filters",
    "min_confidence",
    "positive",
    "negative",
]
filter_keys = (
    st.sampled_from(["category", "brand", "product_id", "price", "colour", "sequencer"])
    | st.from_regex(METADATA_KEY, fullmatch=True)
    | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,20}", fullmatch=True)  # dots, colons
    | st.text(max_size=20)
)
price_ranges = st.fixed_dictionaries({}, optional=dict.fromkeys(("gte", "lte", "gt", "lt"), json_leaves))
filter_objects = st.dictionaries(filter_keys, json_values | price_ranges, max_size=4)
search_objects = st.fixed_dictionaries(
    {"image": st.sampled_from([TINY_B64, f"data:image/png;base64,{TINY_B64}"]) | json_values},
    optional={
        "top_k": st.integers(-5, 150) | json_values,
        "offset": st.integers(-5, 1200) | json_values,
        "score_threshold": st.floats() | json_values,
        "group_by_product": json_values,
        "filters": filter_objects | json_values,
        "min_confidence": st.floats() | json_values,
        "positive": st.lists(
            st.sampled_from(["Oatly-Oat-Milk", "Arla-Sour-Cream"]) | st.text(max_size=20), max_size=3
        )
        | json_values,
        "negative": st.lists(st.text(max_size=40), max_size=3) | json_values,
        "s3_key": json_values,
        "extra": json_values,
    },
)
query_fields = st.dictionaries(
    st.sampled_from(OPTION_NAMES) | st.text(min_size=1, max_size=15),
    st.lists(
        st.text(max_size=30)
        | json_values.map(json.dumps)
        | st.floats().map(str)
        | filter_objects.map(json.dumps),
        min_size=1,
        max_size=3,
    ),
    max_size=5,
)


# -- search --------------------------------------------------------------------------------------


@pytest.fixture
def quiet_codecs():
    """libtiff and libjpeg print warnings about the broken files straight to fd 2: hide them
    while fuzzing images (hypothesis reports failures through exceptions, not stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def call(env, event) -> tuple[int, str, dict]:
    app, _ = env
    response = app.handler(event, LambdaContext())
    return response["statusCode"], response.get("body") or "", headers_of(response)


def check_search(env, event, *, expect_results: bool = False) -> int:
    status, raw, headers = call(env, event)
    assert status < 500, f"{status}: {raw[:300]}"
    if status == 200:
        body = json.loads(raw)
        assert isinstance(body["results"], list) and body["model"]
        if expect_results:
            assert body["results"], "an unfiltered search of a 60-image catalogue found nothing"
    else:
        assert_error(status, raw, headers, CLIENT_ERRORS)
    return status


@settings(max_examples=600, **FUZZ)
@given(data=image_bytes, content_type=st.sampled_from(["image/jpeg", "image/png", "image/webp"]))
def test_random_image_bodies(env, catalog, quiet_codecs, data, content_type):
    status = check_search(
        env, rest_event("POST", "/search", body=data, content_type=content_type), expect_results=True
    )
    COUNTS["search raw image bodies"] += 1
    COUNTS[f"search raw image bodies -> {status}"] += 1


@st.composite
def multipart_bodies(draw) -> tuple[bytes, str]:
    boundary = draw(st.sampled_from(["XyZboundary", "----WebKitFormBoundary7MA4YWxkTrZu0gW"]))
    if draw(st.integers(0, 3)) == 0:  # anything at all under a multipart content type
        params = draw(
            st.sampled_from([f"; boundary={boundary}", "", "; boundary=", '; boundary=""'])
            | st.text(max_size=30)
        )
        return draw(st.binary(max_size=1024)), f"multipart/form-data{params}"
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(
            st.sampled_from(["image", "file", "top_k", "category", "filters", "price_min"])
            | st.text(max_size=10)
        )
        filename = draw(st.none() | st.text(max_size=12))
        headers = f'Content-Disposition: form-data; name="{name}"'
        if filename is not None:
            headers += f'; filename="{filename}"'
        if draw(st.booleans()):
            headers += "\r\nContent-Type: " + draw(
                st.sampled_from(["image/jpeg", "text/plain", ""]) | st.text(max_size=15)
            )
        if draw(st.integers(0, 5)) == 0:
            headers += "\r\nContent-Transfer-Encoding: " + draw(
                st.sampled_from(["base64", "quoted-printable"])
            )
        payload = draw(image_bytes | st.text(max_size=40).map(str.encode))
        parts.append(f"--{boundary}\r\n{headers}\r\n\r\n".encode("utf-8", "replace") + payload + b"\r\n")
    ending = draw(st.sampled_from([f"--{boundary}--\r\n".encode(), b"", b"--" + boundary.encode()]))
    return b"".join(parts) + ending, f"multipart/form-data; boundary={boundary}"


@settings(max_examples=400, **FUZZ)
@given(body=multipart_bodies())
def test_random_multipart_bodies(env, catalog, quiet_codecs, body):
    data, content_type = body
    status = check_search(env, rest_event("POST", "/search", body=data, content_type=content_type))
    COUNTS["search multipart bodies"] += 1
    COUNTS[f"search multipart bodies -> {status}"] += 1


@settings(max_examples=800, **FUZZ)
@given(
    payload=json_values | search_objects,
    content_type=st.sampled_from(["application/json", "application/json; charset=utf-8", "text/json", None]),
)
def test_random_json_bodies(env, catalog, payload, content_type):
    text = json.dumps(payload)
    event = rest_event("POST", "/search", body=text, content_type=content_type)
    status = check_search(env, event)
    COUNTS["search JSON bodies"] += 1
    COUNTS[f"search JSON bodies -> {status}"] += 1


scalars = st.text(max_size=20) | st.integers() | st.floats(allow_nan=False) | st.booleans()
filter_values = scalars | st.lists(scalars, max_size=4) | price_ranges
CATALOGUE_VALUES = st.sampled_from(
    ["Milk", "Juice", "Yoghurt", "Arla", "Alpro", "Oatly", "Oatly-Oat-Milk", "Arla-Sour-Cream"]
)


@settings(max_examples=300, **FUZZ)
@given(
    filters=st.dictionaries(
        filter_keys,
        filter_values | CATALOGUE_VALUES | st.lists(CATALOGUE_VALUES, min_size=1, max_size=3),
        max_size=3,
    ),
    group=st.booleans(),
)
def test_random_filters(env, catalog, filters, group):
    """A valid image with any filter object: 200 or 422, never 5xx; and on 200 the results obey
    the category/brand/product_id/price filters (nothing leaks through)."""
    payload = {"image": TINY_B64, "top_k": 20, "group_by_product": group, "filters": filters}
    status, raw, headers = call(env, json_event("POST", "/search", payload))
    COUNTS["search filter objects"] += 1
    COUNTS[f"search filter objects -> {status}"] += 1
    assert status in (200, 422), f"{status}: {raw[:300]}"
    if status == 422:
        assert_error(status, raw, headers, 422, "invalid_options")
        return
    for hit in json.loads(raw)["results"]:
        for name in ("category", "brand", "product_id"):
            if name in filters:
                allowed = filters[name] if isinstance(filters[name], list) else [filters[name]]
                got = hit["product_id"] if name == "product_id" else hit["metadata"].get(name)
                assert got in allowed, f"{name} filter {allowed} leaked {got!r}"
        bounds = filters.get("price")
        if isinstance(bounds, dict):
            price = hit["metadata"]["price"]
            assert bounds.get("gte") is None or price >= bounds["gte"]
            assert bounds.get("lte") is None or price <= bounds["lte"]
            assert bounds.get("gt") is None or price > bounds["gt"]
            assert bounds.get("lt") is None or price < bounds["lt"]


@settings(max_examples=600, **FUZZ)
@given(
    fields=query_fields,
    route=st.sampled_from(["search", "similar"]),
    product=st.sampled_from(["Oatly-Oat-Milk", "Arla-Sour-Cream"]) | st.text(min_size=1, max_size=20),
)
def test_random_query_strings(env, catalog, fields, route, product):
    if route == "search":
        event = rest_event("POST", "/search", body=TINY, content_type="image/png")
    else:
        event = rest_event(
            "GET",
            "/products/x/similar",
            resource="/products/{product_id}/similar",
            path_params={"product_id": product},
        )
        event["path"] = f"/products/{product}/similar"
    event["queryStringParameters"] = {k: v[-1] for k, v in fields.items()} or None
    event["multiValueQueryStringParameters"] = fields or None
    status = check_search(env, event)
    COUNTS[f"query strings ({route})"] += 1
    COUNTS[f"query strings ({route}) -> {status}"] += 1


# -- ingest --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(env, catalog):
    """The ingest function on the same catalogue and moto S3 as the search function: fuzzed
    events that name real objects re-index them, and searches keep working."""
    ingest = load_function("ingest", fresh_catalog=False)
    _app, s3 = env
    s3.put_object(Bucket=BUCKET, Key="fuzz/good.jpg", Body=SEEDS[0], ContentType="image/jpeg")
    s3.put_object(Bucket=BUCKET, Key="fuzz/corrupt.png", Body=SEEDS[3][:40])
    s3.put_object(Bucket=BUCKET, Key="fuzz/notes.txt", Body=b"hello", ContentType="text/plain")
    return World(ingest, s3)


KEYS = [
    "fuzz/good.jpg",
    "fuzz/corrupt.png",
    "fuzz/notes.txt",
    "fuzz/missing.jpg",
    "catalog/Oatly-Oat-Milk/Oatly-Oat-Milk_011.jpg",
    "fuzz/caf%C3%A9+cr%C3%A8me.jpg",
    "fuzz/",
]


EVENT_NAMES = [
    "ObjectCreated:Put",
    "ObjectCreated:CompleteMultipartUpload",
    "ObjectCreated:Copy",
    "ObjectRemoved:Delete",
    "ObjectRemoved:DeleteMarkerCreated",
    "ObjectRestore:Completed",
]
FIELDS = [
    ("eventName",),
    ("s3",),
    ("s3", "bucket"),
    ("s3", "bucket", "name"),
    ("s3", "object"),
    ("s3", "object", "key"),
    ("s3", "object", "size"),
    ("s3", "object", "sequencer"),
    ("s3", "object", "eTag"),
    ("s3", "object", "versionId"),
]


@st.composite
def s3_records(draw) -> dict:
    """A well-formed S3 record with 0-2 of its fields deleted or replaced by any JSON value:
    deep enough to reach the code behind the parsing, wild enough to break it."""
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": draw(st.sampled_from(EVENT_NAMES)),
        "s3": {
            "bucket": {"name": BUCKET},
            "object": {
                "key": draw(st.sampled_from(KEYS)),
                "size": draw(st.integers(0, 10**6)),
                "sequencer": draw(st.from_regex(r"[0-9A-F]{1,22}", fullmatch=True)),
                "eTag": "d41d8cd98f00b204e9800998ecf8427e",
                "versionId": "null",
            },
        },
    }
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2]))):
        *parents, name = draw(st.sampled_from(FIELDS))
        node = record
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        if draw(st.integers(0, 3)) == 0:
            node.pop(name, None)
        else:
            node[name] = draw(json_values)
    return record


notifications = st.fixed_dictionaries({"Records": st.lists(s3_records(), max_size=3)})
messages = st.one_of(
    notifications,
    notifications,
    notifications,  # mostly plausible, some junk
    st.fixed_dictionaries({"Records": st.lists(s3_records() | json_values, max_size=3)}),
    st.just({"Event": "s3:TestEvent", "Bucket": BUCKET}),
    json_values,
)
sns_wrapped = messages.map(lambda m: {"Type": "Notification", "Message": json.dumps(m)})


@st.composite
def sqs_bodies(draw) -> tuple[str, object]:
    """(body, the parsed message or None when the body is not JSON)."""
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.text(max_size=120)), None
    message = draw(sns_wrapped if kind == 1 else messages)
    return json.dumps(message), message


def parses_as_object(body: str) -> bool:
    try:
        return isinstance(json.loads(body), dict)
    except ValueError:
        return False


@settings(max_examples=400, **FUZZ)
@given(bodies=st.lists(sqs_bodies(), min_size=1, max_size=6))
def test_random_sqs_messages_never_crash_the_batch(world, bodies):
    event = sqs(*({} for _ in bodies))
    for record, (body, _) in zip(event["Records"], bodies):
        record["body"] = body
    COUNTS["ingest SQS batches"] += 1
    COUNTS["ingest SQS messages"] += len(bodies)
    try:
        result = world.invoke(event)
    except Exception as exc:
        raise AssertionError(f"the whole batch crashed: {type(exc).__name__}: {exc}") from exc
    failed = {f["itemIdentifier"] for f in result["batchItemFailures"]}
    ids = [r["messageId"] for r in event["Records"]]
    assert failed <= set(ids)
    for message_id, (body, _) in zip(ids, bodies):
        if not parses_as_object(body):
            assert message_id in failed, "an unreadable message was acknowledged (lost)"
    COUNTS["ingest SQS messages reported failed"] += len(failed)


sqs_envelopes = st.fixed_dictionaries(
    {"eventSource": st.just("aws:sqs")},
    optional={
        "messageId": st.text(max_size=8) | json_leaves,
        "body": sqs_bodies().map(lambda b: b[0]) | json_leaves,
        "receiptHandle": json_leaves,
        "attributes": json_values,
    },
)
whole_events = (
    json_values
    | st.fixed_dictionaries(
        {"Records": st.lists(sqs_envelopes | s3_records() | json_values, min_size=1, max_size=3)}
    )
    | st.fixed_dictionaries({"Event": st.just("s3:TestEvent") | json_leaves})
)


@settings(max_examples=600, **FUZZ)
@given(event=whole_events)
def test_random_whole_events(world, event):
    try:
        result = world.invoke(event)
    except EventError:
        COUNTS["whole events -> EventError"] += 1
    except ValueError:  # EventError's base: accepted as a refusal of the event
        COUNTS["whole events -> ValueError"] += 1
    except RuntimeError as exc:
        assert str(exc).startswith("transient failures: "), f"undocumented RuntimeError: {exc}"
        COUNTS["whole events -> transient RuntimeError"] += 1
    except Exception as exc:
        raise AssertionError(f"generic crash: {type(exc).__name__}: {exc}") from exc
    else:
        assert isinstance(result, dict)
        COUNTS["whole events -> returned"] += 1
    COUNTS["ingest whole events"] += 1


def test_catalogue_still_serves_after_fuzzing(env, world):
    """After all of the above, a real search works, and neither the corrupt object nor the text
    file that fuzzed events named got into the catalogue."""
    status, raw, _ = call(env, rest_event("POST", "/search", body=SEEDS[0], content_type="image/jpeg"))
    assert status == 200 and json.loads(raw)["results"]
    assert world.payload("fuzz/corrupt.png") is None and world.payload("fuzz/notes.txt") is None
