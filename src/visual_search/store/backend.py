"""The seam between ``CatalogStore`` and a Qdrant engine.

``CatalogStore`` speaks to one ``StoreBackend``: qdrant-client (a server, Qdrant Cloud, or
qdrant-client's local mode) or qdrant-edge (Qdrant's engine in-process). A backend knows
collections by their physical name or alias, stores points with named vectors and payloads,
and answers the few request shapes below. Filters arrive already in Qdrant's terms
(``qdrant_client.models.Filter``, made once by ``queries.qdrant_filter``). Every backend
raises the store's typed errors: ``StoreUnavailableError`` (transient), its subclass
``CollectionMissing`` (deleted underneath: the store looks again next time) and
``CollectionExists`` (lost a creation race).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from qdrant_client import models

from ..domain import Hit
from ..errors import StoreUnavailableError

KEYWORD_FIELDS = ("product_id", "category", "brand", "bucket", "key")
FLOAT_FIELDS = ("price",)


def disk_bytes(folder: Path) -> int:
    """Bytes really allocated under ``folder``: edge preallocates sparse 32 MiB WAL files, whose
    apparent size says nothing."""
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except FileNotFoundError:  # removed while walking (segment merge)
                continue
    return total


class CollectionMissing(StoreUnavailableError):
    """The collection (or alias) is gone: deleted by an operator or a re-index elsewhere."""

    def __init__(self, message: str = "the collection is missing; it will be re-created on the next request"):
        super().__init__(message)


class CollectionExists(Exception):
    """Creating a collection or alias that another process created a moment ago."""


@dataclass(frozen=True)
class VectorSpec:
    """One named vector of a collection."""

    size: int
    distance: str = "cosine"  # cosine | dot | euclid
    on_disk: bool = False
    # Searched through the HNSW graph (and quantised as configured); False for vectors that
    # only re-score candidates (rerank), which need neither.
    indexed: bool = True


@dataclass(frozen=True)
class CollectionInfo:
    metadata: dict[str, Any]
    vectors: dict[str, int]  # name -> dimension
    indexed_fields: frozenset[str] = frozenset()
    points: int = 0
    disk_bytes: int | None = None  # real bytes on disk (embedded), None when unknown


@dataclass
class StoredPoint:
    id: str
    vectors: dict[str, np.ndarray]
    payload: dict[str, Any]


@dataclass
class Record:
    id: str
    payload: dict[str, Any]
    vectors: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def of(cls, point: Any) -> Record:
        """A point as either engine returns it (``id``, ``payload``, ``vector``: the named
        vectors asked for, or none)."""
        vectors = point.vector if isinstance(point.vector, dict) else {}
        return cls(id=str(point.id), payload=point.payload or {}, vectors=vectors)


def hit_of(point: Any) -> Hit:
    """A scored point as either engine returns it -> a ``Hit``."""
    return Hit(id=str(point.id), score=float(point.score), payload=point.payload or {})


@dataclass(frozen=True)
class Nearest:
    """One nearest-neighbour request: ``vector`` compared with the named vector ``using``.

    With ``prefetch``, candidates come from that request first and ``vector`` re-scores them.
    """

    vector: np.ndarray
    using: str
    filter: models.Filter | None = None
    limit: int = 10
    offset: int = 0
    score_threshold: float | None = None
    prefetch: Nearest | None = None
    exact: bool = False


class StoreBackend(Protocol):
    """What ``CatalogStore`` needs of a Qdrant engine (see the module docstring)."""

    is_server: bool
    groups_natively: bool  # has a group-by query (a server); else the store groups in rounds

    def collection_exists(self, name: str) -> bool: ...
    def list_collections(self) -> list[str]: ...
    def aliases(self) -> dict[str, str]: ...
    def set_alias(self, alias: str, target: str, drop: Sequence[str] = ()) -> None: ...
    def delete_alias(self, alias: str) -> None: ...
    def create_collection(
        self, name: str, vectors: Mapping[str, VectorSpec], metadata: Mapping[str, Any]
    ) -> None: ...
    def create_indexes(self, name: str, fields: Sequence[str]) -> None: ...
    def collection_info(self, name: str) -> CollectionInfo: ...
    def update_metadata(self, name: str, metadata: Mapping[str, Any]) -> None: ...
    def delete_collection(self, name: str) -> None: ...
    def upsert(self, name: str, points: Sequence[StoredPoint]) -> None: ...
    def update_vectors(self, name: str, vector: str, vectors: Mapping[str, np.ndarray]) -> None: ...
    def delete_ids(self, name: str, ids: Sequence[str]) -> None: ...
    def delete_where(self, name: str, where: models.Filter) -> None: ...
    def retrieve(self, name: str, ids: Sequence[str], vectors: Sequence[str] = ()) -> list[Record]: ...
    def scroll(
        self,
        name: str,
        where: models.Filter | None,
        limit: int,
        offset: Any,
        payload: Sequence[str] | bool = True,
        vectors: Sequence[str] = (),
    ) -> tuple[list[Record], Any]: ...
    def count(self, name: str, where: models.Filter | None) -> int: ...
    def facet(self, name: str, key: str, limit: int) -> list[tuple[Any, int]]: ...
    def query(self, name: str, request: Nearest) -> list[Hit]: ...
    def query_groups(self, name: str, request: Nearest, group_by: str, groups: int) -> list[Hit]: ...
    def optimize(self, name: str) -> None: ...
    def ping(self) -> bool: ...
    def close(self) -> None: ...
