"""Everything Qdrant: the catalogue collection, its points, and the queries the service runs.

One class, ``CatalogStore``, over qdrant-client, with the same behaviour in memory (tests),
embedded on disk (a laptop) and against a Qdrant server or Qdrant Cloud (production, where HNSW,
quantisation, payload indexes and sharding live). A point is one image: its id is a uuid5 of
``bucket/key`` so re-indexing an image overwrites it, and its payload carries the product's
metadata. The collection records which model built it and refuses vectors from any other.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from .config import StoreSettings
from .errors import ModelMismatchError, NotFoundError, StoreUnavailableError
from .observability import logger

VECTOR = "image"
RERANK = "rerank"  # optional second named vector, from a more precise model
POINT_NAMESPACE = uuid.UUID("5f0c3a52-3c1e-4a8e-9a43-0e3b7f1d2c61")
KEYWORD_FIELDS = ("product_id", "category", "brand", "bucket", "key")
FLOAT_FIELDS = ("price",)
RANGE_OPS = ("gt", "gte", "lt", "lte")
_DISTANCE = {"cosine": models.Distance.COSINE, "dot": models.Distance.DOT, "euclid": models.Distance.EUCLID}
MAX_GROUP_FETCH = 4096
_MISSING_LOCAL = re.compile(r"Collection .* not found")  # embedded mode's ValueError
KEY_MAX_AGE_S = 300  # how long a key read from SSM / Secrets Manager is used before re-reading


def slug(text: str) -> str:
    """A collection-name-safe form of a model id."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text.lower())[:48]


