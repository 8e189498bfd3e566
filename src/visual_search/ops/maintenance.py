"""Store maintenance commands: ``visual-search optimize`` and ``visual-search migrate-store``.

``optimize`` builds the embedded engine's HNSW graphs and merges its segments. It blocks (and
holds the GIL) for its whole run, so it is never called from a serving process: bulk commands
(``ingest``, ``reindex``) call it when they finish, and this command runs it on demand. On a
Qdrant server it does nothing: the server optimises in the background.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def optimize(catalog, log: Callable[[str], None] = print) -> dict:
    """Optimise the catalogue's collection now; its size before and after."""
    before = catalog.store_info()
    log(f"optimizing {before['physical']} ({before['points']} points) ...")
    started = time.perf_counter()
    catalog.optimize()
    after = catalog.store_info()
    return {
        "collection": after["physical"],
        "points": after["points"],
        "seconds": round(time.perf_counter() - started, 1),
        "disk_bytes_before": before["disk_bytes"],
        "disk_bytes": after["disk_bytes"],
    }


def migrate_store(path: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Move a qdrant-client local-mode folder (``QDRANT_PATH`` by default) to the embedded engine."""
    from dataclasses import replace

    from ..config import get_settings
    from ..store.migrate import migrate_local_mode

    settings = get_settings().store
    if settings.url:
        raise ValueError("QDRANT_URL is set: migrate-store converts an embedded folder (QDRANT_PATH)")
    folder = Path(path or settings.path)
    return migrate_local_mode(folder, replace(settings, path=str(folder)), log=log)
