"""Everything Qdrant: the catalogue collection, its points, and the queries the service runs.

One contract, ``CatalogStore``, over one backend (``backend.py`` is the seam): qdrant-client for
a Qdrant server or Qdrant Cloud (``QDRANT_URL``: production, where sharding and replication
live; ``client_backend.py``) and qdrant-edge, Qdrant's engine in-process, for the embedded
folder (``QDRANT_PATH``; ``edge_backend.py``). A point is one image: its id is a uuid5 of
``bucket/key`` so re-indexing an image overwrites it, and its payload carries the product's
metadata. The collection records which model built it and refuses vectors from any other.

- ``connection``: the API key (SSM / Secrets Manager, rotation) and the client;
- ``collections``: aliases, physical collections, model / fingerprint metadata, payload indexes;
- ``queries``: ``Filter`` -> Qdrant filter, grouping by product, rerank prefetch, pages;
- ``catalog_store``: ``CatalogStore`` (named vectors from a dict: see its docstring), which
  takes only a backend; ``open_store(settings, ...)`` resolves the engine from the settings;
- ``admin``: ``StoreAdmin`` (``CatalogStore.admin()``), the collection-level operations on
  physical collections by name that adaptation, projections and spaces need;
- ``migrate``: converting a qdrant-client local-mode folder to qdrant-edge.

Outside this package, code imports ``visual_search.store`` only (``migrate`` for the one
command that converts a folder) and never touches a backend or a raw client
(``tests/unit/test_layering.py``).

The domain types (``Query``, ``Hit``, ``ImagePoint``, ``Filter``) live in ``visual_search.domain``
and are re-exported here for existing callers.
"""

from ..domain import Filter, Hit, ImagePoint, Query, Range, point_id
from .admin import StoreAdmin
from .backend import (
    FLOAT_FIELDS,
    KEYWORD_FIELDS,
    CollectionExists,
    CollectionInfo,
    CollectionMissing,
    Nearest,
    Record,
    StoreBackend,
    StoredPoint,
    VectorSpec,
    disk_bytes,
)
from .catalog_store import (
    RERANK,
    VECTOR,
    CatalogStore,
    ModelFields,
    open_backend,
    open_client_backend,
    open_store,
)
from .collections import slug
from .connection import KEY_MAX_AGE_S, Connection, connect, key_is_stored, resolve_api_key
from .queries import MAX_GROUP_FETCH, qdrant_filter

__all__ = [
    "FLOAT_FIELDS",
    "KEYWORD_FIELDS",
    "KEY_MAX_AGE_S",
    "MAX_GROUP_FETCH",
    "RERANK",
    "VECTOR",
    "CatalogStore",
    "CollectionExists",
    "CollectionInfo",
    "CollectionMissing",
    "Connection",
    "Filter",
    "Hit",
    "ImagePoint",
    "ModelFields",
    "Nearest",
    "Query",
    "Range",
    "Record",
    "StoreAdmin",
    "StoreBackend",
    "StoredPoint",
    "VectorSpec",
    "connect",
    "disk_bytes",
    "key_is_stored",
    "open_backend",
    "open_client_backend",
    "open_store",
    "point_id",
    "qdrant_filter",
    "resolve_api_key",
    "slug",
]
