"""``visual-search migrate-store``: move a qdrant-client local-mode folder to the embedded engine.

The folder's collections are read with qdrant-client (local mode, the format that wrote them)
and written, with every vector, payload, alias and the collection metadata, into qdrant-edge
shards under the same folder; nothing is re-embedded. The old files are moved aside to
``local-mode-backup/`` only once everything is written, so an interrupted migration can simply
be run again.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..config import StoreSettings
from .backend import StoredPoint, VectorSpec
from .edge_backend import BACKUP, LOCK, EdgeBackend, is_local_mode_folder

PAGE = 512


def _distance(name: str) -> str:
    return {"cosine": "cosine", "dot": "dot", "euclid": "euclid"}[str(name).lower()]


def migrate_local_mode(root: str | Path, settings: StoreSettings, log: Callable[[str], None] = print) -> dict:
    """Copy every collection and alias of a local-mode folder into edge shards in place."""
    from qdrant_client import QdrantClient

    root = Path(root)
    if not is_local_mode_folder(root):
        raise ValueError(f"{root} holds no qdrant-client local-mode catalogue (no meta.json)")
    staging = root / "edge-migration"
    if staging.exists():  # an earlier, interrupted run
        shutil.rmtree(staging)
    client = QdrantClient(path=str(root))
    copied: dict[str, int] = {}
    try:
        edge = EdgeBackend(staging, settings)
        try:
            for description in client.get_collections().collections:
                copied[description.name] = _copy(client, edge, description.name, log)
            for alias in client.get_aliases().aliases:
                edge.set_alias(alias.alias_name, alias.collection_name)
        finally:
            edge.close()
    finally:
        client.close()
    backup = root / BACKUP
    backup.mkdir(exist_ok=True)
    for name in ("meta.json", "collection", ".lock"):
        if (root / name).exists():
            shutil.move(str(root / name), str(backup / name))
    for item in staging.iterdir():
        if item.name != LOCK:
            shutil.move(str(item), str(root / item.name))
    shutil.rmtree(staging)
    log(f"migrated {sum(copied.values())} points in {len(copied)} collections; old files in {backup}")
    return {"collections": copied, "backup": str(backup)}


def _copy(client, edge: EdgeBackend, name: str, log: Callable[[str], None]) -> int:
    info = client.get_collection(name)
    params = info.config.params.vectors
    vectors = {
        vname: VectorSpec(
            int(v.size), _distance(v.distance.value), on_disk=bool(v.on_disk), indexed=vname != "rerank"
        )
        for vname, v in (params.items() if isinstance(params, dict) else [])
    }
    edge.create_collection(name, vectors, dict(info.config.metadata or {}))
    from .backend import FLOAT_FIELDS, KEYWORD_FIELDS

    edge.create_indexes(name, KEYWORD_FIELDS + FLOAT_FIELDS)
    offset, total = None, 0
    while True:
        records, offset = client.scroll(name, limit=PAGE, offset=offset, with_payload=True, with_vectors=True)
        points = [
            StoredPoint(
                str(r.id),
                {k: np.asarray(v, np.float32) for k, v in (r.vector or {}).items()},
                r.payload or {},
            )
            for r in records
        ]
        if points:
            edge.upsert(name, points)
        total += len(points)
        if offset is None:
            break
    log(f"{name}: {total} points")
    edge.optimize(name)
    return total
