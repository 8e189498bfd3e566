"""Bad input at both doors: the search API (API Gateway REST proxy events into the search
handler) and the ingest function (objects in moto S3, S3 and SQS events into its handler).

What it proves:

- search: every hostile or malformed request (empty, bad base64, truncated/corrupt JPEG and PNG,
  text/SVG/HTML posing as images, decompression bombs, oversized bodies, malformed JSON, wrong
  types, out-of-range options, bad filter names/values, 10k-character strings) gets its
  documented 4xx in the one error shape, with no traceback or server path in the body, and the
  next valid search still answers 200 with results; valid images of extreme shapes (1x1,
  30000 px wide) are searchable;
- ingest: each bad object is a logged permanent failure (acknowledged, not a batch item failure,
  never indexed) while the good objects of the same batch are indexed; 1x1 and 30000 px images
  and a long unicode key with long metadata are indexed and then found by the search API;
- memory stays bounded (< 50 MB of peak and of current RSS growth) over 20 bomb/oversized
  searches and over 20 bombs through ingest, each of which would cost 0.4-1.2 GB if decoded.

The tests at the end are regressions for the product bugs this suite found (each docstring says
what the bug was); they were pinned as strict xfails until the fix in 09fb913.
"""

from __future__ import annotations

import base64
import gc
import json
import logging
import random

import pytest

from tests.integration.test_ingest import BUCKET, World, sqs
from tests.integration.test_search_api import catalog, env, headers_of, query_photo  # noqa: F401 (fixtures)
from tests.reliability.conftest import assert_error, max_rss_mb, report, rss_now_mb, write_artifact
from tests.support.apigw import json_event, multipart_body, rest_event
from visual_search.dev.lambdas import LambdaContext, load_function

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics")  # refused events
MEMORY_BOUND_MB = 50
FIGURES: dict = {"search_cases": 0, "ingest_cases": 0}


@pytest.fixture(scope="module", autouse=True)
def figures():
    """After the module: the figures of this run (test-artifacts/bad-input.json)."""
    yield FIGURES
    if FIGURES["search_cases"] or FIGURES["ingest_cases"]:
        write_artifact("bad-input.json", FIGURES)
        report(f"\nbad input figures: {FIGURES}")


# -- helpers -----------------------------------------------------------------------------------


def raw_call(env, event) -> tuple[int, str, dict]:
    app, _ = env
    response = app.handler(event, LambdaContext())
    body = response.get("body") or ""
    if response.get("isBase64Encoded"):
        body = base64.b64decode(body).decode("utf-8", "replace")
    return response["statusCode"], body, headers_of(response)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def raw_image(data: bytes, content_type: str = "image/jpeg", query: str = "") -> dict:
    return rest_event("POST", f"/search{query}", body=data, content_type=content_type)


def search_json(payload) -> dict:
    return json_event("POST", "/search", payload)


def search_text(text: str, content_type: str = "application/json") -> dict:
    return rest_event("POST", "/search", body=text, content_type=content_type)


def options(**options) -> dict:
    """A JSON search with a placeholder image: these cases fail on their options first."""
    return search_json({"image": GOOD, **options})


def filtered(filters) -> dict:
    return options(filters=filters)


def multipart(image: bytes | None, fields: dict | None = None, filename: str = "photo.jpg") -> dict:
    data, content_type = multipart_body(fields or {}, image, filename=filename)
    return rest_event("POST", "/search", body=data, content_type=content_type)


def assert_still_serving(env, demo_images) -> None:
    """The next valid request after a bad one: 200 with results."""
    status, raw, _ = raw_call(env, raw_image(query_photo(demo_images, 21), query="?top_k=3"))
    assert status == 200, raw[:300]
    assert json.loads(raw)["results"], "a valid search after a bad request found nothing"


# -- search: the cases -------------------------------------------------------------------------

LONG = "x" * 10_000
LONG_UNICODE = "日本語ü☕" * 2_000
GOOD = "aGk="  # base64 of "hi": cases below fail on their options before the image is decoded


