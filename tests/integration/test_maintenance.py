"""The scheduled refit: the maintenance function (under moto: it needs no AWS service but Qdrant)
refits when the catalogue changed by the threshold, and not otherwise; a copy stopped by its
deadline is resumed by the next run; the local stack's settled refit runs the same step."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import replace

import pytest
from moto import mock_aws

from tests.integration.test_adaptation import SETTINGS, all_points, open_catalog, synthetic_points
from visual_search.adaptation.adapter import Adapter, RawCollections
from visual_search.adaptation.refits import SettledRefit, refit_due
from visual_search.adaptation.spaces import ADAPTED
from visual_search.config import get_settings
from visual_search.dev.lambdas import LambdaContext, load_function


@pytest.fixture
def maintenance(monkeypatch, embedder):
    monkeypatch.setenv("QDRANT_PATH", ":memory:")
    monkeypatch.setenv("COLLECTION", f"maint-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("ADAPT_CHANGE_THRESHOLD", "0.25")
    monkeypatch.setenv("ADAPT_DIMS", "full")
    monkeypatch.setenv("ADAPT_GRACE_S", "0")
    with mock_aws():
        module = load_function("maintenance")
        yield module
    get_settings.cache_clear()
    from visual_search.catalog import get_catalog

    get_catalog.cache_clear()


def test_the_maintenance_function_refits_when_the_catalogue_changed_enough(maintenance, embedder):
    catalog = maintenance.catalog
    assert os.environ["COLLECTION"] == catalog.store.collection
    empty = maintenance.handler({}, LambdaContext())
    assert empty["due"] is False and empty["status"] is None
    catalog.store.upsert(synthetic_points(8, 6, embedder.dim, seed=11))
    first = maintenance.handler({}, LambdaContext())
    assert first["due"] is True and first["status"] == "adapted", first
    assert first["cv_recall_adapted"] > first["cv_recall_raw"]
    assert catalog.projection["id"] == first["projection_id"]
    quiet = maintenance.handler({}, LambdaContext())
    assert quiet["due"] is False and "under the threshold" in quiet["reason"]
    assert (
        quiet["reason"].startswith("0 image changes")
        and "when the catalogue held 48 images" in quiet["reason"]
    )
    catalog.store.upsert(synthetic_points(2, 6, embedder.dim, seed=12, prefix="few"))  # 12 of 48: 25%
    again = maintenance.handler({}, LambdaContext())
    assert again["due"] is True and again["status"] == "adapted"
    assert again["projection_id"] != first["projection_id"]
    assert all(ADAPTED in r.vectors for r in all_points(catalog))
    # the event may lower the threshold for one run
    catalog.store.upsert(synthetic_points(1, 2, embedder.dim, seed=13, prefix="one"))
    assert maintenance.handler({}, LambdaContext())["due"] is False
    assert maintenance.handler({"change_threshold": 0.01}, LambdaContext())["due"] is True


def test_replaced_images_count_as_changes(embedder):
    catalog = open_catalog(embedder, dim=64)
    points = synthetic_points(8, 6, 64, seed=14)
    catalog.store.upsert(points)
    Adapter(catalog, SETTINGS, log=lambda m: None).run()
    assert refit_due(catalog, replace(SETTINGS, change_threshold=0.2)).due is False
    stamp = "2100-01-01T00:00:00+00:00"  # re-indexed after the fit: same count, new photos
    space = catalog.spaces.current()
    for p in points[:10]:
        p.payload["indexed_at"] = stamp
        p.vectors[ADAPTED] = space.project(p.vector)
    space.store.upsert(points[:10])
    decision = refit_due(catalog, replace(SETTINGS, change_threshold=0.2))
    assert decision.due and decision.changed == 10, decision


def test_an_adapt_stopped_by_its_deadline_is_resumed(embedder):
    catalog = open_catalog(embedder, dim=64)
    catalog.store.upsert(synthetic_points(10, 10, 64, seed=15))
    old = catalog.spaces.current().collection
    stopped = Adapter(catalog, replace(SETTINGS, batch=10), log=lambda m: None).run(deadline=time.monotonic())
    assert stopped.status == "incomplete" and 0 < stopped.copied < 100
    assert catalog.spaces.reload().collection == old  # nothing switched
    assert RawCollections(catalog.store).building_collections(old) == [stopped.collection]
    assert refit_due(catalog, SETTINGS).due
    resumed = Adapter(catalog, replace(SETTINGS, batch=10), log=lambda m: None).run()
    assert resumed.status == "adapted" and resumed.collection == stopped.collection
    assert resumed.copied + stopped.copied == 100
    assert catalog.spaces.reload().collection == stopped.collection
    assert not RawCollections(catalog.store).building_collections(stopped.collection)
    assert len(all_points(catalog)) == 100


def test_the_local_stack_refits_once_changes_settle(embedder):
    catalog = open_catalog(embedder, dim=64)
    busy = [True]
    logs: list[str] = []
    refit = SettledRefit(
        catalog, replace(SETTINGS, settle_s=0.3), busy=lambda: busy[0], log=logs.append, interval_s=0.05
    )
    refit.start()
    try:
        catalog.store.upsert(synthetic_points(8, 6, 64, seed=16))
        time.sleep(0.5)
        assert refit.runs == 0  # notifications still waiting: no refit
        busy[0] = False
        deadline = time.monotonic() + 120
        while refit.runs == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        refit.stop()
    assert refit.runs == 1, logs
    assert catalog.spaces.reload().projection is not None
