"""Learned whitening on synthetic catalogues whose nuisance direction is known."""

from __future__ import annotations

import numpy as np
import pytest

from visual_search.adaptation.whitening import FitReport, Projection, choose, fit, sample_rows


def catalogue(products=12, photos=6, d=32, nuisance=8.0, seed=0):
    """Products differ weakly in every direction; photos vary strongly along a few shared
    nuisance directions (lighting, shelf): raw nearest neighbours follow the nuisance."""
    rng = np.random.default_rng(seed)
    nuisance_dirs = np.linalg.qr(rng.normal(size=(d, 3)))[0].T  # 3 orthonormal directions
    centres = rng.normal(size=(products, d))
    x, y = [], []
    for p in range(products):
        for _ in range(photos):
            v = centres[p] + 0.3 * rng.normal(size=d) + nuisance * rng.normal(size=3) @ nuisance_dirs
            x.append(v)
            y.append(f"p{p}")
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.asarray(y), nuisance_dirs


def recall_at_1(queries, qy, gallery, gy) -> float:
    sims = queries @ gallery.T
    return float((gy[sims.argmax(axis=1)] == qy).mean())


def split(x, y, per_product_queries=2):
    q = np.zeros(len(y), bool)
    for label in np.unique(y):
        q[np.flatnonzero(y == label)[:per_product_queries]] = True
    return x[~q], y[~q], x[q], y[q]


def test_whitening_suppresses_the_known_nuisance_direction():
    x, y, nuisance = catalogue()
    projection = fit(x, y, shrinkage=0.1)
    # A step along a nuisance direction moves the adapted vector far less than a step along a
    # direction products differ in.
    base = x[0]
    along_nuisance = projection.apply(base + 0.2 * nuisance[0]) @ projection.apply(base)
    other = np.linalg.qr(np.c_[nuisance.T, np.random.default_rng(1).normal(size=(x.shape[1], 1))])[0][:, 3]
    along_other = projection.apply(base + 0.2 * other) @ projection.apply(base)
    assert along_nuisance > 0.99
    assert along_other < along_nuisance - 0.05


def test_adaptation_raises_recall_on_held_back_photos():
    x, y, _ = catalogue(seed=2)
    gx, gy, qx, qy = split(x, y)
    raw = recall_at_1(qx, qy, gx, gy)
    projection = fit(gx, gy, shrinkage=0.1)
    adapted = recall_at_1(projection.apply(qx), qy, projection.apply(gx), gy)
    assert raw < 0.6
    assert adapted > raw + 0.3


def test_apply_shapes_and_normalisation():
    x, y, _ = catalogue(d=16)
    projection = fit(x, y, shrinkage=0.3, dims=5)
    assert projection.dim == 5 and projection.matrix.shape == (16, 5)
    many = projection.apply(x)
    assert many.shape == (len(x), 5) and many.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(many, axis=1), 1.0, rtol=1e-5)
    one = projection.apply(x[3])
    assert one.shape == (5,)
    np.testing.assert_allclose(one, many[3], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="16-d"):
        projection.apply(np.ones(17, np.float32))


def test_round_trip_and_id():
    x, y, _ = catalogue(d=16)
    projection = choose(x, y).projection
    assert projection is not None
    data = projection.to_bytes()
    again = Projection.from_bytes(data)
    assert again.id == projection.id and len(projection.id) == 64
    assert again.shrinkage == projection.shrinkage and again.stats == projection.stats
    np.testing.assert_array_equal(again.matrix, projection.matrix)
    assert again.mean.dtype == np.float32
    # The id changes with what decides the space, not with the statistics.
    other = Projection(projection.mean, projection.matrix, projection.shrinkage * 2, projection.stats)
    assert other.id != projection.id
    assert Projection(projection.mean, projection.matrix, projection.shrinkage, {}).id == projection.id
    for stat in ("products", "photos", "dims", "cv_recall_raw", "cv_recall_adapted", "fitted_at"):
        assert stat in projection.stats


