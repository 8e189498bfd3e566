"""Retrieval metrics on vectors (numpy, exact cosine): the split protocol, leave-one-out, adaptation.

``measure`` ranks every query's gallery by cosine similarity, as the store's exact search does,
and reports recall@1/5/10 (a photo of the right product among the first k) and mAP@R (R = the
gallery photos of the query's product). With ``adapt`` it also fits the catalogue adaptation
(:mod:`whitening`) and measures again in the adapted space, and it never fits on a query:

- split protocol (``is_query`` given): one fit on the gallery photos only;
- leave-one-out (every photo queries all the others): k folds stratified by product; the photos
  of fold f are queried in a space fitted on the other folds only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..adaptation import calibration, whitening

KS = (1, 5, 10)
GROUP_SCORES = ("best", "mean2")


@dataclass
class Fit:
    fold: int | None
    photos: int
    reason: str
    shrinkage: float | None
    dims: int | None
    cv_recall_raw: float
    cv_recall_adapted: float | None

    @classmethod
    def of(cls, fold: int | None, photos: int, report: whitening.FitReport) -> Fit:
        p = report.projection
        return cls(
            fold,
            photos,
            report.reason,
            p.shrinkage if p else None,
            p.dim if p else None,
            report.cv_recall_raw,
            report.cv_recall_adapted,
        )


@dataclass
class Measured:
    protocol: str  # "split" or "leave-one-out"
    queries: int
    gallery: int
    raw: dict[str, float]
    adapted: dict[str, float] | None = None
    fits: list[Fit] = field(default_factory=list)
    # split protocol with adapt: the confidence calibrated on the gallery, scored on the queries
    confidence: dict[str, dict] = field(default_factory=dict)


def metrics(
    sims: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray, exclude: np.ndarray | None = None
) -> dict[str, float]:
    """recall@k, mAP@R and product-level recall@1 (by ``GROUP_SCORES``) of (queries, gallery) sims.

    ``exclude[i]`` is the gallery index of query i itself (leave-one-out), or -1.
    """
    sims = np.array(sims, np.float64)
    if exclude is not None:
        rows = np.flatnonzero(exclude >= 0)
        sims[rows, exclude[rows]] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")
    relevant = gallery_labels[order] == query_labels[:, None]
    if exclude is not None:
        relevant &= np.isfinite(np.take_along_axis(sims, order, axis=1))
    out = {f"recall@{k}": float(relevant[:, :k].any(axis=1).mean()) for k in KS}
    r = relevant.sum(axis=1)
    hits = np.cumsum(relevant, axis=1)
    ranks = np.arange(1, relevant.shape[1] + 1)
    aps = [
        float((relevant[i, : r[i]] * hits[i, : r[i]] / ranks[: r[i]]).sum() / r[i])
        for i in range(len(r))
        if r[i]
    ]
    out["mAP@R"] = float(np.mean(aps)) if aps else 0.0
    for score in GROUP_SCORES:
        out[f"product_recall@1_{score}"] = _product_recall(sims, query_labels, gallery_labels, score)
    return {k: round(v, 4) for k, v in out.items()}


def _product_recall(sims: np.ndarray, qy: np.ndarray, gy: np.ndarray, score: str) -> float:
    """Share of queries whose best-scoring product is right; a product scores its best photo's
    similarity (``best``) or the mean of its best two (``mean2``; a one-photo product: its one)."""
    products = np.unique(gy)
    scores = np.full((len(sims), len(products)), -np.inf)
    for j, product in enumerate(products):
        s = np.sort(sims[:, gy == product], axis=1)[:, ::-1]
        if score == "best" or s.shape[1] < 2:
            scores[:, j] = s[:, 0]
        else:
            second = np.where(np.isfinite(s[:, 1]), s[:, 1], s[:, 0])
            scores[:, j] = (s[:, 0] + second) / 2
    return float((products[scores.argmax(axis=1)] == qy).mean())


def measure(
    vectors: np.ndarray,
    labels: Sequence[str],
    is_query: np.ndarray | None = None,
    adapt: bool = False,
    folds: int = 5,
    choose: Callable[..., whitening.FitReport] = whitening.choose,
    seed: int = 0,
) -> Measured:
    """Raw (and with ``adapt``, adapted) metrics; ``is_query`` None means leave-one-out."""
    x = _normalise(np.asarray(vectors, np.float32))
    y = np.asarray([str(label) for label in labels])
    if is_query is not None:
        return _split(x, y, np.asarray(is_query, bool), adapt, choose)
    return _leave_one_out(x, y, adapt, folds, choose, seed)


def _split(x, y, is_query, adapt, choose) -> Measured:
    """Queries whose product has no gallery photo (left out of the catalogue) are scored only
    by the confidence's open-set figures, never by recall."""
    gx, gy, qx, qy = x[~is_query], y[~is_query], x[is_query], y[is_query]
    known = np.isin(qy, gy)
    if not known.any() or not len(gx):
        raise ValueError(
            f"the split needs queries and a gallery: {int(known.sum())} queries, {len(gx)} gallery"
        )
    kx, ky = qx[known], qy[known]
    result = Measured("split", len(kx), len(gx), metrics(kx @ gx.T, ky, gy))
    if adapt:
        report = choose(gx, gy)  # the gallery only: never a query
        result.fits.append(Fit.of(None, len(gx), report))
        p = report.projection
        result.adapted = metrics(p.apply(kx) @ p.apply(gx).T, ky, gy) if p else dict(result.raw)
        for name, projection in (("raw", None), ("adapted", p)):
            result.confidence[name] = _confidence(gx, gy, qx, qy, known, projection)
    return result


def _confidence(gx, gy, qx, qy, known, projection) -> dict:
    """The calibration ``adapt`` would fit on this gallery, scored on the queries."""
    fitted = calibration.calibrate(gx, list(gy), projection)
    if fitted is None:
        return {"calibrated": False}
    space = projection.apply if projection is not None else (lambda v: v)
    rows = calibration.ranked_rows(space(qx) @ space(gx).T, qy, gy)
    return {"calibrated": True, "cv_ece": fitted.stats["cv_ece"], **calibration.scored(fitted, rows, known)}


def _leave_one_out(x, y, adapt, folds, choose, seed) -> Measured:
    n = len(y)
    if n < 2:
        raise ValueError("leave-one-out needs at least two photos")
    everyone = np.arange(n)
    result = Measured("leave-one-out", n, n - 1, metrics(x @ x.T, y, y, everyone))
    if not adapt:
        return result
    fold_of = stratified_folds(y, folds, np.random.default_rng(seed))
    sims = np.empty((n, n))
    for fold in range(folds):
        queries = np.flatnonzero(fold_of == fold)
        if not len(queries):
            continue
        fitted = fold_of != fold  # this fold's photos are not in its fit
        report = choose(x[fitted], y[fitted])
        result.fits.append(Fit.of(fold, int(fitted.sum()), report))
        space = report.projection.apply(x) if report.projection else x
        sims[queries] = space[queries] @ space.T
    result.adapted = metrics(sims, y, y, everyone)
    return result


def stratified_folds(labels: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
    """A fold number per photo; each product's photos spread over the folds (from a random one)."""
    fold_of = np.empty(len(labels), np.int64)
    for product in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == product))
        fold_of[rows] = (np.arange(len(rows)) + rng.integers(folds)) % folds
    return fold_of


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
