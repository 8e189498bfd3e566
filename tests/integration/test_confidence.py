"""Calibrated confidence and "not in our catalogue": the calibration's arithmetic, `adapt`
fitting it on a real catalogue embedded by the real model, and the search API answering with it."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import boto3
import numpy as np
import pytest
from moto import mock_aws

from tests.support.apigw import json_event, rest_event
from visual_search.adaptation import calibration
from visual_search.adaptation.adapter import Adapter, RawCollections
from visual_search.adaptation.calibration import Calibration, Rows, auroc, ece
from visual_search.adaptation.spaces import CALIBRATION
from visual_search.catalog import ImageSource
from visual_search.config import AdaptSettings
from visual_search.dev.folders import scan
from visual_search.dev.lambdas import LambdaContext, load_function
from visual_search.store import Query

GROCERY = Path(__file__).resolve().parents[1] / "data" / "grocery-subset"  # 10 products: 6 train_, 3 test_
LEFT_OUT = ("Oatly-Oat-Milk", "Bravo-Apple-Juice")  # not in the catalogue: shoppers' photos of them
BUCKET = "product-images"
SETTINGS = AdaptSettings(batch=32, grace_s=0.0, dims=(None,))


def test_expected_calibration_error_and_auroc_by_hand():
    # Bin 0.9: confidence 0.9, accuracy 0.5; bin 0.2: confidence 0.2, accuracy 0: (2*0.4 + 2*0.2) / 4
    assert ece(np.array([0.9, 0.9, 0.2, 0.2]), np.array([1, 0, 0, 0])) == pytest.approx(0.3)
    assert ece(np.array([0.75] * 4), np.array([1, 1, 1, 0])) == pytest.approx(0.0)
    # Right {0.9, 0.3} against wrong {0.8}: one pair of two is ordered right.
    assert auroc(np.array([0.9, 0.8, 0.3]), np.array([1, 0, 1])) == pytest.approx(0.5)
    assert auroc(np.array([0.5, 0.5]), np.array([1, 0])) == pytest.approx(0.5)  # a tie counts half
    assert auroc(np.array([0.9, 0.1]), np.array([1, 0])) == pytest.approx(1.0)


def test_the_fit_recovers_a_known_probability():
    """Rows drawn from a known logistic law: the fitted confidence is that law."""
    rng = np.random.default_rng(0)
    n = 40_000
    s = rng.uniform(0.3, 0.9, n)
    m = rng.uniform(0.001, 0.3, n)
    truth = 1 / (1 + np.exp(-(-4 + 4 * s + 2 * np.log(m + calibration.LOG_OFFSET) + 10 * m)))
    right = rng.random(n) < truth
    rows = Rows(s, m, right, np.ones(n, bool), n)
    fitted = calibration.fit(rows)
    assert fitted is not None
    predicted = fitted._p(s, m)
    assert np.max(np.abs(predicted - truth)) < 0.05
    assert fitted.stats["cv_ece"] < 0.02 and fitted.no_match == pytest.approx(
        np.quantile(predicted[right], 1 - calibration.KEEP_RIGHT), abs=1e-3
    )
    # Stored and read back, it is the same calibration; anything else is no calibration.
    again = Calibration.from_dict(json.loads(json.dumps(fitted.as_dict())))
    assert again == fitted
    assert Calibration.from_dict({"format": "other"}) is None
    assert Calibration.from_dict({**fitted.as_dict(), "weights": [1.0]}) is None
    assert Calibration.from_dict({**fitted.as_dict(), "no_match": float("nan")}) is None


def test_confidence_falls_with_rank_and_a_clear_lead_is_surer():
    weights = (-2.0, 2.0, 5.0, 0.5, -1.0, 1.0, 8.0)
    cal = Calibration(weights, 0.5)
    values = cal.confidence([0.8, 0.6, 0.55, 0.2])
    assert values == sorted(values, reverse=True) and all(0 <= v <= 1 for v in values)
    assert cal.confidence([0.8, 0.5])[0] > cal.confidence([0.8, 0.78])[0]  # a lead over the next
    assert cal.confidence([1.000001, 0.3]) == cal.confidence([1.0, 0.3])  # bounded like the score


def ingest(catalog, images) -> None:
    sources = [ImageSource("b", f"catalog/{img.key}", img.path.read_bytes(), img.metadata) for img in images]
    for start in range(0, len(sources), 16):
        assert all(r.ok for r in catalog.index(sources[start : start + 16]).results)


@pytest.fixture(scope="module")
def grocery():
    images = scan(GROCERY)
    catalogue = [i for i in images if i.path.name.startswith("train_") and i.path.parent.name not in LEFT_OUT]
    shoppers = [i for i in images if i.path.name.startswith("test_")]
    return catalogue, shoppers


def first_answers(catalog, shoppers) -> list[tuple[bool, bool, float]]:
    """(in the catalogue, right, confidence) of each shopper photo's first product."""
    out = []
    for img in shoppers:
        hits = catalog.search_image(img.path.read_bytes(), Query(top_k=5)).hits
        confidences = [h.confidence for h in hits]
        assert all(c is not None and 0.0 <= c <= 1.0 for c in confidences)
        assert confidences == sorted(confidences, reverse=True)  # one per product, in rank order
        product = img.path.parent.name
        out.append((product not in LEFT_OUT, hits[0].payload["product_id"] == product, confidences[0]))
    return out


