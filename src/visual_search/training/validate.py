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
    products = sorted(set(gallery_labels))
    column = {p: i for i, p in enumerate(products)}
    scores = queries @ gallery.T  # (Q, G)
    best = np.full((len(queries), len(products)), -np.inf, np.float32)
    for g, label in enumerate(gallery_labels):
        j = column[label]
        best[:, j] = np.maximum(best[:, j], scores[:, g])
    order = np.argsort(-best, axis=1, kind="stable")
    truth = np.asarray([column.get(label, -1) for label in query_labels])
    rank = np.argmax(order == truth[:, None], axis=1)
    found = (order == truth[:, None]).any(axis=1)
    hits = {k: float(np.mean(found & (rank < k))) for k in KS}
    return Recall(round(hits[1], 4), round(hits[5], 4), len(queries))


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
