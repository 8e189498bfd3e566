"""Where projections live: in the store, beside the collections they adapt.

A projection (``whitening.Projection``: mean, matrix, shrinkage, fit statistics; its id the
sha256 of what decides the space) is saved in a side collection of the same Qdrant,
``<COLLECTION>-projections``, as a few points whose payloads hold the ``.npz`` bytes in base64
parts. Why the store and not the bucket: the store is the one thing every function, the CLI and
the local stack already reach, with the same credentials, in every mode (server, embedded,
in memory); a bucket is not there for a folder catalogue or a test, and would need its own IAM
grants, a reserved key outside the notification prefix and a second source of truth. The
collection records the id of its projection (metadata ``projection_id``), and projections are
immutable (content-addressed), so an instance caches them by id forever.
"""

from __future__ import annotations

import base64
import threading
import uuid
from typing import TYPE_CHECKING

import numpy as np

from ..errors import NotFoundError
from ..store import CollectionExists, StoredPoint, VectorSpec
from .whitening import Projection

if TYPE_CHECKING:  # pragma: no cover
    from ..store import CatalogStore

PLACEHOLDER = "part"  # the side collection's only vector (unused)
PART_CHARS = 1 << 20  # base64 characters per point (a 1280x1280 projection is ~9 parts)
_NAMESPACE = uuid.UUID("0b8f2f7e-6f0e-4f5c-9d83-6c0a3f2b9e14")


def side_collection(alias: str) -> str:
    return f"{alias}-projections"


class ProjectionRepository:
    """Save and load projections by id, in the store's side collection."""

    def __init__(self, store: CatalogStore):
        self.store = store
        self.collection = side_collection(store.collection)
        self._cache: dict[str, Projection] = {}
        self._lock = threading.Lock()

    def save(self, projection: Projection) -> str:
        text = base64.b64encode(projection.to_bytes()).decode("ascii")
        parts = [text[i : i + PART_CHARS] for i in range(0, len(text), PART_CHARS)] or [""]
        pid = projection.id
        admin = self.store.admin()
        if not admin.collection_exists(self.collection):
            try:  # the parts are payloads; a 1-d placeholder vector, as every engine wants one
                admin.create_collection(
                    self.collection, {PLACEHOLDER: VectorSpec(1, "dot")}, {"holds": "projections"}
                )
            except CollectionExists:
                pass  # another process made it a moment ago
        points = [
            StoredPoint(
                str(uuid.uuid5(_NAMESPACE, f"{pid}/{i}")),
                {PLACEHOLDER: np.ones(1, np.float32)},
                {"projection_id": pid, "part": i, "parts": len(parts), "data": part},
            )
            for i, part in enumerate(parts)
        ]
        admin.upsert(self.collection, points)
        with self._lock:
            self._cache[pid] = projection
        return pid

    def load(self, projection_id: str) -> Projection:
        with self._lock:
            cached = self._cache.get(projection_id)
        if cached is not None:
            return cached
        records = self._payloads(_match(projection_id))
        parts = sorted(records, key=lambda p: int(p.get("part", 0)))
        if not parts or len(parts) != int(parts[0].get("parts", -1)):
            raise NotFoundError(
                f"projection {projection_id[:12]} is not in {self.collection!r} "
                f"({len(parts)} parts found): run `visual-search adapt` again"
            )
        projection = Projection.from_bytes(base64.b64decode("".join(str(p["data"]) for p in parts)))
        if projection.id != projection_id:
            raise ValueError(f"projection {projection_id[:12]} is corrupt (its content hashes otherwise)")
        with self._lock:
            self._cache[projection_id] = projection
        return projection

    def delete_except(self, keep: set[str]) -> int:
        """Remove the projections no collection uses any more; returns how many went."""
        ids = {str(p.get("projection_id")) for p in self._payloads(None, ["projection_id"])}
        gone = sorted(ids - keep)
        for pid in gone:
            self.store.admin().delete_where(self.collection, *_match(pid))
        return len(gone)

    def _payloads(self, where: tuple[str, str] | None, fields: list[str] | bool = True) -> list[dict]:
        admin = self.store.admin()
        if not admin.collection_exists(self.collection):
            return []
        out: list[dict] = []
        offset = None
        while True:
            records, offset = admin.scroll(self.collection, 16, offset, fields, where=where)
            out += [r.payload for r in records]
            if offset is None:
                return out


def _match(projection_id: str) -> tuple[str, str]:
    """The points of one projection: payload field and value (``StoreAdmin``'s ``where``)."""
    return ("projection_id", projection_id)