def test_adapt_calibrates_the_catalogue_and_search_answers_with_confidence(grocery):
    from tests.integration.test_adaptation import open_catalog
    from visual_search.model import get_embedder

    catalogue, shoppers = grocery
    catalog = open_catalog(get_embedder())
    ingest(catalog, catalogue)
    hits = catalog.search_image(shoppers[0].path.read_bytes(), Query(top_k=3)).hits
    assert all(h.confidence is None for h in hits)  # never adapted: no calibration, no guess
    result = Adapter(catalog, SETTINGS, log=lambda m: None).run()
    assert result.calibration is not None, result.reason
    stats = result.calibration["stats"]
    assert stats["queries"] >= calibration.MIN_QUERIES and stats["space"] == (result.projection_id or "raw")
    space = catalog.spaces.current()
    assert space.calibration is not None and space.calibration.no_match == result.calibration["no_match"]
    stored = json.loads(RawCollections(catalog.store).collection_metadata(space.collection)[CALIBRATION])
    assert stored == result.calibration

    answers = first_answers(catalog, shoppers)
    known = [(right, c) for inside, right, c in answers if inside]
    unknown = [c for inside, _, c in answers if not inside]
    right = [c for r, c in known if r]
    recall = len(right) / len(known)
    mean_confidence = float(np.mean([c for _, c in known]))
    # Calibrated: on shoppers' photos, the mean confidence is near the share answered right.
    assert abs(mean_confidence - recall) < 0.2, (mean_confidence, recall)
    # The products the shop does not carry come back less sure than its right answers.
    assert np.mean(unknown) < np.mean(right)
    threshold = space.calibration.no_match
    assert np.mean([c < threshold for c in unknown]) > np.mean([c < threshold for c in right])


def test_a_calibration_fitted_in_another_space_is_not_used(grocery):
    from tests.integration.test_adaptation import open_catalog
    from visual_search.model import get_embedder

    catalog = open_catalog(get_embedder())
    ingest(catalog, grocery[0][:12])
    collection = catalog.spaces.current().collection
    raw = RawCollections(catalog.store)
    other = Calibration((0.0,) * 7, 0.5, {"space": "0123abcd"})  # a projection this collection lacks
    raw.update_collection_metadata(collection, {CALIBRATION: json.dumps(other.as_dict())})
    assert catalog.spaces.reload().calibration is None
    mine = Calibration((0.0,) * 7, 0.5, {"space": "raw"})
    raw.update_collection_metadata(collection, {CALIBRATION: json.dumps(mine.as_dict())})
    assert catalog.spaces.reload().calibration == mine


@pytest.fixture(scope="module")
def api(grocery):
    catalogue, _ = grocery
    with pytest.MonkeyPatch.context() as mp, mock_aws():
        mp.setenv("QDRANT_PATH", ":memory:")
        mp.delenv("QDRANT_URL", raising=False)
        mp.setenv("BUCKET", BUCKET)
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        app = load_function("search")
        ingest(app.api.catalog, catalogue)
        assert Adapter(app.api.catalog, SETTINGS, log=lambda m: None).run().calibration is not None
        yield app


def call(app, event) -> tuple[int, dict]:
    response = app.handler(event, LambdaContext())
    return response["statusCode"], json.loads(response["body"])


def test_the_api_answers_confidence_and_no_match(api, grocery):
    photo = next(i for i in grocery[1] if i.path.parent.name not in LEFT_OUT).path.read_bytes()
    image = base64.b64encode(photo).decode()
    status, body = call(api, json_event("POST", "/search", {"image": image, "top_k": 3}))
    assert status == 200, body
    threshold = api.api.catalog.spaces.current().calibration.no_match
    assert body["no_match_threshold"] == threshold
    first = body["results"][0]
    assert 0 <= first["confidence"] <= 1 and -1 <= first["score"] <= 1
    assert body["no_match"] == (first["confidence"] < threshold)
    # min_confidence decides instead of the catalogue's threshold, in every input form.
    status, body = call(api, json_event("POST", "/search", {"image": image, "min_confidence": 1.0}))
    assert status == 200 and body["no_match"] is True and body["results"]  # candidates still listed
    status, body = call(
        api, rest_event("POST", "/search?min_confidence=0", body=photo, content_type="image/jpeg")
    )
    assert status == 200 and body["no_match"] is False and body["no_match_threshold"] == 0
    status, health = call(api, rest_event("GET", "/health"))
    assert status == 200 and health["calibration"]["no_match_threshold"] == threshold
    assert health["calibration"]["queries"] >= calibration.MIN_QUERIES
    for bad in (1.5, -0.1, "sure"):
        status, body = call(api, json_event("POST", "/search", {"image": image, "min_confidence": bad}))
        assert status == 422 and "min_confidence" in json.dumps(body), body
