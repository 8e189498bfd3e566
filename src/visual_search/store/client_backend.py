"""The qdrant-client backend: a Qdrant server or Qdrant Cloud by URL (where HNSW, quantisation,
payload indexes, sharding and replication live), or qdrant-client's local mode."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from ..config import StoreSettings
from ..domain import Hit
from ..errors import StoreUnavailableError
from .backend import (
    FLOAT_FIELDS,
    CollectionExists,
    CollectionInfo,
    CollectionMissing,
    Nearest,
    Record,
    StoredPoint,
    VectorSpec,
    hit_of,
)
from .connection import Connection

DISTANCE = {"cosine": models.Distance.COSINE, "dot": models.Distance.DOT, "euclid": models.Distance.EUCLID}
_MISSING_LOCAL = re.compile(r"Collection .* not found")  # local mode's ValueError


def _list(vector: np.ndarray | list[float]) -> list[float]:
    return np.asarray(vector, np.float32).tolist()


class ClientBackend:
    """``StoreBackend`` over qdrant-client (see ``backend.py``)."""

    groups_natively = True

    def __init__(self, conn: Connection, settings: StoreSettings, lock: threading.RLock | None = None):
        self.conn = conn
        self.settings = settings
        self.is_server = bool(settings.url)
        # Local mode is plain Python state: serialise access from threads.
        self.lock = lock if lock is not None else (None if self.is_server else threading.RLock())

    @property
    def client(self) -> QdrantClient:
        return self.conn.client

    @contextmanager
    def call(self) -> Iterator[None]:
        """Serialise local-mode access; turn qdrant-client's failures into the store's errors."""
        lock = self.lock
        if lock:
            lock.acquire()
        try:
            yield
        except ResponseHandlingException as exc:
            raise StoreUnavailableError(f"Qdrant is unreachable: {exc.source}") from None
        except UnexpectedResponse as exc:
            content = exc.content or b""
            if b"already exists" in content:
                raise CollectionExists(content.decode(errors="replace")[:200]) from None
            if exc.status_code == 404 and b"ollection" in content:
                raise CollectionMissing() from None
            if exc.status_code in (401, 403):
                raise StoreUnavailableError(self._refused()) from None
            if exc.status_code in (429, 502, 503, 504) or (exc.status_code or 0) >= 500:
                raise StoreUnavailableError(
                    f"Qdrant answered {exc.status_code}: {exc.reason_phrase}"
                ) from None
            raise
        except (ConnectionError, TimeoutError) as exc:
            raise StoreUnavailableError(f"Qdrant is unreachable: {exc}") from None
        except ValueError as exc:
            if self.is_server or not _MISSING_LOCAL.search(str(exc)):
                raise
            raise CollectionMissing() from None  # local mode says it so: a server's 404
        finally:
            if lock:
                lock.release()

    def _refused(self) -> str:
        where = self.settings.api_key_parameter or self.settings.api_key_secret
        if self.conn.refresh():
            return f"Qdrant refused the API key; a new one was read from {where}: retry"
        source = where or "QDRANT_API_KEY"
        return f"Qdrant refused the API key (from {source}): check that it is valid for this cluster"

    # -- collections ------------------------------------------------------------------------

    def collection_exists(self, name: str) -> bool:
        with self.call():
            return self.client.collection_exists(name)

    def list_collections(self) -> list[str]:
        with self.call():
            return sorted(c.name for c in self.client.get_collections().collections)

    def aliases(self) -> dict[str, str]:
        with self.call():
            return {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}

    def set_alias(self, alias: str, target: str, drop: Sequence[str] = ()) -> None:
        """``alias`` -> ``target`` (replacing it), and the aliases ``drop`` deleted, atomically."""
        have = self.aliases()
        ops: list = [
            models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=name))
            for name in [alias, *drop]
            if name in have
        ]
        ops.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=target, alias_name=alias)
            )
        )
        with self.call():
            self.client.update_collection_aliases(change_aliases_operations=ops)

    def delete_alias(self, alias: str) -> None:
        if alias not in self.aliases():
            return
        with self.call():
            self.client.update_collection_aliases(
                change_aliases_operations=[
                    models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
                ]
            )

    def reconnect(self) -> None:
        self.conn.reconnect()

    def create_collection(
        self, name: str, vectors: Mapping[str, VectorSpec], metadata: Mapping[str, Any]
    ) -> None:
        s = self.settings
        quantization = None
        if s.quantization == "int8":
            quantization = models.ScalarQuantization(
                scalar=models.ScalarQuantizationConfig(
                    type=models.ScalarType.INT8, quantile=0.99, always_ram=True
                )
            )
        with self.call():
            self.client.create_collection(
                name,
                vectors_config={
                    vname: models.VectorParams(size=v.size, distance=DISTANCE[v.distance], on_disk=v.on_disk)
                    for vname, v in vectors.items()
                },
                hnsw_config=models.HnswConfigDiff(
                    m=s.hnsw_m, ef_construct=s.hnsw_ef_construct, payload_m=s.hnsw_m
                ),
                quantization_config=quantization,
                shard_number=s.shards if self.is_server else None,
                replication_factor=s.replicas if self.is_server else None,
                metadata=dict(metadata),
            )

    def create_indexes(self, name: str, fields: Sequence[str]) -> None:
        if not self.is_server:  # local mode scans everything and ignores payload indexes
            return
        with self.call():
            for field_name in fields:
                schema = (
                    models.PayloadSchemaType.FLOAT
                    if field_name in FLOAT_FIELDS
                    else models.PayloadSchemaType.KEYWORD
                )
                self.client.create_payload_index(name, field_name, schema)

    def collection_info(self, name: str) -> CollectionInfo:
        with self.call():
            info = self.client.get_collection(name)
        vectors = info.config.params.vectors
        sizes = {k: v.size for k, v in vectors.items()} if isinstance(vectors, dict) else {}
        return CollectionInfo(
            metadata=dict(info.config.metadata or {}),
            vectors=sizes,
            indexed_fields=frozenset(info.payload_schema or {}),
            points=int(info.points_count or 0),
        )

    def update_metadata(self, name: str, metadata: Mapping[str, Any]) -> None:
        with self.call():
            self.client.update_collection(name, metadata=dict(metadata))

    def delete_collection(self, name: str) -> None:
        with self.call():
            self.client.delete_collection(name)

    # -- points -----------------------------------------------------------------------------

    def upsert(self, name: str, points: Sequence[StoredPoint]) -> None:
        structs = [
            models.PointStruct(id=p.id, vector={k: _list(v) for k, v in p.vectors.items()}, payload=p.payload)
            for p in points
        ]
        with self.call():
            self.client.upsert(name, structs, wait=True)

    def update_vectors(self, name: str, vector: str, vectors: Mapping[str, np.ndarray]) -> None:
        points = [models.PointVectors(id=pid, vector={vector: _list(v)}) for pid, v in vectors.items()]
        with self.call():
            self.client.update_vectors(name, points=points, wait=True)

    def delete_ids(self, name: str, ids: Sequence[str]) -> None:
        with self.call():
            self.client.delete(name, models.PointIdsList(points=list(ids)), wait=True)

    def delete_where(self, name: str, where: models.Filter) -> None:
        with self.call():
            self.client.delete(name, models.FilterSelector(filter=where), wait=True)

    def retrieve(self, name: str, ids: Sequence[str], vectors: Sequence[str] = ()) -> list[Record]:
        with self.call():
            records = self.client.retrieve(
                name, list(ids), with_payload=True, with_vectors=list(vectors) if vectors else False
            )
        return [Record.of(r) for r in records]

    def scroll(
        self,
        name: str,
        where: models.Filter | None,
        limit: int,
        offset: Any,
        payload: Sequence[str] | bool = True,
        vectors: Sequence[str] = (),
    ) -> tuple[list[Record], Any]:
        with self.call():
            records, after = self.client.scroll(
                name,
                scroll_filter=where,
                limit=limit,
                offset=offset,
                with_payload=list(payload) if not isinstance(payload, bool) else payload,
                with_vectors=list(vectors) if vectors else False,
            )
        return [Record.of(r) for r in records], after

    def count(self, name: str, where: models.Filter | None) -> int:
        with self.call():
            return self.client.count(name, count_filter=where, exact=True).count

    def facet(self, name: str, key: str, limit: int) -> list[tuple[Any, int]]:
        with self.call():
            hits = self.client.facet(name, key=key, limit=limit, exact=True).hits
        return [(h.value, h.count) for h in hits]

    # -- queries ----------------------------------------------------------------------------

    def _params(self, exact: bool, filtered: bool) -> models.SearchParams | None:
        if not self.is_server:
            return None
        s = self.settings
        quantization = None
        if s.quantization == "int8":
            quantization = models.QuantizationSearchParams(
                rescore=s.quantization_rescore, oversampling=s.quantization_oversampling
            )
        ef = s.filtered_hnsw_ef if filtered else s.search_hnsw_ef
        acorn = (
            models.AcornSearchParams(enable=True, max_selectivity=s.acorn_max_selectivity)
            if filtered and s.filtered_acorn
            else None
        )
        return models.SearchParams(hnsw_ef=ef, quantization=quantization, exact=exact, acorn=acorn)

    def _stage(self, r: Nearest) -> dict[str, Any]:
        if r.prefetch is None:
            return {
                "query": _list(r.vector),
                "using": r.using,
                "search_params": self._params(r.exact, r.filter is not None),
                "query_filter": r.filter,
            }
        p = r.prefetch
        prefetch = models.Prefetch(
            query=_list(p.vector),
            using=p.using,
            filter=p.filter,
            params=self._params(p.exact, p.filter is not None),
            limit=p.limit,
        )
        return {"prefetch": prefetch, "query": _list(r.vector), "using": r.using, "query_filter": r.filter}

    def query(self, name: str, request: Nearest) -> list[Hit]:
        with self.call():
            response = self.client.query_points(
                name,
                limit=request.limit,
                offset=request.offset or None,
                score_threshold=request.score_threshold,
                with_payload=True,
                **self._stage(request),
            )
        return [hit_of(p) for p in response.points]

    def query_groups(self, name: str, request: Nearest, group_by: str, groups: int) -> list[Hit]:
        with self.call():
            response = self.client.query_points_groups(
                name,
                group_by=group_by,
                limit=groups,
                group_size=1,
                score_threshold=request.score_threshold,
                with_payload=True,
                **self._stage(request),
            )
        return [hit_of(g.hits[0]) for g in response.groups if g.hits]

    def optimize(self, name: str) -> None:
        """Nothing to do: a server builds its indexes in the background."""

    def ping(self) -> bool:
        try:
            with self.call():
                self.client.get_collections()
            return True
        except StoreUnavailableError:
            return False

    def close(self) -> None:
        self.conn.close()
