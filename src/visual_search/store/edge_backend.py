"""The qdrant-edge backend: Qdrant's own engine (HNSW, payload indexes, quantisation, WAL)
in-process, for the embedded mode (``QDRANT_PATH``).

qdrant-edge has one shard per folder and no collections, aliases, collection metadata or
grouping, so this adapter keeps, under ``QDRANT_PATH``:

- ``collections/<name>/``: one edge shard per physical collection;
- ``catalogue.json``: the collections (their named vectors and metadata) and the aliases,
  replaced atomically (written beside it, fsynced, renamed);
- ``.lock``: held while a process has the folder open (one process per folder, as edge's own
  WAL lock enforces per shard).

Grouping by product is done by the store in rounds (``groups_natively`` is False). ``optimize``
(the HNSW build) blocks and holds the GIL for its whole run: only bulk commands call it, never
a serving process; unindexed segments are still searched exactly, in Rust. Errors of the
bindings (a bare ``Exception`` with text) become the store's typed errors. A folder written by
qdrant-client's local mode is refused with the command that migrates it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import threading
import uuid
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import models

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
    disk_bytes,
    hit_of,
)

CATALOGUE = "catalogue.json"
SHARDS = "collections"
FORMAT = 1
MIGRATE_COMMAND = "visual-search migrate-store"
BACKUP = "local-mode-backup"  # where a migration leaves the local-mode files
LOCK = ".lock"  # the name qdrant-client used: the local stack probes it before loading the model


class LegacyFolderError(StoreUnavailableError):
    """The folder holds qdrant-client local-mode data, which qdrant-edge cannot read."""

    status = 500
    code = "store_needs_migration"


def _edge():
    try:
        import qdrant_edge
    except ImportError:  # pragma: no cover - the embedded extra not installed
        raise ImportError(
            "the embedded store needs qdrant-edge-py: pip install 'visual-search[embedded]' "
            "(or set QDRANT_URL to use a Qdrant server)"
        ) from None
    return qdrant_edge


def edge_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("qdrant_edge") is not None


def is_local_mode_folder(root: Path) -> bool:
    """Whether ``root`` holds qdrant-client's local-mode layout (``meta.json`` + ``collection/``)."""
    return (root / "meta.json").is_file() and not (root / CATALOGUE).exists()


def _write_atomically(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=1, sort_keys=True)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _list(vector: Any) -> list[float]:
    return np.asarray(vector, np.float32).tolist()


