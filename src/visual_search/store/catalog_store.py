"""``CatalogStore``: the product-image collection of one model, over one backend.

Named vectors come from a dict (``vectors``): ``image`` (the model's embedding), ``rerank``
when a reranking model is configured, and any others given by name. To add a named vector
(say ``adapted``, 256-d): pass ``vectors={"adapted": VectorSpec(256)}`` when opening the store;
a new collection is created with it, an existing one without it is refused (re-index); give
each point its value in ``ImagePoint.vectors["adapted"]`` on upsert, or set it later for
stored points with ``update_vectors("adapted", {point_id: vector})``; search it with
``Query(using="adapted")``. Extra collection metadata (e.g. ``projection_id``) goes in
``metadata`` at creation and through ``update_metadata`` later.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from qdrant_client import QdrantClient

from ..config import StoreSettings
from ..domain import Filter, Hit, ImagePoint, Query, point_id
from ..errors import NotFoundError
from .admin import StoreAdmin
from .backend import CollectionMissing, StoreBackend, StoredPoint, VectorSpec
from .client_backend import ClientBackend
from .collections import Lifecycle
from .connection import Connection, connect
from .queries import Searcher, qdrant_filter

VECTOR = "image"
RERANK = "rerank"  # optional second named vector, from a more precise model
UPDATE_BATCH = 256  # points per update_vectors call


@dataclass(frozen=True)
class ModelFields:
    """What a collection records of the model that fills it (``Embedder.fields``)."""

    model_id: str
    dim: int
    distance: str
    fingerprint: str | None
    metadata: Mapping[str, Any]  # more of it: the registry id and the weights' sha256


def open_backend(settings: StoreSettings) -> StoreBackend:
    """The backend for the configured mode: qdrant-client for a server (``QDRANT_URL``),
    qdrant-edge for the embedded folder (``QDRANT_PATH``), or qdrant-edge in a temporary folder
    (in shared memory where there is one) removed on close for ``QDRANT_PATH=:memory:`` --
    or qdrant-client's local mode in memory where qdrant-edge is not installed."""
    if settings.url:
        return ClientBackend(Connection(connect(settings), settings), settings)
    from .edge_backend import EdgeBackend, edge_installed

    if settings.path == ":memory:":
        if not edge_installed():  # e.g. inside a Lambda package, which ships no qdrant-edge
            return ClientBackend(Connection(connect(settings), settings), settings)
        return EdgeBackend.temporary_folder(settings)
    return EdgeBackend(settings.path, settings)


def open_store(
    settings: StoreSettings,
    model_id: str,
    dim: int,
    distance: str = "cosine",
    rerank_model_id: str | None = None,
    rerank_dim: int | None = None,
    model_fingerprint: str | None = None,
    **extra: Any,
) -> CatalogStore:
    """The store of one model over the configured engine: the backend (connection, API key,
    folder) resolved from ``settings`` here, so ``CatalogStore`` itself takes only a backend."""
    return CatalogStore(
        open_backend(settings),
        settings,
        model_id,
        dim,
        distance,
        rerank_model_id,
        rerank_dim,
        model_fingerprint,
        **extra,
    )


def open_client_backend(settings: StoreSettings) -> StoreBackend:
    """A qdrant-client backend whatever the mode: a server (``QDRANT_URL``), or qdrant-client's
    local mode for ``QDRANT_PATH`` (a folder, or ``:memory:``: benchmarks, tests)."""
    return ClientBackend(Connection(connect(settings), settings), settings)