def search_cases(s):
    """(id, event, status, codes) for every bad request; ``s`` is the Samples."""
    bad = s.bad
    cases = [
        # empty
        ("empty-raw-body", raw_image(b""), 400, "empty_body"),
        ("no-body-at-all", rest_event("POST", "/search", content_type="image/jpeg"), 400, "empty_body"),
        ("empty-json-body", search_text(""), 400, "empty_body"),
        ("empty-json-image", search_json({"image": ""}), 400, "empty_image"),
        # base64
        ("invalid-base64-json-image", search_json({"image": "%%% not base64 %%%"}), 400, "invalid_image"),
        ("invalid-base64-unicode", search_json({"image": "ünïcödé=="}), 400, "invalid_image"),
        ("invalid-base64-binary-body", {**raw_image(b"x"), "body": "!!!not*base64!!!"}, 400, "bad_request"),
        # media types
        ("text-plain", search_text("hello", "text/plain"), 415, "unsupported_media_type"),
        ("image-svg-media-type", raw_image(s.jpeg, "image/svg+xml"), 415, "unsupported_media_type"),
        (
            "no-content-type-not-json",
            rest_event("POST", "/search", body=b"\xff\xd8binary"),
            415,
            "unsupported_media_type",
        ),
        # too large
        ("raw-body-over-limit", raw_image(b"\xff" * (7 * 1024 * 1024)), 413, "body_too_large"),
        ("json-body-over-limit", search_json({"image": "A" * (7 * 1024 * 1024)}), 413, "body_too_large"),
        # malformed JSON, JSON that is not an object
        ("json-unterminated", search_text('{"image": '), 400, "invalid_json"),
        ("json-single-quotes", search_text("{'image': 'aGk='}"), 400, "invalid_json"),
        ("json-trailing-comma", search_text('{"image": "aGk=",}'), 400, "invalid_json"),
        (
            "json-invalid-utf8",
            {**search_text("{}"), "body": b64(b'{"image": "\xff\xfe"}'), "isBase64Encoded": True},
            400,
            "invalid_json",
        ),
        ("json-array", search_text("[1, 2]"), 400, "invalid_json"),
        ("json-string", search_text('"aGk="'), 400, "invalid_json"),
        ("json-null", search_text("null"), 400, "invalid_json"),
        ("json-number", search_text("42"), 400, "invalid_json"),
        # wrong types
        ("image-is-number", search_json({"image": 123}), 422, "invalid_options"),
        ("image-is-list", search_json({"image": [GOOD]}), 422, "invalid_options"),
        ("image-is-object", search_json({"image": {"data": GOOD}}), 422, "invalid_options"),
        ("no-image-nor-key", search_json({"top_k": 5}), 422, "invalid_options"),
        ("image-and-key", options(s3_key="x.jpg"), 422, "invalid_options"),
        ("s3-key-is-number", search_json({"s3_key": 5}), 422, "invalid_options"),
        ("group-by-maybe", options(group_by_product="maybe"), 422, "invalid_options"),
        ("offset-is-text", options(offset="x"), 422, "invalid_options"),
        ("offset-negative", options(offset=-1), 422, "invalid_options"),
        ("offset-huge", options(offset=10**30), 422, "invalid_options"),
        ("threshold-is-text", options(score_threshold="high"), 422, "invalid_options"),
        (
            "threshold-nan",
            search_text(f'{{"image": "{GOOD}", "score_threshold": NaN}}'),
            422,
            "invalid_options",
        ),
        ("filters-is-list", filtered([["category", "Milk"]]), 422, "invalid_options"),
        ("filters-is-string", filtered("category=Milk"), 422, "invalid_options"),
        ("filters-is-null", filtered(None), 422, "invalid_options"),
        # top_k
        ("top-k-0", options(top_k=0), 422, "invalid_options"),
        ("top-k-10000", options(top_k=10000), 422, "invalid_options"),
        ("top-k-ten", options(top_k="ten"), 422, "invalid_options"),
        ("top-k-1.5", options(top_k=1.5), 422, "invalid_options"),
        ("top-k-true", options(top_k=True), 422, "invalid_options"),
        ("top-k-10e400", search_text(f'{{"image": "{GOOD}", "top_k": 1e400}}'), 422, "invalid_options"),
        ("qs-top-k-0", raw_image(s.jpeg, query="?top_k=0"), 422, "invalid_options"),
        ("qs-top-k-10000", raw_image(s.jpeg, query="?top_k=10000"), 422, "invalid_options"),
        ("qs-top-k-ten", raw_image(s.jpeg, query="?top_k=ten"), 422, "invalid_options"),
        ("form-top-k-ten", multipart(s.jpeg, {"top_k": "ten"}), 422, "invalid_options"),
        # unknown options and filter keys with invalid names
        ("unknown-option", options(colour="red"), 422, "invalid_options"),
        ("qs-unknown-option", raw_image(s.jpeg, query="?colour=red"), 422, "invalid_options"),
        ("filter-key-with-space", filtered({"bad key!": "x"}), 422, "invalid_options"),
        ("filter-key-empty", filtered({"": "x"}), 422, "invalid_options"),
        ("filter-key-dollar", filtered({"$where": "1"}), 422, "invalid_options"),
        ("filter-key-path", filtered({"../etc/passwd": "x"}), 422, "invalid_options"),
        ("filter-key-65-chars", filtered({"k" * 65: "x"}), 422, "invalid_options"),
        ("filter-key-unicode", filtered({"couleur-é": "x"}), 422, "invalid_options"),
        ("filter-key-10k-unicode", filtered({LONG_UNICODE: "x"}), 422, "invalid_options"),
        ("filter-key-reserved", filtered({"sequencer": "x"}), 422, "invalid_options"),
        ("filter-key-reserved-bucket", filtered({"bucket": "x"}), 422, "invalid_options"),
        # filter values of the wrong type
        ("category-object", filtered({"category": {"$ne": 1}}), 422, "invalid_options"),
        ("category-number", filtered({"category": 5}), 422, "invalid_options"),
        ("brand-list-of-numbers", filtered({"brand": [1, 2]}), 422, "invalid_options"),
        ("brand-empty-list", filtered({"brand": []}), 422, "invalid_options"),
        ("product-id-bool", filtered({"product_id": True}), 422, "invalid_options"),
        ("price-text", filtered({"price": "cheap"}), 422, "invalid_options"),
        ("price-number", filtered({"price": 5}), 422, "invalid_options"),
        ("price-bound-text", filtered({"price": {"gte": "x"}}), 422, "invalid_options"),
        ("price-unknown-op", filtered({"price": {"ne": 1}}), 422, "invalid_options"),
        ("price-empty", filtered({"price": {}}), 422, "invalid_options"),
        ("price-inverted", filtered({"price": {"gte": 5, "lte": 1}}), 422, "invalid_options"),
        (
            "price-infinite",
            search_text(f'{{"image": "{GOOD}", "filters": {{"price": {{"lte": Infinity}}}}}}'),
            422,
            "invalid_options",
        ),
        ("price-huge-int", filtered({"price": {"gte": 10**400}}), 422, "invalid_options"),
        ("metadata-object", filtered({"colour": {"a": 1}}), 422, "invalid_options"),
        ("metadata-null", filtered({"colour": None}), 422, "invalid_options"),
        ("metadata-empty-list", filtered({"colour": []}), 422, "invalid_options"),
        ("metadata-51-values", filtered({"colour": list(map(str, range(51)))}), 422, "invalid_options"),
        ("metadata-nested-list", filtered({"colour": [["red"]]}), 422, "invalid_options"),
        ("qs-price-min-text", raw_image(s.jpeg, query="?price_min=cheap"), 422, "invalid_options"),
        ("qs-filters-not-json", raw_image(s.jpeg, query="?filters=category%3DMilk"), 422, "invalid_options"),
        ("qs-filters-array", raw_image(s.jpeg, query="?filters=%5B1%5D"), 422, "invalid_options"),
        (
            "qs-51-brands",
            raw_image(s.jpeg, query="?brand=" + ",".join(f"b{i}" for i in range(51))),
            422,
            "invalid_options",
        ),
        # very long strings
        ("category-10k", filtered({"category": LONG}), 422, "invalid_options"),
        ("brand-list-10k", filtered({"brand": ["Arla", LONG]}), 422, "invalid_options"),
        ("metadata-10k-unicode", filtered({"colour": LONG_UNICODE}), 422, "invalid_options"),
        ("qs-category-10k", raw_image(s.jpeg, query=f"?category={LONG}"), 422, "invalid_options"),
        ("form-brand-10k-unicode", multipart(s.jpeg, {"brand": LONG_UNICODE}), 422, "invalid_options"),
        ("option-name-10k", search_json({"image": GOOD, LONG: 1}), 422, "invalid_options"),
        ("s3-key-10k", search_json({"s3_key": LONG}), 422, "invalid_options"),
        # multipart
        ("form-without-file", multipart(None, {"top_k": "3"}), 400, "no_image"),
        (
            "form-two-files",
            rest_event(
                "POST",
                "/search",
                body=multipart_body({}, s.jpeg)[0].replace(
                    b"--XyZboundary--",
                    b'--XyZboundary\r\nContent-Disposition: form-data; name="file"; '
                    b'filename="b.jpg"\r\n\r\n' + s.jpeg + b"\r\n--XyZboundary--",
                ),
                content_type="multipart/form-data; boundary=XyZboundary",
            ),
            400,
            "too_many_images",
        ),
        (
            "form-wrong-boundary",
            rest_event(
                "POST",
                "/search",
                body=multipart_body({}, s.jpeg)[0],
                content_type="multipart/form-data; boundary=other",
            ),
            400,
            {"bad_request", "no_image"},
        ),
        (
            "form-no-boundary",
            rest_event("POST", "/search", body=b"--x\r\n\r\nzz", content_type="multipart/form-data"),
            400,
            "bad_request",
        ),
        ("form-empty-file", multipart(b""), 400, "empty_image"),
    ]
    # every bad image, through each way a query image arrives
    for name, (data, codes, status) in bad.items():
        if not data:
            continue  # an empty body is an empty_body case above
        content_type = "image/png" if "png" in name or name == "svg" else "image/jpeg"
        cases += [
            (f"raw-{name}", raw_image(data, content_type), status, codes),
            (f"json-{name}", search_json({"image": b64(data)}), status, codes),
            (
                f"data-url-{name}",
                search_json({"image": f"data:{content_type};base64,{b64(data)}"}),
                status,
                codes,
            ),
            (f"form-{name}", multipart(data, filename=f"{name}.jpg"), status, codes),
        ]
    return cases


