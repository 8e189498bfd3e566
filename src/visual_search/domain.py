"""The catalogue's domain types, shared by the API, the catalogue and the store.

A point is one image of a product (``ImagePoint``); a search is a ``Query`` with a typed
``Filter``; its answer is a list of ``Hit``. None of these know Qdrant: the store translates a
``Filter`` into Qdrant's terms (payload paths such as ``metadata.<key>``) in one place
(``visual_search.store.queries.qdrant_filter``).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

POINT_NAMESPACE = uuid.UUID("5f0c3a52-3c1e-4a8e-9a43-0e3b7f1d2c61")
# The payload fields recording a point's image and its indexing (``catalog.build_payload``), beside
# the product's own (product_id, category, brand, title, price, metadata): not shown as the
# product's metadata in results, and not a search filter.
RECORD_FIELDS = frozenset(
    {
        "bucket",
        "key",
        "size",
        "content_type",
        "etag",
        "version_id",
        "sequencer",
        "model_id",
        "indexed_at",
        "source",
        "search_id",
        "held",
    }
)
SHOPPER = "shopper"  # payload ``source`` of a shopper view (visual_search.feedback)


def point_id(bucket: str, key: str) -> str:
    """Deterministic point id of an image: the same object always maps to the same point."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{bucket}/{key}"))


@dataclass
class ImagePoint:
    """One image to store: where it lives, its vector(s) and its product payload.

    ``vector`` is the main ("image") vector, ``rerank_vector`` the optional reranker's;
    ``vectors`` holds any further named vectors the collection is configured with (by name).
    """

    bucket: str
    key: str
    vector: np.ndarray
    payload: dict[str, Any]
    rerank_vector: np.ndarray | None = None
    vectors: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return point_id(self.bucket, self.key)


@dataclass
class Hit:
    id: str
    score: float
    payload: dict[str, Any]
    vector: list[float] | None = None
    confidence: float | None = None  # calibrated: the chance this is the photo's product


@dataclass(frozen=True)
class Range:
    """A numeric range; at least one bound."""

    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None

    def __post_init__(self) -> None:
        bounds = [b for b in (self.gt, self.gte, self.lt, self.lte) if b is not None]
        if not bounds:
            raise ValueError("a range needs at least one of gt, gte, lt, lte")
        if not all(math.isfinite(float(b)) for b in bounds):
            raise ValueError("range bounds must be finite numbers")

    @classmethod
    def of(cls, bounds: Mapping[str, Any]) -> Range:
        unknown = set(bounds) - {"gt", "gte", "lt", "lte"}
        if unknown:
            raise ValueError(f"unknown range operator(s): {sorted(unknown)}")
        return cls(**{op: float(v) for op, v in bounds.items() if v is not None})


def _values(value: Any) -> tuple[Any, ...]:
    values = tuple(value) if isinstance(value, (list, tuple, set, frozenset)) else (value,)
    if not values:
        raise ValueError("an any-of filter needs at least one value")
    return values


@dataclass(frozen=True)
class Filter:
    """Which images a search, count or scroll sees: every given condition must hold.

    A tuple of values matches any of them. ``metadata`` matches the other user metadata (the
    S3 metadata names, lower case, with string values as S3 stores them).
    """

    product_id: tuple[str, ...] = ()
    category: tuple[str, ...] = ()
    brand: tuple[str, ...] = ()
    bucket: tuple[str, ...] = ()
    key: tuple[str, ...] = ()
    source: tuple[str, ...] = ()
    price: Range | None = None
    metadata: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    exclude_products: tuple[str, ...] = ()

    KEYWORDS = ("product_id", "category", "brand", "bucket", "key", "source")

    @classmethod
    def of(cls, filters: Filter | Mapping[str, Any] | None) -> Filter:
        """A ``Filter`` from the plain form: ``{"category": "Milk", "brand": ["A", "B"],
        "price": {"gte": 1}, "colour": "red"}`` (any other key is user metadata; a
        ``metadata.`` prefix is accepted too)."""
        if filters is None:
            return cls()
        if isinstance(filters, Filter):
            return filters
        fields: dict[str, Any] = {}
        metadata: dict[str, tuple[str, ...]] = {}
        for name, value in filters.items():
            if name in cls.KEYWORDS:
                fields[name] = _values(value)
            elif name == "price":
                fields[name] = value if isinstance(value, Range) else Range.of(value)
            elif name == "exclude_products":
                fields[name] = _values(value)
            else:
                metadata[name.removeprefix("metadata.")] = _values(value)
        return cls(**fields, metadata=metadata)

    def excluding(self, products: Sequence[str]) -> Filter:
        if not products:
            return self
        return Filter(**{**self.__dict__, "exclude_products": (*self.exclude_products, *products)})

    @property
    def empty(self) -> bool:
        return not (
            any(getattr(self, name) for name in self.KEYWORDS)
            or self.price
            or self.metadata
            or self.exclude_products
        )


@dataclass
class Query:
    """A nearest-neighbour request: filters, page, threshold and whether to group by product."""

    top_k: int = 10
    offset: int = 0
    score_threshold: float | None = None
    group_by_product: bool = True
    filters: Filter = field(default_factory=Filter)
    exclude_products: Sequence[str] = ()
    # With a reranking model: the query's second vector; candidates found with the first
    # vector are re-scored with it (Qdrant prefetch + query).
    rerank: np.ndarray | None = None
    # The named vector the main query vector is compared with (default: the model's "image").
    using: str | None = None
    # "More like this" / "not this": product ids or point ids whose stored vectors steer the query.
    positive: Sequence[str] = ()
    negative: Sequence[str] = ()
    # Shopper views held back (payload ``held``, visual_search.feedback.review) answer no search;
    # the review itself looks at them.
    with_held: bool = False

    def __post_init__(self) -> None:
        # The plain mapping form is still accepted (tests, scripts): typed from here on.
        if not isinstance(self.filters, Filter):
            self.filters = Filter.of(self.filters)

    @property
    def filter(self) -> Filter:
        """The filters with the excluded products folded in."""
        return self.filters.excluding(list(self.exclude_products))