class EdgeBackend:
    """``StoreBackend`` over qdrant-edge shards in one folder (see the module docstring)."""

    is_server = False
    groups_natively = False

    def __init__(self, root: str | Path, settings: StoreSettings, temporary: bool = False):
        self.E = _edge()
        self.root = Path(root)
        self.settings = settings
        self.temporary = temporary  # QDRANT_PATH=:memory: -- a folder removed on close
        self.lock = threading.RLock()  # the bindings are called from one thread at a time
        self._shards: dict[str, Any] = {}
        self._closed = False
        if is_local_mode_folder(self.root):
            raise LegacyFolderError(
                f"{self.root} holds a catalogue written by qdrant-client's local mode, which the "
                f"embedded engine (qdrant-edge) does not read. Migrate it once with "
                f"`{MIGRATE_COMMAND} {self.root}` (keeps every point and vector; the old files are "
                f"kept under {self.root / BACKUP}), or delete the folder to start empty"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_file = self._take_folder_lock()
        self.catalogue = self._read_catalogue()
        if temporary:  # also when the store is never closed
            weakref.finalize(self, shutil.rmtree, str(self.root), True)

    @classmethod
    def temporary_folder(cls, settings: StoreSettings) -> EdgeBackend:
        shm = Path("/dev/shm")
        where = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
        return cls(tempfile.mkdtemp(prefix="visual-search-qdrant-", dir=where), settings, temporary=True)

    def _take_folder_lock(self):
        handle = open(self.root / LOCK, "a+")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise StoreUnavailableError(self.in_use_message()) from None
        return handle

    def in_use_message(self) -> str:
        return (
            f"the embedded Qdrant folder {self.root} is in use by another process (a running "
            f"`visual-search dev`?): embedded Qdrant allows one; stop it, use another QDRANT_PATH, "
            f"or run a Qdrant server and set QDRANT_URL"
        )

    # -- the catalogue file -----------------------------------------------------------------

    def _read_catalogue(self) -> dict:
        path = self.root / CATALOGUE
        if not path.exists():
            return {"format": FORMAT, "collections": {}, "aliases": {}}
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise StoreUnavailableError(f"{path}: unknown catalogue format {data.get('format')!r}")
        return data

    def _save(self) -> None:
        _write_atomically(self.root / CATALOGUE, self.catalogue)

    def _folder(self, name: str) -> Path:
        return self.root / SHARDS / name

    def _resolve(self, name: str) -> str:
        physical = self.catalogue["aliases"].get(name, name)
        if physical not in self.catalogue["collections"]:
            raise CollectionMissing()
        return physical

    def _shard(self, name: str):
        physical = self._resolve(name)
        shard = self._shards.get(physical)
        if shard is None:
            folder = self._folder(physical)
            if not folder.is_dir():
                raise CollectionMissing()
            shard = self._shards[physical] = self.E.EdgeShard.load(str(folder))
        return shard

    @contextmanager
    def call(self) -> Iterator[None]:
        """One thread at a time in the bindings; their bare ``Exception`` -> typed errors."""
        with self.lock:
            if self._closed:
                raise StoreUnavailableError("the embedded Qdrant store is closed")
            try:
                yield
            except (StoreUnavailableError, CollectionExists, ValueError, TypeError, KeyError):
                raise
            except OSError as exc:
                raise StoreUnavailableError(f"embedded Qdrant cannot use its folder: {exc}") from None
            except Exception as exc:
                raise self._typed(exc) from None

    def _typed(self, exc: Exception) -> Exception:
        text = str(exc)
        if "WouldBlock" in text or "Resource temporarily unavailable" in text:
            return StoreUnavailableError(self.in_use_message())
        if "does not exist" in text:
            return CollectionMissing()
        if any(
            word in text
            for word in ("dimension error", "Not existing vector", "Wrong input", "Bad input", "Format error")
        ):
            return ValueError(f"embedded Qdrant refused the request: {text}")
        return StoreUnavailableError(f"embedded Qdrant failed: {text[:300]}")

    # -- collections ------------------------------------------------------------------------

    def collection_exists(self, name: str) -> bool:
        with self.lock:
            return name in self.catalogue["collections"]

    def list_collections(self) -> list[str]:
        with self.lock:
            return sorted(self.catalogue["collections"])

    def aliases(self) -> dict[str, str]:
        with self.lock:
            return dict(self.catalogue["aliases"])

    def set_alias(self, alias: str, target: str, drop: Sequence[str] = ()) -> None:
        """``alias`` -> ``target``, and the aliases ``drop`` deleted, in one save."""
        with self.call():
            if target not in self.catalogue["collections"]:
                raise CollectionMissing(f"cannot point alias {alias!r} at missing collection {target!r}")
            if alias in self.catalogue["collections"]:
                raise CollectionExists(f"a collection named {alias!r} already exists")
            for name in drop:
                self.catalogue["aliases"].pop(name, None)
            self.catalogue["aliases"][alias] = target
            self._save()

    def delete_alias(self, alias: str) -> None:
        with self.call():
            if self.catalogue["aliases"].pop(alias, None) is not None:
                self._save()

    def _config(self, vectors: Mapping[str, VectorSpec]):
        E, s = self.E, self.settings
        distance = {"cosine": E.Distance.Cosine, "dot": E.Distance.Dot, "euclid": E.Distance.Euclid}
        quantization = (
            E.ScalarQuantizationConfig(type=E.ScalarType.Int8, quantile=0.99, always_ram=True)
            if s.quantization == "int8"
            else None
        )

        def params(spec: VectorSpec):
            if spec.indexed:
                return E.EdgeVectorParams(
                    size=spec.size, distance=distance[spec.distance], on_disk=spec.on_disk
                )
            # only re-scores candidates: no graph, no quantised copy
            return E.EdgeVectorParams(
                size=spec.size,
                distance=distance[spec.distance],
                on_disk=spec.on_disk,
                hnsw_config=E.HnswIndexConfig(
                    m=0, ef_construct=s.hnsw_ef_construct, full_scan_threshold=10000
                ),
            )

        return E.EdgeConfig(
            vectors={name: params(spec) for name, spec in vectors.items()},
            hnsw_config=E.HnswIndexConfig(
                m=s.hnsw_m, ef_construct=s.hnsw_ef_construct, full_scan_threshold=10000, payload_m=s.hnsw_m
            ),
            quantization_config=quantization,
        )

    def create_collection(
        self, name: str, vectors: Mapping[str, VectorSpec], metadata: Mapping[str, Any]
    ) -> None:
        with self.call():
            if name in self.catalogue["collections"] or name in self.catalogue["aliases"]:
                raise CollectionExists(f"collection {name!r} already exists")
            folder = self._folder(name)
            if folder.exists():  # debris of a creation that crashed before the catalogue was written
                shutil.rmtree(folder)
            folder.parent.mkdir(parents=True, exist_ok=True)
            self._shards[name] = self.E.EdgeShard.create(str(folder), self._config(vectors))
            self.catalogue["collections"][name] = {
                "metadata": dict(metadata),
                "vectors": {
                    vname: {
                        "size": v.size,
                        "distance": v.distance,
                        "on_disk": v.on_disk,
                        "indexed": v.indexed,
                    }
                    for vname, v in vectors.items()
                },
            }
            self._save()

    def create_indexes(self, name: str, fields: Sequence[str]) -> None:
        E = self.E
        with self.call():
            shard = self._shard(name)
            for field_name in fields:
                kind = (
                    E.PayloadSchemaType.Float if field_name in FLOAT_FIELDS else E.PayloadSchemaType.Keyword
                )
                shard.update(E.UpdateOperation.create_field_index(field_name, kind))

    def collection_info(self, name: str) -> CollectionInfo:
        with self.call():
            physical = self._resolve(name)
            entry = self.catalogue["collections"][physical]
            info = self._shard(physical).info()
            return CollectionInfo(
                metadata=dict(entry["metadata"]),
                vectors={k: int(v["size"]) for k, v in entry["vectors"].items()},
                indexed_fields=frozenset(info.payload_schema),
                points=int(info.points_count),
                disk_bytes=disk_bytes(self._folder(physical)),
            )

    def update_metadata(self, name: str, metadata: Mapping[str, Any]) -> None:
        with self.call():
            self.catalogue["collections"][self._resolve(name)]["metadata"] = dict(metadata)
            self._save()

    def delete_collection(self, name: str) -> None:
        with self.call():
            if name not in self.catalogue["collections"]:
                return
            shard = self._shards.pop(name, None)
            if shard is not None:
                shard.close()
            del self.catalogue["collections"][name]
            # as a server does: the aliases of a deleted collection go with it
            self.catalogue["aliases"] = {a: t for a, t in self.catalogue["aliases"].items() if t != name}
            self._save()
            shutil.rmtree(self._folder(name), ignore_errors=True)

    # -- points -----------------------------------------------------------------------------

    def upsert(self, name: str, points: Sequence[StoredPoint]) -> None:
        E = self.E
        structs = [E.Point(p.id, {k: _list(v) for k, v in p.vectors.items()}, p.payload) for p in points]
        with self.call():
            self._shard(name).update(E.UpdateOperation.upsert_points(structs))

    def update_vectors(self, name: str, vector: str, vectors: Mapping[str, np.ndarray]) -> None:
        E = self.E
        items = [E.PointVectors(pid, {vector: _list(v)}) for pid, v in vectors.items()]
        with self.call():
            self._shard(name).update(E.UpdateOperation.update_vectors(items))

    def delete_ids(self, name: str, ids: Sequence[str]) -> None:
        with self.call():
            self._shard(name).update(self.E.UpdateOperation.delete_points(list(ids)))

    def delete_where(self, name: str, where: models.Filter) -> None:
        with self.call():
            self._shard(name).update(self.E.UpdateOperation.delete_points_by_filter(self._filter(where)))

    def retrieve(self, name: str, ids: Sequence[str], vectors: Sequence[str] = ()) -> list[Record]:
        with self.call():
            records = self._shard(name).retrieve(list(ids), True, list(vectors) if vectors else False)
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
        request = self.E.ScrollRequest(
            offset=offset,
            limit=limit,
            filter=self._filter(where),
            with_payload=payload if isinstance(payload, bool) else list(payload),
            with_vector=list(vectors) if vectors else False,
        )
        with self.call():
            records, after = self._shard(name).scroll(request)
        return [Record.of(r) for r in records], after

    def count(self, name: str, where: models.Filter | None) -> int:
        with self.call():
            return int(self._shard(name).count(self.E.CountRequest(exact=True, filter=self._filter(where))))

    def facet(self, name: str, key: str, limit: int) -> list[tuple[Any, int]]:
        with self.call():
            response = self._shard(name).facet(self.E.FacetRequest(key=key, limit=limit, exact=True))
        return [(h.value, int(h.count)) for h in response.hits]

    # -- queries ----------------------------------------------------------------------------

    def _filter(self, where: models.Filter | None):
        """A qdrant-client filter (the store's one translation) as qdrant-edge's classes."""
        if where is None:
            return None
        E = self.E

        def condition(c: Any):
            if isinstance(c, models.Filter):
                return self._filter(c)
            if not isinstance(c, models.FieldCondition):
                raise TypeError(f"unsupported filter condition for the embedded store: {type(c).__name__}")
            if c.range is not None:
                r = c.range
                return E.FieldCondition(key=c.key, range=E.RangeFloat(gte=r.gte, gt=r.gt, lte=r.lte, lt=r.lt))
            match = c.match
            if isinstance(match, models.MatchValue):
                if isinstance(match.value, bool):
                    # qdrant-edge 0.9 reads True as the integer 1 and matches nothing
                    raise TypeError(f"filter on {c.key!r}: boolean values are not supported")
                return E.FieldCondition(key=c.key, match=E.MatchValue(match.value))
            if isinstance(match, models.MatchAny):
                return E.FieldCondition(key=c.key, match=E.MatchAny(list(match.any)))
            raise TypeError(f"unsupported match for the embedded store: {type(match).__name__}")

        def conditions(items: Any):
            return [condition(c) for c in items] if items else None

        return E.Filter(
            must=conditions(where.must), must_not=conditions(where.must_not), should=conditions(where.should)
        )

    def _params(self, exact: bool, filtered: bool):
        E, s = self.E, self.settings
        quantization = (
            E.QuantizationSearchParams(
                rescore=s.quantization_rescore, oversampling=s.quantization_oversampling
            )
            if s.quantization == "int8"
            else None
        )
        ef = s.filtered_hnsw_ef if filtered else s.search_hnsw_ef
        acorn = (
            E.AcornSearchParams(enable=True, max_selectivity=s.acorn_max_selectivity)
            if filtered and s.filtered_acorn
            else None
        )
        return E.SearchParams(hnsw_ef=ef, exact=exact, quantization=quantization, acorn=acorn)

    def query(self, name: str, request: Nearest) -> list[Hit]:
        E = self.E
        prefetches = None
        if request.prefetch is not None:
            p = request.prefetch
            prefetches = [
                E.Prefetch(
                    limit=p.limit,
                    query=E.Query.Nearest(_list(p.vector), using=p.using),
                    filter=self._filter(p.filter),
                    params=self._params(p.exact, p.filter is not None),
                )
            ]
        query = E.QueryRequest(
            limit=request.limit,
            offset=request.offset or None,
            query=E.Query.Nearest(_list(request.vector), using=request.using),
            prefetches=prefetches,
            filter=self._filter(request.filter),
            score_threshold=request.score_threshold,
            params=self._params(request.exact, request.filter is not None) if prefetches is None else None,
            with_payload=True,
            with_vector=False,
        )
        with self.call():
            points = self._shard(name).query(query)
        return [hit_of(p) for p in points]

    def query_groups(self, name: str, request: Nearest, group_by: str, groups: int) -> list[Hit]:
        raise NotImplementedError("qdrant-edge has no group query: the store groups in rounds")

    def optimize(self, name: str) -> None:
        """Build HNSW graphs and merge segments now. Blocks, and holds the GIL while it runs."""
        with self.call():
            shard = self._shard(name)
            shard.optimize()
            shard.flush()

    def ping(self) -> bool:
        return not self._closed

    def close(self) -> None:
        with self.lock:
            if self._closed:
                return
            self._closed = True
            for shard in self._shards.values():
                try:
                    shard.flush()
                finally:
                    shard.close()
            self._shards.clear()
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            if self.temporary:
                shutil.rmtree(self.root, ignore_errors=True)