def pytest_generate_tests(metafunc):
    if "search_case" in metafunc.fixturenames:
        from tests.reliability.samples import Samples

        cases = search_cases(Samples())
        metafunc.parametrize("search_case", cases, ids=[c[0] for c in cases])


def test_bad_search_requests(env, catalog, demo_images, search_case):
    _name, event, status, codes = search_case
    code, raw, headers = raw_call(env, event)
    assert_error(code, raw, headers, status, codes)
    if status == 422:
        details = json.loads(raw)["error"].get("details")
        assert details and details[0]["loc"], "422 without field-level details"
    assert len(raw) < 50_000, "the error echoes the (huge) input"
    FIGURES["search_cases"] += 1
    assert_still_serving(env, demo_images)


@pytest.mark.parametrize("name", ["1x1-png", "1x1-jpeg", "30000x16-png", "30000x8-jpeg"])
@pytest.mark.parametrize("form", ["raw", "json", "form"])
def test_extreme_but_valid_images_are_searchable(env, catalog, samples, name, form):
    data = samples.edge[name]
    content_type = "image/png" if name.endswith("png") else "image/jpeg"
    event = {
        "raw": lambda: raw_image(data, content_type, "?top_k=5"),
        "json": lambda: search_json({"image": b64(data), "top_k": 5}),
        "form": lambda: multipart(data, {"top_k": "5"}, filename=f"{name}.{content_type[6:]}"),
    }[form]()
    status, raw, _ = raw_call(env, event)
    assert status == 200, raw[:300]
    assert len(json.loads(raw)["results"]) == 5
    FIGURES["search_cases"] += 1


