"""``StoreAdmin``: the collection-level operations on physical collections by name that the
adaptation layer needs (copying a catalogue between collections, the projections' side
collection, reading a collection's space), over the store's backend, which stays private.

No model checks here: callers name the collection and read or write points as stored
(``Record`` out, ``StoredPoint`` in, both re-exported by ``visual_search.store``). Filters are
named by what they match (a payload field's value, points indexed after a time), so callers
never build Qdrant's filter types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .backend import CollectionInfo, Record, StoreBackend, StoredPoint, VectorSpec
from .raw import field_is, indexed_after


class StoreAdmin:
    """Collections by physical name, as stored (``CatalogStore.admin()``)."""

    def __init__(self, backend: StoreBackend):
        self._backend = backend

    def collection_exists(self, name: str) -> bool:
        return self._backend.collection_exists(name)

    def collection_info(self, name: str) -> CollectionInfo:
        """Metadata, named vectors (name -> dimension), points of collection ``name``."""
        return self._backend.collection_info(name)

    def collection_metadata(self, name: str) -> dict[str, Any]:
        return dict(self._backend.collection_info(name).metadata)

    def update_metadata(self, name: str, changes: Mapping[str, Any]) -> None:
        """Merge ``changes`` into the metadata of collection ``name``."""
        self._backend.update_metadata(name, {**self.collection_metadata(name), **changes})

    def create_collection(
        self, name: str, vectors: Mapping[str, VectorSpec], metadata: Mapping[str, Any]
    ) -> None:
        """A bare collection (no payload indexes); raises ``CollectionExists`` on a race."""
        self._backend.create_collection(name, vectors, metadata)

    def scroll(
        self,
        name: str,
        limit: int,
        offset: Any = None,
        payload: Sequence[str] | bool = True,
        vectors: Sequence[str] = (),
        where: tuple[str, Any] | None = None,
    ) -> tuple[list[Record], Any]:
        """One page of points (``where``: a top-level payload field and the value it equals)
        and the offset of the next page (None after the last)."""
        condition = field_is(*where) if where else None
        return self._backend.scroll(name, condition, limit, offset, payload, list(vectors))

    def retrieve(self, name: str, ids: Sequence[str], vectors: Sequence[str] = ()) -> list[Record]:
        return self._backend.retrieve(name, list(ids), list(vectors)) if ids else []

    def upsert(self, name: str, points: Sequence[StoredPoint]) -> None:
        self._backend.upsert(name, points)

    def delete_ids(self, name: str, ids: Sequence[str]) -> None:
        if ids:
            self._backend.delete_ids(name, list(ids))

    def delete_where(self, name: str, key: str, value: Any) -> None:
        """Delete the points whose top-level payload field ``key`` equals ``value``."""
        self._backend.delete_where(name, field_is(key, value))

    def count_indexed_after(self, name: str, stamp: str) -> int:
        """Points whose ``indexed_at`` is after the ISO time ``stamp``; an engine without
        datetime ranges (the embedded one) raises ``TypeError`` or ``ValueError``."""
        return self._backend.count(name, indexed_after(stamp))
