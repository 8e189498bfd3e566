"""The eval's metrics and its adaptation protocol: the fit never sees a query."""

from __future__ import annotations

import numpy as np
import pytest

from visual_search.adaptation.whitening import fit
from visual_search.dev.retrieval import measure, metrics, stratified_folds


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_metrics_by_hand():
    sims = np.array([[0.9, 0.8, 0.1], [0.2, 0.9, 0.8]])
    out = metrics(sims, np.array(["a", "b"]), np.array(["a", "b", "b"]))
    assert out["recall@1"] == 1.0
    # query a: R=1, first is right -> 1; query b: R=2, ranks b,b -> 1
    assert out["mAP@R"] == 1.0
    out = metrics(sims, np.array(["b", "a"]), np.array(["a", "b", "b"]))
    assert out["recall@1"] == 0.0 and out["recall@5"] == 1.0


def test_product_scores_mean_of_best_two():
    # Product a has one very close photo and one far; b has two fairly close ones.
    sims = np.array([[0.90, 0.10, 0.85, 0.84]])
    gallery = np.array(["a", "a", "b", "b"])
    out = metrics(sims, np.array(["b"]), gallery)
    assert out["product_recall@1_best"] == 0.0
    assert out["product_recall@1_mean2"] == 1.0


def test_leave_one_out_excludes_the_query_itself():
    x = _unit(np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]]))
    out = measure(x, ["a", "b", "a", "b"])
    assert out.protocol == "leave-one-out"
    assert out.raw["recall@1"] == 0.0  # each photo's nearest other photo is the other product


def test_split_adaptation_never_fits_on_the_queries():
    """The queries of product p (another photo session) carry a marker r_p that the gallery
    photos of product p+1 carry too, so raw search confuses them. Fitted with the queries, the
    within-product scatter would contain every marker and whitening would remove them (recall@1
    near 1); fitted on the gallery alone, where a marker is constant within a product, it cannot."""
    rng = np.random.default_rng(0)
    products, d = 10, 64
    centres = _unit(rng.normal(size=(products, d)))
    markers = _unit(rng.normal(size=(products, d)))
    x, y, q = [], [], []
    for p in range(products):
        for i in range(9):
            is_query = i >= 6
            marker = markers[p] if is_query else markers[(p - 1) % products]
            x.append(centres[p] + 1.5 * marker + 0.1 * rng.normal(size=d))
            y.append(f"p{p}")
            q.append(is_query)
    x, y, q = _unit(np.asarray(x)), np.asarray(y), np.asarray(q)
    result = measure(x, y, q, adapt=True)
    assert result.queries == 30 and result.gallery == 60
    assert result.fits and result.fits[0].photos == 60
    leaked = fit(x, y, shrinkage=0.1)  # what fitting on the queries too would give
    gx, gy, qx, qy = x[~q], y[~q], x[q], y[q]
    leaked_recall = float((gy[(leaked.apply(qx) @ leaked.apply(gx).T).argmax(1)] == qy).mean())
    assert result.raw["recall@1"] < 0.3
    assert leaked_recall > 0.8
    assert result.adapted["recall@1"] < leaked_recall - 0.4


def test_leave_one_out_adaptation_fits_without_the_query():
    """Two photos per product, far apart along a product-specific direction: a fit that holds
    both learns to ignore that direction (recall@1 near 1); with k folds the query is never in
    its own fit, so its product contributes no scatter and recall stays low."""
    rng = np.random.default_rng(1)
    products, d = 12, 256
    centres = _unit(rng.normal(size=(products, d)))
    nuisance = _unit(rng.normal(size=(products, d)))
    x = np.concatenate([centres + 2 * nuisance, centres - 2 * nuisance])
    y = np.asarray([f"p{p}" for p in range(products)] * 2)
    x = _unit(x)
    result = measure(x, y, adapt=True, folds=4)
    assert len(result.fits) == 4 and all(f.photos < len(y) for f in result.fits)
    leaked = fit(x, y, shrinkage=1.0).apply(x)
    sims = leaked @ leaked.T
    np.fill_diagonal(sims, -np.inf)
    leaked_recall = float((y[sims.argmax(1)] == y).mean())
    assert result.raw["recall@1"] < 0.2
    assert leaked_recall > 0.8
    assert result.adapted["recall@1"] < 0.3


def test_stratified_folds_spread_each_product():
    labels = np.asarray(["a"] * 10 + ["b"] * 3)
    folds = stratified_folds(labels, 5, np.random.default_rng(0))
    assert sorted(np.bincount(folds[:10], minlength=5)) == [2] * 5
    assert len(set(folds[10:])) == 3


def test_split_needs_both_sides():
    with pytest.raises(ValueError, match="queries and a gallery"):
        measure(np.eye(3), ["a", "b", "c"], np.array([True, True, True]))