def test_unicode_filter_values_are_valid(env, catalog, demo_images):
    photo = b64(query_photo(demo_images, 4))
    status, raw, _ = raw_call(
        env,
        search_json(
            {"image": photo, "filters": {"category": "Crème brûlée ☕ 日本語", "colour": ["rouge-é", "赤"]}}
        ),
    )
    assert status == 200 and json.loads(raw)["results"] == []  # valid, and nothing matches
    status, raw, _ = raw_call(
        env, raw_image(query_photo(demo_images, 4), query="?category=%E2%98%95&brand=%C3%BC,Arla")
    )
    assert status == 200 and json.loads(raw)["results"] == []
    FIGURES["search_cases"] += 2


def test_search_memory_stays_bounded(env, catalog, samples, demo_images):
    """20 bombs and oversized bodies in a row: peak RSS grows by less than the bound (one
    decoded bomb alone would add 400 MB - 1.2 GB)."""
    heavy = [
        raw_image(samples.bad["png-bomb-20000px"][0], "image/png"),
        search_json({"image": b64(samples.bad["png-bomb-20000px"][0])}),
        raw_image(samples.bad["jpeg-claiming-60000px"][0]),
        multipart(samples.bad["gif-claiming-65535px"][0]),
        raw_image(b"\xff" * (7 * 1024 * 1024)),
    ]
    expected = [413, 413, 413, 413, 413]
    for event, status in zip(heavy, expected):  # warm-up: one-off allocations do not count
        assert raw_call(env, event)[0] == status
    gc.collect()
    before, now_before = max_rss_mb(), rss_now_mb()
    for n in range(20):
        code, raw, headers = raw_call(env, heavy[n % len(heavy)])
        assert_error(code, raw, headers, expected[n % len(heavy)])
    assert_still_serving(env, demo_images)
    gc.collect()
    growth, kept = max_rss_mb() - before, rss_now_mb() - now_before
    FIGURES["search_memory"] = {
        "requests": 20,
        "peak_rss_growth_mb": round(growth, 1),
        "rss_growth_mb": round(kept, 1),
        "bound_mb": MEMORY_BOUND_MB,
    }
    report(
        f"\nsearch: 20 bomb/oversized requests: peak RSS {before:.0f} -> +{growth:.1f} MB, "
        f"RSS {now_before:.0f} -> {kept:+.1f} MB (bound {MEMORY_BOUND_MB} MB)"
    )
    assert growth < MEMORY_BOUND_MB  # a spike: something decoded a bomb
    assert kept < MEMORY_BOUND_MB  # a leak: something kept what it read


