"""Validation figures: recall@k of product search on held-back photos (numpy, no torch).

Products are ranked by their best gallery photo, as the service's ``group_by_product`` answers;
recall@k is the share of queries whose product is among the first k products.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

KS = (1, 5)


@dataclass(frozen=True)
class Recall:
    recall_at_1: float
    recall_at_5: float
    queries: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def __str__(self) -> str:
        return f"recall@1 {self.recall_at_1:.3f}  recall@5 {self.recall_at_5:.3f}"


def product_recall(
    gallery: np.ndarray,
    gallery_labels: Sequence[str],
    queries: np.ndarray,
    query_labels: Sequence[str],
) -> Recall:
    """Cosine nearest products (vectors are unit length) for each query."""
    if len(queries) == 0:
        return Recall(0.0, 0.0, 0)
    rank = product_ranks(gallery, gallery_labels, queries, query_labels)
    hits = {k: float(np.mean(rank < k)) for k in KS}
    return Recall(round(hits[1], 4), round(hits[5], 4), len(queries))


def product_ranks(
    gallery: np.ndarray,
    gallery_labels: Sequence[str],
    queries: np.ndarray,
    query_labels: Sequence[str],
) -> np.ndarray:
    """Each query's product's rank among the gallery's products (0: first; a product missing
    from the gallery ranks after all of them)."""
    products = sorted(set(gallery_labels))
    column = {p: i for i, p in enumerate(products)}
    scores = queries @ gallery.T  # (Q, G)
    best = np.full((len(queries), len(products)), -np.inf, np.float32)
    for g, label in enumerate(gallery_labels):
        j = column[label]
        best[:, j] = np.maximum(best[:, j], scores[:, g])
    order = np.argsort(-best, axis=1, kind="stable")
    truth = np.asarray([column.get(label, -1) for label in query_labels])
    found = order == truth[:, None]
    return np.where(found.any(axis=1), np.argmax(found, axis=1), len(products))


@dataclass(frozen=True)
class Change:
    """The paired change in recall@1 from one model to another on the same queries, with a 95%
    interval whose standard error is clustered by product: a product's queries are photos of
    one object, often from one session, and do not count as independent evidence."""

    before: float
    after: float
    delta: float
    low: float
    high: float
    queries: int
    products: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"recall@1 {self.before:.3f} -> {self.after:.3f}, change {self.delta:+.3f} "
            f"(95% interval {self.low:+.3f} to {self.high:+.3f}; {self.queries} photos of "
            f"{self.products} products, clustered by product)"
        )


def paired_change(before: np.ndarray, after: np.ndarray, groups: Sequence[str]) -> Change:
    """``before``/``after``: each query's hit (True: its product came first) under each model."""
    d = np.asarray(after, np.float64) - np.asarray(before, np.float64)
    n = len(d)
    if n == 0:
        return Change(0.0, 0.0, 0.0, 0.0, 0.0, 0, 0)
    mean = float(d.mean())
    names = sorted(set(groups))
    index = {g: i for i, g in enumerate(names)}
    cluster = np.asarray([index[g] for g in groups])
    residual = np.bincount(cluster, weights=d - mean, minlength=len(names))
    if len(names) >= 2:
        variance = len(names) / (len(names) - 1) * float(np.sum(residual**2)) / n**2
    else:  # one product: no clusters to compare, the photos' own spread
        variance = float(d.var(ddof=1)) / n if n > 1 else 0.0
    half = 1.96 * variance**0.5
    return Change(
        round(float(np.mean(before)), 4),
        round(float(np.mean(after)), 4),
        round(mean, 4),
        round(mean - half, 4),
        round(mean + half, 4),
        n,
        len(names),
    )


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
