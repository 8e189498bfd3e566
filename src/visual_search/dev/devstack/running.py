"""A running local stack, as other commands see it.

The stack writes ``<data-dir>/stack.json`` (its URLs and bucket) while it holds the data folder.
A command that finds the embedded Qdrant folder locked by it does what it can through the stack
(``info`` reads ``GET /health``) or says which command works instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MARKER = "stack.json"


def write_marker(data_dir: Path, api_url: str, s3_url: str, bucket: str) -> None:
    path = data_dir / MARKER
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"api": api_url, "s3": s3_url, "bucket": bucket, "pid": os.getpid()}))
    os.replace(temporary, path)


def remove_marker(data_dir: Path) -> None:
    (data_dir / MARKER).unlink(missing_ok=True)


def running_stack(qdrant_path: str | None) -> dict[str, Any] | None:
    """The stack holding the embedded Qdrant folder ``qdrant_path``, if one runs."""
    import fcntl

    if not qdrant_path or qdrant_path == ":memory:":
        return None
    data_dir = Path(qdrant_path).parent
    marker, lock = data_dir / MARKER, data_dir / ".stack.lock"
    if not marker.is_file() or not lock.is_file():
        return None
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return json.loads(marker.read_text())  # held: the stack is up
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def instead(command: str, source: str | None, stack: dict[str, Any]) -> str:
    """What to run instead of ``command`` while ``stack`` holds the catalogue."""
    api, s3, bucket = stack["api"], stack["s3"], stack["bucket"]
    if command == "ingest" and source and not source.startswith("s3://"):
        return (
            f"the local stack ({api}) holds this catalogue. Load the folder through its bucket, "
            f"so the stack indexes it with its products.csv metadata:\n"
            f"  visual-search upload {source} s3://{bucket}/catalog --endpoint-url {s3}"
        )
    if command in ("ingest", "reconcile"):
        return (
            f"the local stack ({api}) holds this catalogue and keeps it in step with s3://{bucket} "
            f"itself: every confirmed change is indexed, and it reconciles the whole bucket at every "
            f"start. Watch the backlog with `curl {api}/health`; to reconcile now, stop it (Ctrl-C) "
            f"and start it again."
        )
    if command == "search":
        return (
            f"the local stack ({api}) holds this catalogue: search through it, "
            f"`curl -X POST '{api}/search' -H 'Content-Type: image/jpeg' --data-binary @photo.jpg`"
        )
    return f"the local stack ({api}) holds this catalogue: stop it first (Ctrl-C), or use its API at {api}"


def info_from(stack: dict[str, Any]) -> dict[str, Any]:
    """``visual-search info`` through the running stack's ``GET /health``."""
    import urllib.request

    with urllib.request.urlopen(stack["api"] + "/health", timeout=10) as response:
        health = json.loads(response.read())
    return {"via": f"{stack['api']}/health (the local stack holds the catalogue)", **health}