# -- ingest --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(env, catalog):
    """The ingest function on the search function's catalogue (as the local stack runs them), in
    the same moto S3: what ingest indexes, the search API finds."""
    ingest = load_function("ingest", fresh_catalog=False)
    assert ingest.ingestor.catalog is env[0].api.catalog
    return World(ingest, env[1])


def failures_logged(caplog, key: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.getMessage() == f"failed {key}" and getattr(r, "reason", "")
    ]


def good_photo(demo_images, n: int) -> bytes:
    return demo_images[n % len(demo_images)].path.read_bytes()


@pytest.mark.parametrize(
    "name",
    [
        "empty",
        "truncated-jpeg",
        "truncated-png",
        "corrupt-jpeg",
        "corrupt-png",
        "text-as-jpeg",
        "svg",
        "html",
        "png-bomb-20000px",
        "jpeg-claiming-60000px",
        "gif-claiming-65535px",
    ],
)
def test_bad_object_is_a_logged_permanent_failure(world, samples, demo_images, caplog, name):
    data, _codes, _ = samples.bad[name]
    ext = "png" if "png" in name or name == "svg" else ("gif" if "gif" in name else "jpg")
    bad_key, good_keys = (
        f"bad-input/{name}/object.{ext}",
        [f"bad-input/{name}/good-{i}.jpg" for i in range(2)],
    )
    records = [
        world.put(bad_key, data, {"category": "Bad"}),
        *(world.put(k, good_photo(demo_images, 5 + i)) for i, k in enumerate(good_keys)),
    ]
    random.Random(name).shuffle(records)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert world.deliver(*records) == {"batchItemFailures": []}  # acknowledged: no retry helps
    assert failures_logged(caplog, bad_key), f"no 'failed {bad_key}' warning with a reason"
    assert world.payload(bad_key) is None
    for key in good_keys:
        assert world.payload(key)["etag"] == world.s3.head_object(Bucket=BUCKET, Key=key)["ETag"]
    # a direct S3 event says the same per record, and does not raise (nothing to retry)
    direct = world.invoke(
        {"Records": [world.put(bad_key, data), world.put(good_keys[0], good_photo(demo_images, 9))]}
    )
    statuses = {o["key"]: (o["status"], o["reason"]) for o in direct["outcomes"]}
    assert statuses[good_keys[0]][0] == "indexed"
    assert statuses[bad_key][0] == "failed" and statuses[bad_key][1]
    world.s3.delete_object(Bucket=BUCKET, Key=bad_key)  # the rest of the bucket is indexed
    world.assert_in_sync()
    FIGURES["ingest_cases"] += 1


def test_oversized_object_is_a_permanent_failure(world, demo_images, caplog):
    key = "bad-input/oversized/object.jpg"
    big = random.Random(1).randbytes(21 * 1024 * 1024)  # over MAX_IMAGE_BYTES (20 MiB)
    with caplog.at_level(logging.INFO):
        result = world.deliver(
            world.put(key, big), world.put("bad-input/oversized/good.jpg", good_photo(demo_images, 3))
        )
    assert result == {"batchItemFailures": []}
    assert failures_logged(caplog, key) and "limit" in failures_logged(caplog, key)[0].reason
    assert world.payload(key) is None and world.payload("bad-input/oversized/good.jpg")
    world.s3.delete_object(Bucket=BUCKET, Key=key)
    world.assert_in_sync()
    FIGURES["ingest_cases"] += 1


