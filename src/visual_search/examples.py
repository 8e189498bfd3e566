""" "More like this" / "not this": a shopper's picks among the results steer the next search.

``positive`` and ``negative`` name products (their id) or single images (a point id, as a UUID)
of the catalogue. Each example is its stored vectors in the space the query is compared in
(a product: the mean of its images). The query becomes Qdrant's ``average_vector``
recommendation: the mean of the query and the positives, pushed away from the negatives' mean
(``avg_pos + (avg_pos - avg_neg)``). Computed here from stored vectors, it means the same on
every engine (server, Qdrant Cloud, embedded). A product named "not this" is also left out of the
answer. An example the catalogue does not hold is bad input (422), never silently dropped.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InvalidOptions, NotFoundError

MAX_EXAMPLES = 20  # per list


@dataclass(frozen=True)
class Example:
    vector: np.ndarray  # unit length, in the compared space
    product_id: str


def is_point_id(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


def resolve(store, ids: Sequence[str], name: str, field: str) -> list[Example]:
    """The examples' vectors (``store``: a CatalogStore pinned to the compared space)."""
    points = store.point_vectors([i.lower() for i in ids if is_point_id(i)], name)
    out = []
    for n, given in enumerate(ids):
        if is_point_id(given):
            found = points.get(given.lower())
            if found is None:
                raise _unknown(field, n, f"image {given}")
            vector, payload = found
            product = str(payload.get("product_id", ""))
        else:
            try:
                vector = store.product_vectors(given, name).mean(axis=0)
            except NotFoundError:
                raise _unknown(field, n, f"product {given[:80]!r}") from None
            product = given
        out.append(Example(_unit(vector), product))
    return out


def steer(query: np.ndarray, positive: Sequence[Example], negative: Sequence[Example]) -> np.ndarray:
    """Qdrant's average_vector recommendation, from the query and the examples."""
    mean_positive = np.mean([_unit(query), *(e.vector for e in positive)], axis=0)
    if not negative:
        return _unit(mean_positive)
    mean_negative = np.mean([e.vector for e in negative], axis=0)
    return _unit(mean_positive + (mean_positive - mean_negative))


def _unknown(field: str, index: int, what: str) -> InvalidOptions:
    return InvalidOptions(
        f"{field}[{index}]: {what} is not in the catalogue",
        [{"loc": [field, str(index)], "msg": "not found"}],
    )


def _unit(vector: np.ndarray) -> np.ndarray:
    v = np.asarray(vector, np.float32)
    return v / max(float(np.linalg.norm(v)), 1e-12)