def point_id(bucket: str, key: str) -> str:
    """Deterministic point id of an image: the same object always maps to the same point."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{bucket}/{key}"))


@dataclass
class ImagePoint:
    bucket: str
    key: str
    vector: np.ndarray
    payload: dict[str, Any]
    rerank_vector: np.ndarray | None = None

    @property
    def id(self) -> str:
        return point_id(self.bucket, self.key)


@dataclass
class Hit:
    id: str
    score: float
    payload: dict[str, Any]
    vector: list[float] | None = None


@dataclass
class Query:
    """A nearest-neighbour request: filters, page, threshold and whether to group by product."""

    top_k: int = 10
    offset: int = 0
    score_threshold: float | None = None
    group_by_product: bool = True
    filters: Mapping[str, Any] = field(default_factory=dict)
    exclude_products: Sequence[str] = ()
    # With a reranking model: the query's second vector; candidates found with the first
    # vector are re-scored with it (Qdrant prefetch + query).
    rerank: np.ndarray | None = None


def build_filter(filters: Mapping[str, Any], exclude_products: Sequence[str] = ()) -> models.Filter | None:
    """Our filter JSON -> a Qdrant filter.

    ``{"category": "shoes"}`` matches exactly, a list matches any of its values, and a dict of
    ``gt/gte/lt/lte`` is a numeric range. Keys other than the top-level payload fields match
    user metadata (``metadata.<key>``).
    """
    must: list[models.Condition] = []
    for name, value in filters.items():
        key = (
            name
            if name in KEYWORD_FIELDS + FLOAT_FIELDS or name.startswith("metadata.")
            else f"metadata.{name}"
        )
        if isinstance(value, Mapping):
            must.append(
                models.FieldCondition(
                    key=key,
                    range=models.Range(
                        **{op: float(value[op]) for op in RANGE_OPS if value.get(op) is not None}
                    ),
                )
            )
        elif isinstance(value, (list, tuple)):
            must.append(models.FieldCondition(key=key, match=models.MatchAny(any=list(value))))
        else:
            must.append(models.FieldCondition(key=key, match=models.MatchValue(value=value)))
    must_not: list[models.Condition] = []
    if exclude_products:
        must_not.append(
            models.FieldCondition(key="product_id", match=models.MatchAny(any=list(exclude_products)))
        )
    if not must and not must_not:
        return None
    return models.Filter(must=must or None, must_not=must_not or None)


def resolve_api_key(settings: StoreSettings, force: bool = False) -> str | None:
    """The Qdrant API key: from SSM Parameter Store or Secrets Manager (cached for
    ``KEY_MAX_AGE_S``; ``force`` reads it again now), else the environment."""
    if settings.api_key_parameter:
        from aws_lambda_powertools.utilities import parameters

        return parameters.get_parameter(
            settings.api_key_parameter, decrypt=True, max_age=KEY_MAX_AGE_S, force_fetch=force
        )
    if settings.api_key_secret:
        from aws_lambda_powertools.utilities import parameters

        return parameters.get_secret(settings.api_key_secret, max_age=KEY_MAX_AGE_S, force_fetch=force)
    return settings.api_key


def key_is_stored(settings: StoreSettings) -> bool:
    """Whether the key lives in SSM or Secrets Manager, where it can be rotated under us."""
    return bool(settings.url and (settings.api_key_parameter or settings.api_key_secret))


def connect(settings: StoreSettings, api_key: str | None = None) -> QdrantClient:
    """A qdrant-client for the configured mode: server URL, embedded folder or memory."""
    if settings.url:
        return QdrantClient(
            url=settings.url,
            api_key=api_key or resolve_api_key(settings),
            timeout=max(1, int(round(settings.timeout_s))),
            prefer_grpc=False,
            # no version round trip in the Lambda init phase; errors surface
            # on first use as StoreUnavailableError instead
            check_compatibility=False,
        )
    if settings.path == ":memory:":
        return QdrantClient(location=":memory:")
    try:
        return QdrantClient(path=settings.path)
    except RuntimeError as exc:
        if "already accessed" not in str(exc):
            raise
        raise StoreUnavailableError(
            f"the embedded Qdrant folder {settings.path} is in use by another process (a running "
            f"`visual-search dev`?): embedded Qdrant allows one; stop it, use another QDRANT_PATH, "
            f"or run a Qdrant server and set QDRANT_URL"
        ) from None


class Connection:
    """The qdrant-client of a store, re-made when the API key it was made with is rotated.

    A key kept in SSM or Secrets Manager is read again every ``KEY_MAX_AGE_S`` of wall-clock
    time, so a warm or SnapStart-restored function picks up a new key without a redeploy (with
    both keys valid for that long, a rotation fails no request); a 401/403 makes it read the key
    at once (``refresh``).
    """

    def __init__(self, client: QdrantClient, settings: StoreSettings):
        self._client = client
        self.settings = settings
        self._rotates = key_is_stored(settings)
        self._key = resolve_api_key(settings) if self._rotates else None
        self._check_at = time.time() + KEY_MAX_AGE_S  # wall clock: right after a SnapStart restore
        self._lock = threading.Lock()

    @property
    def client(self) -> QdrantClient:
        if self._rotates and time.time() >= self._check_at:
            self.refresh()
        return self._client

    def refresh(self) -> bool:
        """Read the key again now; True when it changed (and the client was re-made). If it
        cannot be read, the key in use is kept: it most likely still works."""
        if not self._rotates:
            return False
        self._check_at = time.time() + KEY_MAX_AGE_S
        try:
            return self._use(resolve_api_key(self.settings, force=True))
        except Exception as exc:  # noqa: BLE001 - SSM / Secrets Manager unreachable or refusing
            logger.warning(
                "could not re-read the Qdrant API key; keeping the current one",
                extra={"error": type(exc).__name__},
            )
            return False

    def _use(self, key: str | None) -> bool:
        if key == self._key:
            return False
        with self._lock:
            if key != self._key:
                # The old client is dropped, not closed: another thread may be mid-request on it.
                self._client, self._key = connect(self.settings, key), key
        return True

    def close(self) -> None:
        self._client.close()


class CatalogStore:
    """The product-image collection of one model."""

    def __init__(
        self,
        client: QdrantClient,
        settings: StoreSettings,
        model_id: str,
        dim: int,
        distance: str = "cosine",
        rerank_model_id: str | None = None,
        rerank_dim: int | None = None,
        model_fingerprint: str | None = None,
    ):
        self.model_fingerprint = model_fingerprint  # see Embedder.fingerprint
        self._conn = client if isinstance(client, Connection) else Connection(client, settings)
        self.rerank_model_id = rerank_model_id
        self.rerank_dim = rerank_dim
        self.settings = settings
        self.collection = settings.collection
        self.model_id = model_id
        self.dim = dim
        self.distance = distance
        self.is_server = bool(settings.url)
        # Embedded Qdrant is plain Python state: serialise access from threads.
        self._lock = threading.RLock() if not self.is_server else None
        self._ready = False

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
    ) -> "CatalogStore":
        return cls(
            connect(settings),
            settings,
            model_id,
            dim,
            distance,
            rerank_model_id,
            rerank_dim,
            model_fingerprint,
        )

    @property
    def space(self) -> str:
        """The embedding space(s) this store reads and writes: the model, and the reranker."""
        return self.model_id + (f" (rerank: {self.rerank_model_id})" if self.rerank_model_id else "")

    @property
    def client(self) -> QdrantClient:
        return self._conn.client

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _call(self) -> Iterator[None]:
        """Serialise embedded access and turn connection failures into StoreUnavailableError."""
        lock = self._lock
        if lock:
            lock.acquire()
        try:
            yield
        except ResponseHandlingException as exc:
            raise StoreUnavailableError(f"Qdrant is unreachable: {exc.source}") from None
        except UnexpectedResponse as exc:
            if exc.status_code == 404 and b"ollection" in (exc.content or b""):
                # Deleted under us (by an operator, or a re-index elsewhere): look again next time.
                self._ready = False
                raise StoreUnavailableError(
                    "the collection is missing; it will be re-created on the next request"
                ) from None
            if exc.status_code in (401, 403):
                raise StoreUnavailableError(self._refused()) from None
            if exc.status_code in (429, 502, 503, 504) or exc.status_code >= 500:
                raise StoreUnavailableError(
                    f"Qdrant answered {exc.status_code}: {exc.reason_phrase}"
                ) from None
            raise
        except (ConnectionError, TimeoutError) as exc:
            raise StoreUnavailableError(f"Qdrant is unreachable: {exc}") from None
        except ValueError as exc:
            if self.is_server or not _MISSING_LOCAL.search(str(exc)):
                raise
            self._ready = False  # embedded mode says it so: the same recovery as a server's 404
            raise StoreUnavailableError(
                "the collection is missing; it will be re-created on the next request"
            ) from None
        finally:
            if lock:
                lock.release()

    def _refused(self) -> str:
        where = self.settings.api_key_parameter or self.settings.api_key_secret
        if self._conn.refresh():
            return f"Qdrant refused the API key; a new one was read from {where}: retry"
        source = where or "QDRANT_API_KEY"
        return f"Qdrant refused the API key (from {source}): check that it is valid for this cluster"

    # -- collection -------------------------------------------------------------------------

    def ensure_collection(self) -> None:
        """Create the collection on first use; refuse one built by another model.

        ``COLLECTION`` names an alias over a physical collection (``<name>-<model id>`` at first),
        so ``visual-search reindex`` can build a new one and switch the alias atomically.
        """
        if self._ready:
            return
        for attempt in range(3):
            try:
                with self._call():
                    self._ensure()
                break
            except UnexpectedResponse as exc:
                # Another function instance created it (or the alias) a moment ago: look again.
                if attempt == 2 or b"already exists" not in (exc.content or b""):
                    raise
        self._ready = True

    def _ensure(self) -> None:
        if self._exists(self.collection):
            self._check_existing(self.collection)
            return
        physical = f"{self.collection}-{slug(self.model_id)}"
        if not self.client.collection_exists(physical):
            self.create_physical(physical)
        else:
            self._check_existing(physical)
        self.point_alias(physical)

    def _check_existing(self, name: str) -> None:
        """Refuse another model's collection; add payload indexes a failed creation left out."""
        info = self.client.get_collection(name)
        self._check_model(info)
        if self.is_server:
            have = set(info.payload_schema or {})
            self._create_indexes(name, [f for f in KEYWORD_FIELDS + FLOAT_FIELDS if f not in have])

    def _exists(self, name: str) -> bool:
        return name in self.aliases() or self.client.collection_exists(name)

    def aliases(self) -> dict[str, str]:
        """alias name -> collection name."""
        return {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}

    def physical_collection(self) -> str | None:
        """The collection behind COLLECTION (itself if it is not an alias), or None."""
        with self._call():
            target = self.aliases().get(self.collection)
            if target:
                return target
            return self.collection if self.client.collection_exists(self.collection) else None

    def point_alias(self, target: str) -> None:
        """Make COLLECTION an alias of ``target`` in one atomic step."""
        ops: list = []
        if self.collection in self.aliases():
            ops.append(
                models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=self.collection))
            )
        ops.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=target, alias_name=self.collection)
            )
        )
        self.client.update_collection_aliases(change_aliases_operations=ops)

    def for_collection(self, name: str) -> "CatalogStore":
        """The same store over another (physical) collection, sharing the client."""
        from dataclasses import replace

        other = CatalogStore(
            self._conn,
            replace(self.settings, collection=name),
            self.model_id,
            self.dim,
            self.distance,
            self.rerank_model_id,
            self.rerank_dim,
            self.model_fingerprint,
        )
        other._lock = self._lock
        return other

    def _check_model(self, info: models.CollectionInfo) -> None:
        metadata = info.config.metadata or {}
        built_by = metadata.get("model_id")
        if built_by is None:
            vectors = info.config.params.vectors
            params = vectors.get(VECTOR) if isinstance(vectors, dict) else None
            built_by = f"unknown model ({params.size}-d)" if params else "unknown model"
        reranker = metadata.get("rerank_model_id")
        if built_by != self.model_id or reranker != self.rerank_model_id:
            space = str(built_by) + (f" (rerank: {reranker})" if reranker else "")
            raise ModelMismatchError(self.collection, space, self.space)
        built_with = metadata.get("model_fingerprint")  # absent in collections made before it
        if built_with and self.model_fingerprint and built_with != self.model_fingerprint:
            raise ModelMismatchError(
                self.collection,
                f"{built_by} (fingerprint {built_with})",
                f"{self.space} (fingerprint {self.model_fingerprint})",
            )

    def create_physical(self, name: str) -> None:
        """Create a collection for this model with the configured scale settings."""
        s = self.settings
        quantization = None
        if s.quantization == "int8":
            quantization = models.ScalarQuantization(
                scalar=models.ScalarQuantizationConfig(
                    type=models.ScalarType.INT8, quantile=0.99, always_ram=True
                )
            )
        vectors = {
            VECTOR: models.VectorParams(
                size=self.dim, distance=_DISTANCE[self.distance], on_disk=s.vectors_on_disk
            )
        }
        if self.rerank_dim:
            vectors[RERANK] = models.VectorParams(
                size=self.rerank_dim, distance=models.Distance.COSINE, on_disk=True
            )
        self.client.create_collection(
            name,
            vectors_config=vectors,
            hnsw_config=models.HnswConfigDiff(
                m=s.hnsw_m, ef_construct=s.hnsw_ef_construct, payload_m=s.hnsw_m
            ),
            quantization_config=quantization,
            shard_number=s.shards if self.is_server else None,
            replication_factor=s.replicas if self.is_server else None,
            metadata={
                "model_id": self.model_id,
                "embedding_dim": self.dim,
                "distance": self.distance,
                "rerank_model_id": self.rerank_model_id,
                "model_fingerprint": self.model_fingerprint,
            },
        )
        if self.is_server:  # embedded mode scans everything and ignores payload indexes
            self._create_indexes(name, KEYWORD_FIELDS + FLOAT_FIELDS)

    def _create_indexes(self, name: str, fields: Sequence[str]) -> None:
        for field_name in fields:
            schema = (
                models.PayloadSchemaType.FLOAT
                if field_name in FLOAT_FIELDS
                else models.PayloadSchemaType.KEYWORD
            )
            self.client.create_payload_index(name, field_name, schema)

    def drop_collection(self, name: str) -> None:
        with self._call():
            self.client.delete_collection(name)

    def count(self, filters: Mapping[str, Any] | None = None) -> int:
        self.ensure_collection()
        with self._call():
            return self.client.count(
                self.collection, count_filter=build_filter(filters or {}), exact=True
            ).count

    def facets(self, fields: Sequence[str] = ("category", "brand"), limit: int = 100) -> dict:
        """Distinct values of keyword fields with their image counts (for filter pickers)."""
        self.ensure_collection()
        out = {}
        with self._call():
            for name in fields:
                hits = self.client.facet(self.collection, key=name, limit=limit, exact=True).hits
                out[name] = [{"value": h.value, "count": h.count} for h in hits]
        return out

    def ping(self) -> bool:
        """True when Qdrant answers (health checks)."""
        try:
            with self._call():
                self.client.get_collections()
            return True
        except StoreUnavailableError:
            return False

    # -- writes -----------------------------------------------------------------------------

    def upsert(self, points: Sequence[ImagePoint]) -> None:
        if not points:
            return
        self.ensure_collection()
        for point in points:
            if point.vector.shape != (self.dim,):
                raise ValueError(
                    f"vector of {point.key} has shape {point.vector.shape}, "
                    f"the collection expects ({self.dim},)"
                )
        if self.rerank_dim and any(p.rerank_vector is None for p in points):
            raise ValueError("this collection reranks: every point needs its rerank vector")
        structs = [models.PointStruct(id=p.id, vector=self._vectors(p), payload=p.payload) for p in points]
        with self._call():
            self.client.upsert(self.collection, structs, wait=True)

    def _vectors(self, point: ImagePoint) -> dict[str, list[float]]:
        vectors = {VECTOR: point.vector.tolist()}
        if self.rerank_dim and point.rerank_vector is not None:
            vectors[RERANK] = point.rerank_vector.tolist()
        return vectors

    def delete_images(self, refs: Iterable[tuple[str, str]]) -> None:
        ids = [point_id(bucket, key) for bucket, key in refs]
        if not ids:
            return
        self.ensure_collection()
        with self._call():
            self.client.delete(self.collection, models.PointIdsList(points=ids), wait=True)

    def delete_product(self, product_id: str) -> None:
        self.ensure_collection()
        with self._call():
            self.client.delete(
                self.collection,
                models.FilterSelector(filter=build_filter({"product_id": product_id})),
                wait=True,
            )

    # -- reads ------------------------------------------------------------------------------

    def get_images(self, refs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        """Payloads of stored images, keyed by (bucket, key); absent images are left out."""
        if not refs:
            return {}
        self.ensure_collection()
        by_id = {point_id(b, k): (b, k) for b, k in refs}
        with self._call():
            records = self.client.retrieve(self.collection, list(by_id), with_payload=True)
        return {by_id[str(r.id)]: r.payload or {} for r in records}

    def scroll(
        self, filters: Mapping[str, Any] | None = None, with_vectors: bool = False, page: int = 256
    ) -> Iterator[Hit]:
        """Every point matching the filters, page by page."""
        self.ensure_collection()
        offset = None
        while True:
            with self._call():
                records, offset = self.client.scroll(
                    self.collection,
                    scroll_filter=build_filter(filters or {}),
                    limit=page,
                    offset=offset,
                    with_payload=True,
                    with_vectors=[VECTOR] if with_vectors else False,
                )
            for r in records:
                vector = r.vector.get(VECTOR) if with_vectors and isinstance(r.vector, dict) else None
                yield Hit(id=str(r.id), score=1.0, payload=r.payload or {}, vector=vector)
            if offset is None:
                return

    def product_vectors(self, product_id: str) -> np.ndarray:
        vectors = [h.vector for h in self.scroll({"product_id": product_id}, with_vectors=True)]
        if not vectors:
            raise NotFoundError(f"product {product_id[:80]!r} is not in the catalogue")
        return np.asarray(vectors, dtype=np.float32)

    def _search_params(self) -> models.SearchParams:
        quantization = None
        if self.settings.quantization == "int8":
            quantization = models.QuantizationSearchParams(
                rescore=self.settings.quantization_rescore,
                oversampling=self.settings.quantization_oversampling,
            )
        return models.SearchParams(hnsw_ef=self.settings.search_hnsw_ef, quantization=quantization)

    def _stage(self, vector: np.ndarray, query: Query) -> dict[str, Any]:
        """The query arguments shared by plain and grouped searches (filter, vectors, params)."""
        query_filter = build_filter(query.filters, query.exclude_products)
        params = self._search_params() if self.is_server else None
        first = np.asarray(vector, np.float32).tolist()
        if query.rerank is not None and self.rerank_dim:
            # Candidates by the fast vector, then ordered by the precise one. The pool is the
            # same for every page (not grown with the offset), so pages of one query neither
            # repeat nor skip a result; pagination ends at RERANK_CANDIDATES images.
            return dict(
                prefetch=models.Prefetch(
                    query=first,
                    using=VECTOR,
                    filter=query_filter,
                    params=params,
                    limit=self.settings.rerank_candidates,
                ),
                query=np.asarray(query.rerank, np.float32).tolist(),
                using=RERANK,
                query_filter=query_filter,
            )
        return dict(query=first, using=VECTOR, search_params=params, query_filter=query_filter)

    def _nearest(self, vector: np.ndarray, query: Query, limit: int, offset: int) -> list[Hit]:
        stage = self._stage(vector, query)
        with self._call():
            response = self.client.query_points(
                self.collection,
                limit=limit,
                offset=offset or None,
                score_threshold=query.score_threshold,
                with_payload=True,
                **stage,
            )
        return [Hit(id=str(p.id), score=float(p.score), payload=p.payload or {}) for p in response.points]

    def _best_of_groups(self, vector: np.ndarray, query: Query, groups: int) -> list[Hit]:
        """Qdrant's own grouping: the best image of each of the nearest ``groups`` products."""
        stage = self._stage(vector, query)
        with self._call():
            response = self.client.query_points_groups(
                self.collection,
                group_by="product_id",
                limit=groups,
                group_size=1,
                score_threshold=query.score_threshold,
                with_payload=True,
                **stage,
            )
        return [
            Hit(id=str(g.hits[0].id), score=float(g.hits[0].score), payload=g.hits[0].payload or {})
            for g in response.groups
            if g.hits
        ]

    def search(self, vector: np.ndarray, query: Query) -> list[Hit]:
        """Nearest images, or with grouping the best image of each of the nearest products."""
        self.ensure_collection()
        if not query.group_by_product:
            return self._nearest(vector, query, query.top_k, query.offset)
        return self._grouped(vector, query)

    def _grouped(self, vector: np.ndarray, query: Query) -> list[Hit]:
        """One hit per product, by over-fetching images and keeping each product's best.

        Results come sorted by score, so the first image seen of a product is its best and the
        order of first sightings is the order of products. If a page of images holds too few
        products, fetch a bigger one; stop when Qdrant has no more images to give. Past
        ``MAX_GROUP_FETCH`` images (deep pages of products with many images), Qdrant groups.
        """
        wanted = query.offset + query.top_k
        limit = max(32, wanted * 4)
        while True:
            hits = self._nearest(vector, query, limit, 0)
            best: dict[str, Hit] = {}
            for hit in hits:
                best.setdefault(str(hit.payload.get("product_id")), hit)
            if len(best) >= wanted or len(hits) < limit:
                return list(best.values())[query.offset : wanted]
            if limit >= MAX_GROUP_FETCH:
                return self._best_of_groups(vector, query, wanted)[query.offset : wanted]
            limit = min(MAX_GROUP_FETCH, limit * 4)

    def similar(self, product_id: str, query: Query) -> list[Hit]:
        """Nearest other products to a stored product, from its stored vectors (no inference)."""
        vectors = self.product_vectors(product_id)
        centroid = vectors.mean(axis=0)
        centroid /= max(float(np.linalg.norm(centroid)), 1e-12)
        excluded = Query(**{**query.__dict__, "exclude_products": [*query.exclude_products, product_id]})
        return self.search(centroid, excluded)