def test_full_batch_of_mixed_bad_and_good(world, samples, demo_images):
    """Ten messages, six of them bad objects: the batch is acknowledged, the four good objects
    are indexed, the bad ones are not."""
    names = ["truncated-jpeg", "corrupt-png", "svg", "html", "png-bomb-20000px", "text-as-jpeg"]
    bad = {f"bad-input/mixed/{n}.jpg": samples.bad[n][0] for n in names}
    good = {f"bad-input/mixed/good-{i}.jpg": good_photo(demo_images, 30 + i) for i in range(4)}
    records = [world.put(k, v) for k, v in {**bad, **good}.items()]
    random.Random(2).shuffle(records)
    assert world.deliver(*records) == {"batchItemFailures": []}
    assert all(world.payload(k) is None for k in bad)
    assert all(world.payload(k) for k in good)
    for key in bad:
        world.s3.delete_object(Bucket=BUCKET, Key=key)
    world.assert_in_sync()
    FIGURES["ingest_cases"] += 1


@pytest.mark.parametrize("name", ["1x1-png", "1x1-jpeg", "30000x16-png", "30000x8-jpeg"])
def test_extreme_but_valid_objects_are_indexed(world, env, samples, name):
    key = f"bad-input/edge/{name}.{name.rsplit('-', 1)[1].replace('jpeg', 'jpg')}"
    assert world.deliver(world.put(key, samples.edge[name], {"product-id": f"edge-{name}"})) == {
        "batchItemFailures": []
    }
    assert world.payload(key)["product_id"] == f"edge-{name}"
    content_type = "image/png" if name.endswith("png") else "image/jpeg"
    status, raw, _ = raw_call(
        env, raw_image(samples.edge[name], content_type, f"?top_k=1&product_id=edge-{name}")
    )
    assert status == 200 and json.loads(raw)["results"][0]["image"]["key"] == key
    FIGURES["ingest_cases"] += 1


def test_unicode_key_with_long_metadata_is_indexed_and_searchable(world, env, demo_images):
    """A 600-byte unicode key (URL-encoded in the event) and ~2 KB of metadata (S3's limit;
    non-ASCII values are stored as RFC 2047 encoded-words, as S3 itself stores them)."""
    product = "Crème brûlée ☕ 日本語 商品 SKU-ü"
    key = f"bad-input/{product}/" + "фото " * 60 + "ü.jpg"
    assert len(key.encode()) < 1024
    title = "Crème brûlée à la vanille ☕ 日本語 " * 12
    encoded_title = "=?UTF-8?B?" + b64(title.encode()) + "?="  # how S3 keeps non-ASCII metadata
    metadata = {
        "category": "Desserts-" + "long" * 30,
        "brand": "Maison-U",
        "price": "4.20",
        "title": encoded_title,
        "colour": "creme-" + "x" * 200,
        "notes": "n" * 900,
    }
    assert sum(len(k) + len(v) for k, v in metadata.items()) < 2048
    photo = good_photo(demo_images, 44)
    record = world.put(key, photo, metadata)
    assert "%" in record["s3"]["object"]["key"]  # URL-encoded as S3 sends it
    assert world.deliver(record) == {"batchItemFailures": []}
    payload = world.payload(key)
    assert payload["key"] == key and payload["product_id"] == product
    assert payload["title"] == title  # decoded from RFC 2047
    assert payload["metadata"]["colour"] == metadata["colour"]
    status, raw, _ = raw_call(
        env,
        search_json(
            {
                "image": b64(query_photo(demo_images, 44)),
                "top_k": 3,
                "filters": {"product_id": product, "colour": metadata["colour"]},
            }
        ),
    )
    assert status == 200, raw[:300]
    results = json.loads(raw)["results"]
    assert [r["image"]["key"] for r in results] == [key]
    assert results[0]["product_id"] == product and results[0]["metadata"]["brand"] == "Maison-U"
    assert world.deliver(world.delete(key)) == {"batchItemFailures": []}
    assert world.payload(key) is None
    world.assert_in_sync()
    FIGURES["ingest_cases"] += 1