def test_from_bytes_refuses_other_files():
    with pytest.raises(ValueError, match="not a projection"):
        Projection.from_bytes(b"not an npz")
    import io

    buffer = io.BytesIO()
    np.savez(buffer, mean=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="not a projection"):
        Projection.from_bytes(buffer.getvalue())


def test_choose_picks_a_projection_when_it_helps():
    x, y, _ = catalogue(seed=3)
    report = choose(x, y, shrinkages=(0.1, 1.0), dims=(None, 8))
    assert isinstance(report, FitReport)
    assert report.projection is not None
    assert report.cv_recall_adapted > report.cv_recall_raw
    assert len(report.table) == 4
    assert {"shrinkage", "dims", "cv_recall@1"} <= set(report.table[0])
    assert "shrinkage" in report.reason
    stats = report.projection.stats
    assert stats["cv_recall_adapted"] == report.cv_recall_adapted
    assert stats["products"] == 12 and stats["photos"] == 72


def test_choose_keeps_the_raw_space_when_nothing_beats_it():
    # Well-separated products and isotropic noise: raw space is already perfect.
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(8, 24)) * 5
    x = np.repeat(centres, 5, axis=0) + 0.1 * rng.normal(size=(40, 24))
    y = np.repeat([f"p{i}" for i in range(8)], 5)
    report = choose(x.astype(np.float32), y, shrinkages=(0.1,), dims=(None,))
    assert report.projection is None
    assert "raw space" in report.reason and report.cv_recall_raw == 1.0


def test_choose_keeps_the_raw_space_for_a_small_catalogue():
    x, y, _ = catalogue(products=3, photos=2)
    report = choose(x, y)
    assert report.projection is None and report.cv_recall_adapted is None
    assert "too small" in report.reason


def test_fit_needs_a_scatter():
    x = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="two photos"):
        fit(x, ["a", "b", "c", "d"], shrinkage=0.1)
    with pytest.raises(ValueError, match="labels"):
        fit(x, ["a"], shrinkage=0.1)


def test_sample_is_stratified_and_bounded():
    rng = np.random.default_rng(0)
    labels = np.asarray([f"p{i}" for i in range(50) for _ in range(1 + i % 7)])
    rows = sample_rows(labels, 120, rng)
    assert len(rows) <= 120 and len(set(rows)) == len(rows)
    kept = labels[rows]
    _, counts = np.unique(kept, return_counts=True)
    assert counts.max() - counts[counts >= 2].min() <= counts.max()  # capped per product
    assert counts.max() <= 3  # the cap that fits 120 photos over 50 products
    few = sample_rows(labels, 30, rng)  # 2 per product would be 100: a subset of products
    assert len(few) <= 30 and np.unique(labels[few], return_counts=True)[1].min() >= 1
    assert len(sample_rows(labels, 10_000, rng)) == len(labels)


def test_the_same_catalogue_in_another_order_gets_the_same_fit():
    """A store lists points in its own order (scroll), a folder in another: the fit is the same."""
    x, y, _ = catalogue(seed=5)
    first = choose(x, y, shrinkages=(0.1, 1.0), dims=(None, 8))
    order = np.random.default_rng(1).permutation(len(y))
    again = choose(x[order], y[order], shrinkages=(0.1, 1.0), dims=(None, 8))
    assert first.projection is not None and again.projection is not None
    assert again.table == first.table and again.projection.id == first.projection.id


def test_a_small_catalogue_is_cross_validated_over_more_rounds():
    """Five rounds of 12 products are 60 held-back photos: too few to rank the candidates, so
    rounds go on (each photo held back at most once) until enough photos have been queried."""
    from visual_search.adaptation.whitening import CV_QUERIES

    x, y, _ = catalogue(products=12, photos=30, seed=2)
    report = choose(x, y, shrinkages=(0.1, 1.0), dims=(None,))
    assert report.projection is not None
    assert report.projection.stats["cv_queries"] >= min(CV_QUERIES, 12 * 29) > 5 * 12
    few = choose(x[::10], y[::10], shrinkages=(0.1, 1.0), dims=(None,))  # 3 photos per product
    assert few.projection is None or few.projection.stats["cv_queries"] <= 12 * 2