class CatalogStore:
    """The product-image collection of one model."""

    def __init__(
        self,
        backend: StoreBackend,
        settings: StoreSettings,
        model_id: str,
        dim: int,
        distance: str = "cosine",
        rerank_model_id: str | None = None,
        rerank_dim: int | None = None,
        model_fingerprint: str | None = None,
        *,
        vectors: Mapping[str, VectorSpec] | None = None,
        metadata: Mapping[str, Any] | None = None,
        follow: bool = False,
    ):
        if isinstance(backend, (QdrantClient, Connection)):  # a raw client: the store takes a backend
            raise TypeError(
                "CatalogStore takes a backend: open_backend(settings), or open_store(settings, ...)"
            )
        self._backend = backend
        self.settings = settings
        self.collection = settings.collection
        self.model_id = model_id
        self.dim = dim
        self.distance = distance
        self.rerank_model_id = rerank_model_id
        self.rerank_dim = rerank_dim
        self.model_fingerprint = model_fingerprint  # see Embedder.fingerprint
        self.is_server = bool(settings.url)
        self.vectors: dict[str, VectorSpec] = {
            VECTOR: VectorSpec(dim, distance, on_disk=settings.vectors_on_disk)
        }
        if rerank_dim:
            self.vectors[RERANK] = VectorSpec(rerank_dim, "cosine", on_disk=True, indexed=False)
        self.vectors.update(vectors or {})
        self.metadata: dict[str, Any] = {
            "model_id": model_id,
            "embedding_dim": dim,
            "distance": distance,
            "rerank_model_id": rerank_model_id,
            "model_fingerprint": model_fingerprint,
            **(metadata or {}),
        }
        self._extra = (dict(vectors or {}), dict(metadata or {}))
        # Following: the collection's own model serves it (visual_search.registry), so opening
        # a collection another model built is not refused here; the space that reads or
        # writes it loads that model (adaptation.spaces).
        self.follow = follow
        self.lifecycle = Lifecycle(
            self._backend, self.collection, self.vectors, self.metadata, self.space, check_models=not follow
        )
        self.searcher = Searcher(
            self._backend, self.collection, settings, VECTOR, RERANK if rerank_dim else None
        )
        self._ready = False
        self._pinned = False  # see pinned(): never looks for nor creates its collection

    @classmethod
    def open(
        cls,
        settings: StoreSettings,
        model_id: str,
        dim: int,
        distance: str = "cosine",
        rerank_model_id: str | None = None,
        rerank_dim: int | None = None,
        model_fingerprint: str | None = None,
        **extra: Any,
    ) -> CatalogStore:
        """The store over the configured engine (``open_store``)."""
        return open_store(
            settings, model_id, dim, distance, rerank_model_id, rerank_dim, model_fingerprint, **extra
        )

    def for_model(self, model: ModelFields) -> CatalogStore:
        """The same store (collection, backend, further vectors) for another model's vectors."""
        extra_vectors, extra_metadata = self._extra
        if (model.model_id, model.fingerprint) == (self.model_id, self.model_fingerprint):
            return self
        return CatalogStore(
            self._backend,
            self.settings,
            model.model_id,
            model.dim,
            model.distance,
            self.rerank_model_id,
            self.rerank_dim,
            model.fingerprint,
            vectors=extra_vectors,
            metadata={**extra_metadata, **model.metadata},
            follow=self.follow,
        )

    @property
    def space(self) -> str:
        """The embedding space(s) this store reads and writes: the model, and the reranker."""
        return self.model_id + (f" (rerank: {self.rerank_model_id})" if self.rerank_model_id else "")

    def admin(self) -> StoreAdmin:
        """Collection-level operations on physical collections by name (adaptation's copies,
        the projections' side collection), over this store's backend."""
        return StoreAdmin(self._backend)

    @property
    def client(self) -> QdrantClient:
        """The qdrant-client underneath (qdrant-client backends only; tests and tools)."""
        return self._backend.client  # type: ignore[attr-defined]

    def close(self) -> None:
        self._backend.close()

    def reconnect(self) -> None:
        """New connections (after a SnapStart restore), for backends that have any."""
        reconnect = getattr(self._backend, "reconnect", None)
        if reconnect:
            reconnect()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """A collection deleted underneath: look for it (and re-create it) next time."""
        try:
            yield
        except CollectionMissing:
            self._ready = False
            raise

    # -- collection -------------------------------------------------------------------------

    def ensure_collection(self) -> None:
        """Create the collection on first use; refuse one built by another model.

        ``COLLECTION`` names an alias over a physical collection (``<name>-<model id>`` at first),
        so ``visual-search reindex`` can build a new one and switch the alias atomically.
        """
        if self._ready or self._pinned:
            return
        with self._guard():
            self.lifecycle.ensure(self.model_id)
        self._ready = True

    def aliases(self) -> dict[str, str]:
        """alias name -> collection name."""
        return self._backend.aliases()

    def physical_collection(self) -> str | None:
        """The collection behind COLLECTION (itself if it is not an alias), or None."""
        return self.lifecycle.physical()

    def point_alias(self, target: str) -> None:
        """Make COLLECTION an alias of ``target`` in one atomic step."""
        self._backend.set_alias(self.collection, target)
        self._ready = False  # checked again (model, indexes) on next use

    def exists(self) -> bool:
        """Whether COLLECTION exists (as an alias or a collection); never creates it. A store
        over an existing collection is then used as it is (see ingest.router.Router)."""
        with self._guard():
            found = self.lifecycle.exists(self.collection)
        self._ready = found
        return found

    def create(self) -> None:
        """Create COLLECTION as a new physical collection, ready for writes."""
        self.create_physical(self.collection)
        self._ready = True

    def alias_target(self, alias: str) -> str | None:
        return self._backend.aliases().get(alias)

    def set_alias(self, alias: str, target: str | None) -> None:
        """Point ``alias`` at ``target`` (replacing it), or delete it (None)."""
        if target:
            self._backend.set_alias(alias, target)
        else:
            self._backend.delete_alias(alias)

    def switch_alias(self, target: str, drop: Sequence[str] = ()) -> None:
        """COLLECTION -> ``target`` and the aliases ``drop`` deleted, in one atomic step."""
        self._backend.set_alias(self.collection, target, drop)
        self._ready = False

    def for_collection(
        self,
        name: str,
        vectors: Mapping[str, VectorSpec] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> CatalogStore:
        """The same store over another (physical) collection, sharing the backend; ``vectors``
        and ``metadata`` add named vectors and collection metadata to this store's."""
        extra_vectors, extra_metadata = self._extra
        return CatalogStore(
            self._backend,
            replace(self.settings, collection=name),
            self.model_id,
            self.dim,
            self.distance,
            self.rerank_model_id,
            self.rerank_dim,
            self.model_fingerprint,
            vectors={**extra_vectors, **(vectors or {})},
            metadata={**extra_metadata, **(metadata or {})},
            follow=self.follow,
        )

    def pinned(
        self,
        name: str,
        vectors: Mapping[str, VectorSpec] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> CatalogStore:
        """The same store over physical collection ``name`` with these further named vectors
        and metadata (a collection of the catalogue's projection: ``spaces.py``). It reads and
        writes ``name`` only, and never looks for nor creates it or the alias: once ``name`` is
        dropped (a switch moved on) every call raises ``CollectionMissing`` and the caller
        resolves the alias again."""
        other = self.for_collection(name, vectors, metadata)
        other._pinned = True
        return other

    def create_physical(self, name: str) -> None:
        """Create a collection for this model with the configured scale settings."""
        self.lifecycle.create(name)

    def new_collection(self, name: str) -> CatalogStore:
        """Create physical collection ``name`` for this model; the store over it, ready."""
        self.create_physical(name)
        other = self.for_collection(name)
        other._ready = True
        return other

    def drop_collection(self, name: str) -> None:
        self._backend.delete_collection(name)

    def collections(self) -> list[str]:
        """Every physical collection of the store's engine."""
        return self._backend.list_collections()

    def metadata_of(self, name: str) -> dict[str, Any]:
        """The metadata of any collection by name (no model check)."""
        return dict(self._backend.collection_info(name).metadata)

    def update_metadata_of(self, name: str, changes: Mapping[str, Any]) -> None:
        self._backend.update_metadata(name, {**self.metadata_of(name), **changes})

    def count_in(self, name: str) -> int:
        """The points of any collection by name."""
        return self._backend.count(name, None)

    def collection_metadata(self) -> dict[str, Any]:
        """The metadata recorded with the collection (model id, fingerprint, ...)."""
        self.ensure_collection()
        with self._guard():
            return self._backend.collection_info(self.collection).metadata

    def update_metadata(self, changes: Mapping[str, Any]) -> None:
        """Merge ``changes`` into the collection's metadata."""
        self.ensure_collection()
        with self._guard():
            physical = self.physical_collection() or self.collection
            merged = {**self._backend.collection_info(physical).metadata, **changes}
            self._backend.update_metadata(physical, merged)

    def info(self) -> dict[str, Any]:
        """Points, named vectors and (embedded) real bytes on disk of the collection."""
        self.ensure_collection()
        with self._guard():
            info = self._backend.collection_info(self.collection)
        return {
            "collection": self.collection,
            "physical": self.physical_collection(),
            "points": info.points,
            "vectors": info.vectors,
            "disk_bytes": info.disk_bytes,
        }

    def optimize(self) -> None:
        """Build the search indexes now (embedded: HNSW; blocks). Never from a serving process:
        bulk commands and ``visual-search optimize`` call it."""
        self.ensure_collection()
        with self._guard():
            self._backend.optimize(self.physical_collection() or self.collection)

    def count(self, filters: Filter | Mapping[str, Any] | None = None) -> int:
        self.ensure_collection()
        with self._guard():
            return self._backend.count(self.collection, qdrant_filter(Filter.of(filters)))

    def facets(self, fields: Sequence[str] = ("category", "brand"), limit: int = 100) -> dict:
        """Distinct values of keyword fields with their image counts (for filter pickers)."""
        self.ensure_collection()
        with self._guard():
            return {
                name: [{"value": v, "count": c} for v, c in self._backend.facet(self.collection, name, limit)]
                for name in fields
            }

    def ping(self) -> bool:
        """True when Qdrant answers (health checks)."""
        return self._backend.ping()

    # -- writes -----------------------------------------------------------------------------

    def _stored(self, point: ImagePoint) -> StoredPoint:
        vectors = {VECTOR: point.vector}
        if self.rerank_dim and point.rerank_vector is not None:
            vectors[RERANK] = point.rerank_vector
        vectors.update(point.vectors)
        for name, vector in vectors.items():
            self._check_vector(name, vector, point.key)
        return StoredPoint(point.id, vectors, point.payload)

    def _check_vector(self, name: str, vector: np.ndarray, what: str) -> None:
        spec = self.vectors.get(name)
        if spec is None:
            raise ValueError(f"{what}: the collection has no vector named {name!r}")
        shape = np.shape(vector)
        if shape != (spec.size,):
            label = "vector" if name == VECTOR else f"{name} vector"
            raise ValueError(f"{label} of {what} has shape {shape}, the collection expects ({spec.size},)")
        if not np.all(np.isfinite(vector)):
            # An engine stores NaN silently and never finds the point again: refuse it here.
            raise ValueError(f"{name} vector of {what} is not finite (NaN or infinity)")

    def upsert(self, points: Sequence[ImagePoint]) -> None:
        if not points:
            return
        self.ensure_collection()
        if self.rerank_dim and any(p.rerank_vector is None for p in points):
            raise ValueError("this collection reranks: every point needs its rerank vector")
        stored = [self._stored(p) for p in points]  # every vector checked before any write
        with self._guard():
            self._backend.upsert(self.collection, stored)

    def update_payload(self, changes: Mapping[str, Mapping[str, Any]]) -> None:
        """Set (value) or clear (None) payload fields of stored points: point id -> fields.
        Rewrites each point with its vectors (no engine here has a partial payload write)."""
        if not changes:
            return
        self.ensure_collection()
        ids = list(changes)
        with self._guard():
            for start in range(0, len(ids), UPDATE_BATCH):
                part = ids[start : start + UPDATE_BATCH]
                records = self._backend.retrieve(self.collection, part, list(self.vectors))
                points = []
                for r in records:
                    payload = {**r.payload, **changes[r.id]}
                    payload = {k: v for k, v in payload.items() if v is not None}
                    vectors = {k: np.asarray(v, np.float32) for k, v in r.vectors.items() if v is not None}
                    points.append(StoredPoint(r.id, vectors, payload))
                self._backend.upsert(self.collection, points)

    def update_vectors(self, name: str, vectors: Mapping[str, np.ndarray]) -> None:
        """Set named vector ``name`` of stored points (point id -> vector), in batches."""
        if not vectors:
            return
        self.ensure_collection()
        for pid, vector in vectors.items():
            self._check_vector(name, vector, f"point {pid}")
        items = list(vectors.items())
        with self._guard():
            for start in range(0, len(items), UPDATE_BATCH):
                self._backend.update_vectors(self.collection, name, dict(items[start : start + UPDATE_BATCH]))

    def delete_images(self, refs: Iterable[tuple[str, str]]) -> None:
        ids = [point_id(bucket, key) for bucket, key in refs]
        if not ids:
            return
        self.ensure_collection()
        with self._guard():
            self._backend.delete_ids(self.collection, ids)

    def delete_product(self, product_id: str) -> None:
        self.ensure_collection()
        where = qdrant_filter(Filter(product_id=(product_id,)))
        if where is None:  # never: an empty filter here would delete every point
            raise ValueError("no filter for a product delete")
        with self._guard():
            self._backend.delete_where(self.collection, where)

    # -- reads ------------------------------------------------------------------------------

    def get_images(self, refs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        """Payloads of stored images, keyed by (bucket, key); absent images are left out."""
        if not refs:
            return {}
        self.ensure_collection()
        by_id = {point_id(b, k): (b, k) for b, k in refs}
        with self._guard():
            records = self._backend.retrieve(self.collection, list(by_id))
        return {by_id[r.id]: r.payload for r in records}

    def vectors_of(
        self, refs: Sequence[tuple[str, str]], name: str = VECTOR
    ) -> dict[tuple[str, str], list | None]:
        """Stored named vectors of images, keyed by (bucket, key); absent images are left out."""
        if not refs:
            return {}
        self.ensure_collection()
        by_id = {point_id(b, k): (b, k) for b, k in refs}
        with self._guard():
            records = self._backend.retrieve(self.collection, list(by_id), [name])
        return {by_id[r.id]: r.vectors.get(name) for r in records}

    def scroll(
        self,
        filters: Filter | Mapping[str, Any] | None = None,
        with_vectors: bool | Sequence[str] = False,
        page: int = 256,
    ) -> Iterator[Hit]:
        """Every point matching the filters, page by page (``with_vectors``: True for the
        image vector, or the names of the vectors to read, the first one in ``Hit.vector``)."""
        self.ensure_collection()
        names = [VECTOR] if with_vectors is True else list(with_vectors or [])
        where = qdrant_filter(Filter.of(filters))
        offset = None
        while True:
            with self._guard():
                records, offset = self._backend.scroll(self.collection, where, page, offset, True, names)
            for r in records:
                vector = r.vectors.get(names[0]) if names else None
                yield Hit(id=r.id, score=1.0, payload=r.payload, vector=vector)
            if offset is None:
                return

    def payloads_in(self, collection: str, fields: Sequence[str], page: int = 512) -> Iterator[dict]:
        """Chosen payload fields of every point of any collection (no model check, no vectors):
        what a re-index reads of the collection it replaces."""
        offset = None
        while True:
            records, offset = self._backend.scroll(collection, None, page, offset, list(fields))
            for record in records:
                yield record.payload
            if offset is None:
                return

    def point_vectors(self, ids: Sequence[str], name: str = VECTOR) -> dict[str, tuple[np.ndarray, dict]]:
        """Stored named vectors and payloads of points, by point id; absent ones are left out."""
        if not ids:
            return {}
        self.ensure_collection()
        with self._guard():
            records = self._backend.retrieve(self.collection, list(ids), [name])
        return {
            r.id: (np.asarray(r.vectors[name], np.float32), r.payload)
            for r in records
            if r.vectors.get(name) is not None
        }

    def product_vectors(self, product_id: str, name: str = VECTOR) -> np.ndarray:
        vectors = [h.vector for h in self.scroll({"product_id": product_id}, with_vectors=[name])]
        if not vectors:
            raise NotFoundError(f"product {product_id[:80]!r} is not in the catalogue")
        return np.asarray(vectors, dtype=np.float32)

    def search(self, vector: np.ndarray, query: Query) -> list[Hit]:
        """Nearest images, or with grouping the best image of each of the nearest products."""
        self.ensure_collection()
        with self._guard():
            return self.searcher.search(vector, query)

    def similar(self, product_id: str, query: Query) -> list[Hit]:
        """Nearest other products to a stored product, from its stored vectors (no inference)."""
        vectors = self.product_vectors(product_id, query.using or VECTOR)
        centroid = vectors.mean(axis=0)
        centroid /= max(float(np.linalg.norm(centroid)), 1e-12)
        return self.search(centroid, replace(query, exclude_products=[*query.exclude_products, product_id]))