def test_ingest_memory_stays_bounded(world, samples):
    """Two full batches of bombs through the ingest handler (decoded in 8 download threads at
    once, were the guard missing): peak RSS grows by less than the bound."""
    bomb = samples.bad["png-bomb-20000px"][0]
    keys = [f"bad-input/bombs/{n}.png" for n in range(10)]
    assert world.deliver(*(world.put(k, bomb) for k in keys)) == {"batchItemFailures": []}  # warm-up
    gc.collect()
    before, now_before = max_rss_mb(), rss_now_mb()
    for _ in range(2):
        assert world.deliver(*(world.put(k, bomb) for k in keys)) == {"batchItemFailures": []}
    gc.collect()
    growth, kept = max_rss_mb() - before, rss_now_mb() - now_before
    assert all(world.payload(k) is None for k in keys)
    for key in keys:
        world.s3.delete_object(Bucket=BUCKET, Key=key)
    FIGURES["ingest_memory"] = {
        "bombs": 20,
        "peak_rss_growth_mb": round(growth, 1),
        "rss_growth_mb": round(kept, 1),
        "bound_mb": MEMORY_BOUND_MB,
    }
    report(
        f"\ningest: 20 bombs in 2 batches: peak RSS +{growth:.1f} MB, RSS {kept:+.1f} MB "
        f"(bound {MEMORY_BOUND_MB} MB)"
    )
    assert growth < MEMORY_BOUND_MB
    assert kept < MEMORY_BOUND_MB


# -- regressions: bugs this suite found (fixed in 09fb913), kept as tests ---------------------


def test_deeply_nested_json_body_is_400(env, demo_images):
    """Regression, fixed in 09fb913. Was: api.py _parse_json catches only
    JSONDecodeError/UnicodeDecodeError; a deeply nested body raises RecursionError -> 500"""
    code, raw, headers = raw_call(env, search_text("[" * 100_000))
    assert_error(code, raw, headers, 400, "invalid_json")


def test_deeply_nested_filters_query_is_4xx(env, samples):
    """Regression, fixed in 09fb913. Was: api_models.py options_from_fields
    catches only JSONDecodeError on ?filters=; deep nesting raises RecursionError -> 500"""
    code, raw, headers = raw_call(env, raw_image(samples.jpeg, query="?filters=" + "%5B" * 5_000))
    assert_error(code, raw, headers, {400, 422})


def test_filters_price_then_price_min_is_422(env, samples):
    """Regression, fixed in 09fb913. Was: api_models.py options_from_fields:
    ?filters={"price":"x"}&price_min=1 assigns into the str -> TypeError -> 500"""
    code, raw, headers = raw_call(
        env, raw_image(samples.jpeg, query="?filters=%7B%22price%22%3A%22x%22%7D&price_min=1")
    )
    assert_error(code, raw, headers, 422, "invalid_options")


def test_uploads_malformed_json_is_400(env):
    """Regression, fixed in 09fb913. Was: api.py uploads(): json.loads(body)
    is not guarded -> malformed JSON is a 500"""
    code, raw, headers = raw_call(
        env, rest_event("POST", "/uploads", body="{", content_type="application/json")
    )
    assert_error(code, raw, headers, 400, "invalid_json")


@pytest.mark.parametrize("key", ["a:b", "a..b", "a."])
def test_metadata_filter_keys_with_dots_or_colons_do_not_500(env, catalog, demo_images, key):
    """Regression, fixed in 09fb913. Was: METADATA_KEY allows ':' and '..' but
    Qdrant's JSON path parser refuses them (ValueError: Invalid path) -> 500"""
    code, raw, headers = raw_call(
        env, search_json({"image": b64(query_photo(demo_images, 1)), "filters": {key: "x"}})
    )
    assert_error(code, raw, headers, 422, "invalid_options")  # refused by name, before Qdrant
    assert f"filter key '{key}' is not a metadata name" in raw


def test_lone_surrogate_body_is_400(env):
    """Regression, fixed in 09fb913. Was: api.py _body: a body holding a lone
    surrogate cannot be encoded (UnicodeEncodeError) -> 500"""
    code, raw, headers = raw_call(env, {**search_text("{}"), "body": '{"image": "\ud800"}'})
    assert_error(code, raw, headers, 400)


class KeyLimitS3:
    """moto S3 plus one rule of real S3 that moto does not enforce: keys are at most 1024
    bytes of UTF-8, longer ones answer 400 (a HEAD has no body, so the code is just "400")."""

    def __init__(self, s3):
        self.s3 = s3

    def head_object(self, **kwargs):
        from botocore.exceptions import ClientError

        if len(kwargs["Key"].encode()) > 1024:
            raise ClientError(
                {
                    "Error": {"Code": "400", "Message": "Bad Request"},
                    "ResponseMetadata": {"HTTPStatusCode": 400},
                },
                "HeadObject",
            )
        return self.s3.head_object(**kwargs)

    def __getattr__(self, name):
        return getattr(self.s3, name)


