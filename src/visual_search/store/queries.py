"""Queries: a ``Filter`` in Qdrant's terms, nearest images, one per product, rerank, pages.

``qdrant_filter`` is the one place where the domain's ``Filter`` becomes payload paths and
match conditions. ``Searcher`` turns a ``Query`` into ``Nearest`` requests for a backend and
groups the answers by product.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from qdrant_client import models

from ..config import StoreSettings
from ..domain import Filter, Hit, Query
from .backend import Nearest, StoreBackend

MAX_GROUP_FETCH = 4096  # images one over-fetch may take before grouping differently
GROUP_ROUND = 40  # products asked for per round where the engine cannot group


def _match(key: str, values: Sequence) -> models.FieldCondition:
    for value in values:
        if isinstance(value, bool):
            # Qdrant engines disagree on booleans (qdrant-edge reads True as 1); payload values
            # we filter on are strings and numbers, so a boolean is a caller's mistake.
            raise TypeError(f"filter on {key!r}: boolean values are not supported; use a string")
    if len(values) == 1:
        return models.FieldCondition(key=key, match=models.MatchValue(value=values[0]))
    return models.FieldCondition(key=key, match=models.MatchAny(any=list(values)))


def qdrant_filter(filters: Filter | None) -> models.Filter | None:
    """The domain's filter in Qdrant's terms (None when it lets everything through)."""
    if filters is None or filters.empty:
        return None
    must: list[models.Condition] = [
        _match(name, getattr(filters, name)) for name in Filter.KEYWORDS if getattr(filters, name)
    ]
    if filters.price is not None:
        p = filters.price
        must.append(
            models.FieldCondition(key="price", range=models.Range(gt=p.gt, gte=p.gte, lt=p.lt, lte=p.lte))
        )
    must += [_match(f"metadata.{key.lower()}", values) for key, values in filters.metadata.items()]
    must_not: list[models.Condition] = []
    if filters.exclude_products:
        must_not.append(_match("product_id", filters.exclude_products))
    return models.Filter(must=must or None, must_not=must_not or None)


class Searcher:
    """Nearest images of one collection, optionally one per product and reranked."""

    def __init__(
        self,
        backend: StoreBackend,
        collection: str,
        settings: StoreSettings,
        vector: str,
        rerank: str | None,
    ):
        self.backend = backend
        self.collection = collection
        self.settings = settings
        self.vector = vector
        self.rerank = rerank

    def request(self, vector: np.ndarray, query: Query, limit: int, offset: int = 0) -> Nearest:
        where = qdrant_filter(query.filter)
        first = Nearest(
            np.asarray(vector, np.float32),
            using=query.using or self.vector,
            filter=where,
            limit=limit,
            offset=offset,
            score_threshold=query.score_threshold,
        )
        if query.rerank is None or not self.rerank:
            return first
        # Candidates by the fast vector, then ordered by the precise one. The pool is the same
        # for every page (not grown with the offset), so pages of one query neither repeat nor
        # skip a result; pagination ends at RERANK_CANDIDATES images.
        pool = replace(first, limit=self.settings.rerank_candidates, offset=0, score_threshold=None)
        return replace(first, vector=np.asarray(query.rerank, np.float32), using=self.rerank, prefetch=pool)

    def nearest(self, vector: np.ndarray, query: Query, limit: int, offset: int = 0) -> list[Hit]:
        return self.backend.query(self.collection, self.request(vector, query, limit, offset))

    @staticmethod
    def visible(hits: list[Hit], query: Query) -> list[Hit]:
        """The hits a search may answer with: without held-back shopper views (a page of plain
        images may then hold fewer than asked; a page of products is filled from further images)."""
        return hits if query.with_held else [h for h in hits if not h.payload.get("held")]

    def search(self, vector: np.ndarray, query: Query) -> list[Hit]:
        """Nearest images, or with grouping the best image of each of the nearest products."""
        if not query.group_by_product:
            return self.visible(self.nearest(vector, query, query.top_k, query.offset), query)
        return self.grouped(vector, query)

    def grouped(self, vector: np.ndarray, query: Query) -> list[Hit]:
        """One hit per product, by over-fetching images and keeping each product's best.

        Results come sorted by score, so the first image seen of a product is its best and the
        order of first sightings is the order of products. If a page of images holds too few
        products, fetch a bigger one; stop when Qdrant has no more images to give. Past
        ``MAX_GROUP_FETCH`` images (deep pages of products with many images), group otherwise.
        """
        wanted = query.offset + query.top_k
        limit = max(32, wanted * 4)
        while True:
            hits = self.nearest(vector, query, limit)
            best: dict[str, Hit] = {}
            for hit in self.visible(hits, query):
                best.setdefault(str(hit.payload.get("product_id")), hit)
            if len(best) >= wanted or len(hits) < limit:
                return list(best.values())[query.offset : wanted]
            if limit >= MAX_GROUP_FETCH:
                return self.best_of_groups(vector, query, wanted)[query.offset : wanted]
            limit = min(MAX_GROUP_FETCH, limit * 4)

    def best_of_groups(self, vector: np.ndarray, query: Query, groups: int) -> list[Hit]:
        """The best image of each of the nearest ``groups`` products: the engine's own grouping,
        or rounds that each exclude the products already found."""
        if self.backend.groups_natively:
            return self.backend.query_groups(
                self.collection, self.request(vector, query, groups), "product_id", groups
            )
        found: list[Hit] = []
        seen: list[str] = []
        while len(found) < groups:
            round_query = replace(query, exclude_products=[*query.exclude_products, *seen])
            hits = self.nearest(vector, round_query, GROUP_ROUND * 4)
            fresh: dict[str, Hit] = {}
            for hit in self.visible(hits, query):
                fresh.setdefault(str(hit.payload.get("product_id")), hit)
            # Images come by score, so each product's first image here is its best, and any
            # product not seen scores below all of these: every product seen is final.
            kept = list(fresh.values())
            if not kept:
                break
            found += kept
            seen += [str(h.payload.get("product_id")) for h in kept]
            if len(hits) < GROUP_ROUND * 4:
                break
        return found[:groups]
