"""Calibrated confidence: the probability that a result's product is the one in the photo.

A similarity's scale moves with every model and every refit of the adaptation, so neither a
shopper nor a shop engineer can read it. The catalogue itself says what a score means: each
round of a cross-validation queries one photo per product against the others, less the photos
most like it (a catalogue shot in one session is full of near-twins that a shopper's photo
never has), in a space fitted without the query (the adaptation refitted on the round's
gallery). Every ranked product of every round is a row: its similarity ``s``, its margin ``m``
to the best other product (positive for the first, negative after it) and whether it is the
query's product. A logistic regression on (s, m) turns a result into a probability.

The no-match threshold is the confidence that keeps ``KEEP_RIGHT`` of the right first answers
of those rounds: under it, the answer says the shop may not carry the product.

Stored as a small JSON object in the collection's metadata (``calibration``), written by
``visual-search adapt`` with the projection, so a refit or a new model brings its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from .whitening import _nearest_same_product, _normalise
from .whitening import fit as fit_projection

FORMAT = "visual-search-calibration/1"
FEATURES = (
    *("first", "first_score", "first_margin", "first_log_margin"),
    *("other", "other_score", "other_margin"),
)
LOG_OFFSET = 0.01
TOP = 5  # ranked products per query that become rows
KEEP_RIGHT = 0.9  # the no-match threshold keeps this share of right first answers
HIDE_NEAREST = 0.25  # share of the query's product's photos most like it hidden from its gallery
MIN_PRODUCTS = 3
MIN_QUERIES = 20
ROUNDS = 8
RIDGE = 1.0  # a weak prior on the weights: a catalogue with no mistake still gets finite ones
BINS = 10  # of the expected calibration error
MAX_CONFIDENCE = 0.9999  # no answer is certain: min_confidence=1 always means "no match"

# A space fitted on a round's gallery: (gallery vectors, labels) -> vectors -> vectors.
SpaceFit = Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]]


@dataclass(frozen=True)
class Calibration:
    weights: tuple[float, ...]  # of FEATURES
    no_match: float  # the default ``min_confidence``: under it, ``no_match``
    stats: dict[str, Any] = field(default_factory=dict)

    def confidence(
        self, scores: Sequence[float], best_other: float | None = None, later_page: bool = False
    ) -> list[float]:
        """Confidence of each product of one answer, ``scores`` in rank order (one per product).

        ``best_other``: the score of the best product not in ``scores`` (the next page's first),
        which the last-but-only product's margin needs when the answer holds a single product.
        ``later_page``: the answer's first product is on an earlier page, so every product here
        ranks behind the page's first (an upper bound of its margin).
        """
        s = np.clip(np.asarray(scores, np.float64), -1.0, 1.0)
        if not len(s):
            return []
        others = np.full(len(s), s[0])  # each product is measured against the first
        if not later_page:  # and the first against the best of the others
            if len(s) > 1:
                others[0] = s[1]
            else:  # one product: the bound its competitor scored under, else 0
                others[0] = best_other if best_other is not None else 0.0
        return [round(min(float(p), MAX_CONFIDENCE), 4) for p in self._p(s, s - others)]

    def _p(self, s: np.ndarray, m: np.ndarray) -> np.ndarray:
        z = features(s, m) @ np.asarray(self.weights)
        return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))

    def as_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self), "weights": list(self.weights)}

    @classmethod
    def from_dict(cls, data: Any) -> Calibration | None:
        """None for anything that is not a calibration of this format (an older collection)."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return None
        try:
            weights = tuple(float(w) for w in data["weights"])
            no_match = float(data["no_match"])
        except (KeyError, TypeError, ValueError):
            return None
        if len(weights) != len(FEATURES) or not all(math.isfinite(v) for v in (*weights, no_match)):
            return None
        return cls(weights, no_match, dict(data.get("stats") or {}))


def features(s: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The regression's inputs per ranked product. The first product (a positive margin) and
    the others get separate weights: how far the first stands ahead of the rest (its margin, and
    the margin's logarithm: the first hundredths of a margin say the most) is what tells a sure
    answer from a guess; for the others, how far behind the first they are."""
    s, m = np.asarray(s, np.float64), np.asarray(m, np.float64)
    first = (m > 0).astype(np.float64)
    other = 1.0 - first
    ahead = np.maximum(m, 0.0)
    return np.stack(
        [first, first * s, first * ahead, first * np.log(ahead + LOG_OFFSET), other, other * s, other * m],
        axis=-1,
    )


def annotate(hits: Sequence[Any], calibration: Calibration | None, offset: int, floor: float | None) -> None:
    """Set each hit's ``confidence`` (hits in rank order; a product's first hit is its best).

    On a later page (``offset`` > 0) the first product is not among the hits: every hit is
    ranked behind the page's first, an upper bound of its margin. With a score threshold and a
    single product, its competitor scored under the threshold: that is the margin's bound."""
    if calibration is None or not hits:
        return
    order: list[str] = []
    best: dict[str, float] = {}
    for hit in hits:
        product = str(hit.payload.get("product_id", hit.id))
        if product not in best:
            order.append(product)
            best[product] = float(hit.score)
    values = calibration.confidence([best[p] for p in order], best_other=floor, later_page=offset > 0)
    confidence = dict(zip(order, values))
    for hit in hits:
        hit.confidence = confidence[str(hit.payload.get("product_id", hit.id))]


@dataclass(frozen=True)
class Rows:
    """Cross-validation rows: per ranked product of each query, (s, m, right, first)."""

    score: np.ndarray
    margin: np.ndarray
    right: np.ndarray
    first: np.ndarray  # the row is its query's first product
    queries: int


def ranked_rows(
    sims: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray, top: int = TOP
) -> Rows:
    """Rows of each query's ``top`` products, ranked by their best photo (as the service groups)."""
    products = np.unique(gallery_labels)
    best = np.full((len(sims), len(products)), -np.inf)
    for j, product in enumerate(products):
        best[:, j] = sims[:, gallery_labels == product].max(axis=1)
    order = np.argsort(-best, axis=1, kind="stable")[:, : min(top, len(products))]
    s = np.clip(np.take_along_axis(best, order, axis=1), -1.0, 1.0)
    others = np.repeat(s[:, :1], s.shape[1], axis=1)
    if s.shape[1] > 1:
        others[:, 0] = s[:, 1]
    else:
        others[:, 0] = 0.0
    right = products[order] == query_labels[:, None]
    first = np.zeros_like(right)
    first[:, 0] = True
    return Rows(s.ravel(), (s - others).ravel(), right.ravel(), first.ravel(), len(sims))


def concat(parts: Sequence[Rows]) -> Rows:
    return Rows(
        np.concatenate([p.score for p in parts]),
        np.concatenate([p.margin for p in parts]),
        np.concatenate([p.right for p in parts]),
        np.concatenate([p.first for p in parts]),
        sum(p.queries for p in parts),
    )


def calibrate(x: np.ndarray, labels: Sequence[str], projection: Any = None) -> Calibration | None:
    """The calibration of a catalogue's space: the raw space, or ``projection``'s (a
    ``whitening.Projection``), refitted with its shrinkage and dimensions on each round's
    gallery so that no round's query is in the fit that ranks it."""

    def space_fit(gx: np.ndarray, gy: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        dims = projection.dim if projection.dim < projection.input_dim else None
        return fit_projection(gx, [str(v) for v in gy], projection.shrinkage, dims).apply

    rows = cross_validated_rows(x, labels, space_fit if projection is not None else None)
    return fit(rows, {"space": projection.id if projection is not None else "raw"})


def scored(calibration: Calibration, rows: Rows, in_catalogue: np.ndarray) -> dict[str, Any]:
    """How the calibration does on queries it was not fitted on (``rows`` of ``ranked_rows``;
    ``in_catalogue``: per query, whether its product is in the gallery)."""
    p = calibration._p(rows.score, rows.margin)
    first = np.flatnonzero(rows.first)
    conf, right = p[first], rows.right[first]
    known = np.asarray(in_catalogue, bool)
    flagged = conf < calibration.no_match
    out: dict[str, Any] = {
        "queries": int(known.sum()),
        "recall@1": round(float(right[known].mean()), 4) if known.any() else None,
        "mean_confidence": round(float(conf[known].mean()), 4) if known.any() else None,
        "ece": round(ece(conf[known], right[known]), 4),
        "auroc": round(auroc(conf[known], right[known]), 4),
        "ece_all_ranks": round(ece(p, rows.right), 4),
        "no_match_threshold": calibration.no_match,
        "right_kept": round(float(np.mean(~flagged[known & right])), 4) if (known & right).any() else None,
        "in_catalogue_no_match": round(float(flagged[known].mean()), 4) if known.any() else None,
    }
    if (~known).any():
        out["out_of_catalogue_queries"] = int((~known).sum())
        out["out_of_catalogue_no_match"] = round(float(flagged[~known].mean()), 4)
    return out


def cross_validated_rows(
    x: np.ndarray,
    labels: Sequence[str],
    space_fit: SpaceFit | None = None,
    rounds: int = ROUNDS,
    seed: int = 0,
    hide_nearest: float = HIDE_NEAREST,
) -> Rows:
    """Rows from rounds that query one photo per product (with two or more photos) against the
    rest, less its nearest same-product photos, in a space fitted on that gallery only."""
    x = _normalise(np.asarray(x, np.float32))
    y = np.asarray([str(label) for label in labels])
    rng = np.random.default_rng(seed)
    groups = [rng.permutation(np.flatnonzero(y == p)) for p in np.unique(y)]
    groups = [g for g in groups if len(g) >= 2]
    parts = []
    for round_ in range(rounds):
        held = np.array([g[round_] for g in groups if len(g) - 1 > round_], dtype=np.int64)
        if len(held) < MIN_PRODUCTS:
            break
        mask = np.ones(len(y), bool)
        mask[held] = False
        for q in held:
            mask[_nearest_same_product(x, y, q, mask, hide_nearest)] = False
        project = space_fit(x[mask], y[mask]) if space_fit else (lambda v: v)
        gallery, queries = project(x[mask]), project(x[held])
        parts.append(ranked_rows(queries @ gallery.T, y[held], y[mask]))
    return concat(parts) if parts else Rows(*(np.zeros(0),) * 3, np.zeros(0, bool), 0)


def fit(rows: Rows, fitted_on: dict[str, Any] | None = None) -> Calibration | None:
    """The logistic regression on the rows and its no-match threshold (None: too little to fit)."""
    if rows.queries < MIN_QUERIES or rows.right.all() or not rows.right.any():
        return None
    w = _logistic(features(rows.score, rows.margin), rows.right.astype(np.float64))
    calibration = Calibration(tuple(float(v) for v in w), 0.0)
    p = calibration._p(rows.score, rows.margin)
    first_right = rows.first & rows.right
    threshold = float(np.quantile(p[first_right], 1.0 - KEEP_RIGHT)) if first_right.any() else 0.0
    stats = {
        "fitted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "queries": rows.queries,
        "rows": len(rows.score),
        "cv_recall_at_1": round(float(first_right.sum() / max(rows.queries, 1)), 4),
        "cv_ece": round(ece(p[rows.first], rows.right[rows.first]), 4),
        "cv_auroc": round(auroc(p[rows.first], rows.right[rows.first]), 4),
        **(fitted_on or {}),
    }
    return Calibration(calibration.weights, round(threshold, 4), stats)


def _logistic(features: np.ndarray, target: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Newton's method with a small ridge on the weights (never on the intercepts)."""
    w = np.zeros(features.shape[1])
    ridge = np.full(features.shape[1], RIDGE)
    ridge[[0, 4]] = 0.0  # the two intercepts
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(features @ w, -40, 40)))
        gradient = features.T @ (p - target) + ridge * w
        hessian = (features * (p * (1 - p))[:, None]).T @ features + np.diag(ridge + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return w


def ece(confidence: np.ndarray, right: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error: |mean confidence - accuracy| over equal-width bins, weighted."""
    confidence, right = np.asarray(confidence, np.float64), np.asarray(right, np.float64)
    if not len(confidence):
        return 0.0
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.sum() * abs(confidence[inside].mean() - right[inside].mean())
    return float(total / len(confidence))


def auroc(confidence: np.ndarray, right: np.ndarray) -> float:
    """Probability that a right answer is more confident than a wrong one (ties count half)."""
    confidence, right = np.asarray(confidence, np.float64), np.asarray(right, bool)
    pos, neg = confidence[right], confidence[~right]
    if not len(pos) or not len(neg):
        return float("nan")
    ranks = _average_ranks(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_values[end] != sorted_values[start]:
            ranks[order[start:end]] = (start + end + 1) / 2  # 1-based average rank
            start = end
    return ranks