@pytest.mark.parametrize("key", ["ü" * 600, "k" * 1020])
def test_too_long_s3_key_is_4xx_not_503(env, monkeypatch, key):
    """Regression, fixed in 09fb913. Was: api.py _uploaded_image maps every S3
    error but 404 to 503 store_unavailable; s3_key's max_length counts characters while S3
    counts bytes (and the upload prefix is added), so a valid-looking long key gets S3's 400
    -> 503 with Retry-After"""
    app, s3 = env
    monkeypatch.setattr(app.api, "s3", KeyLimitS3(s3))
    code, raw, headers = raw_call(env, search_json({"s3_key": key}))
    assert_error(code, raw, headers, {404, 413, 422})


def invoke_batch(world, event) -> dict:
    """The ingest handler on an SQS event; a crash of the whole batch is an assertion failure."""
    try:
        return world.invoke(event)
    except Exception as exc:
        raise AssertionError(f"the whole batch crashed: {type(exc).__name__}: {exc}"[:300]) from None


def with_object_fields(record: dict, **fields) -> dict:
    record = json.loads(json.dumps(record))
    record["s3"]["object"].update(fields)
    return record


@pytest.mark.parametrize("size", ["abc", [1], 1e400])
def test_message_with_a_bad_size_fails_alone(world, demo_images, size):
    """Regression, fixed in 09fb913. Was: events.py parse_s3_record: int(size)
    raises ValueError/TypeError/OverflowError, which handle_sqs does not catch (only
    EventError): the whole SQS batch fails, good messages too"""
    good_key = "bad-input/size/good.jpg"
    bad = with_object_fields(world.put("bad-input/size/bad.jpg", good_photo(demo_images, 8)), size=size)
    event = sqs({"Records": [bad]}, {"Records": [world.put(good_key, good_photo(demo_images, 9))]})
    result = invoke_batch(world, event)
    assert result["batchItemFailures"] in ([], [{"itemIdentifier": "m0"}])
    assert world.payload(good_key)


def test_a_non_string_sequencer_does_not_poison_the_key(world, demo_images):
    """Regression, fixed in 09fb913. Was: events.py sequencer_key calls
    .upper() on the event's sequencer: a non-string one (5) is stored in the payload, then
    every later event of that key crashes the whole batch (AttributeError) until the point
    is removed by hand"""
    key = "bad-input/sequencer/a.jpg"
    photo = good_photo(demo_images, 10)
    world.invoke(sqs({"Records": [with_object_fields(world.put(key, photo), sequencer=5)]}))
    try:
        result = invoke_batch(world, sqs({"Records": [world.put(key, photo)]}))  # an ordinary upload
    finally:
        world.store.delete_images([(BUCKET, key)])
        world.s3.delete_object(Bucket=BUCKET, Key=key)
    assert result == {"batchItemFailures": []}


def test_deeply_nested_sqs_body_is_a_batch_item_failure(world, demo_images):
    """Regression, fixed in 09fb913. Was: events.py parse_sqs_body catches
    only TypeError/JSONDecodeError: a deeply nested body raises RecursionError and the whole
    SQS batch fails instead of that one message"""
    event = sqs({"Records": [world.put("bad-input/nested/good.jpg", good_photo(demo_images, 11))]}, {})
    event["Records"][1]["body"] = "[" * 100_000
    assert invoke_batch(world, event) == {"batchItemFailures": [{"itemIdentifier": "m1"}]}


@pytest.mark.parametrize(
    "broken",
    [{"eventSource": "aws:sqs", "messageId": "x"}, {"eventSource": "aws:sqs", "body": "{}"}, "not a record"],
)
def test_malformed_sqs_envelope_is_an_event_error(world, broken):
    """Regression, fixed in 09fb913. Was: functions/ingest/app.py handle_sqs
    reads record.body / message_id outside any guard: an SQS record without them (or not an
    object) is a KeyError/TypeError, not an EventError"""
    from visual_search.ingest.events import EventError

    event = sqs({})
    event["Records"].append(broken)
    with pytest.raises(EventError, match="an SQS record without a messageId or body"):
        world.invoke(event)
