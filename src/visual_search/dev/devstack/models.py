"""The local stack's model changes: what ``visual-search reindex [--model]``, ``model status``,
``model list`` and ``model rollback`` do through a running stack.

The stack holds the embedded store, so these commands cannot open it; they ask the stack over
its gateway (``/_local/...``, local only: the deployed API has no such routes), and the stack
runs the same code as the commands (``ops.sync.reindex``, ``ops.migration``) on its own
catalogue. Its registry is its bucket (``MODELS_BUCKET``): ``visual-search model publish DIR
--endpoint-url <its S3> --bucket <its bucket>`` puts a model there.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from ...errors import VisualSearchError

ROUTES = ("/_local/reindex", "/_local/model/status", "/_local/model/rollback")


class ModelOperations:
    """Runs model changes on the stack's catalogue, one at a time; ``busy`` tells the refit to wait."""

    def __init__(self, catalog: Any, s3: Any, bucket: str, log: Callable[[str], None] = print):
        self.catalog, self.s3, self.bucket, self.log = catalog, s3, bucket, log
        self._lock = threading.Lock()

    def busy(self) -> bool:
        return self._lock.locked()

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) of one ``/_local`` request."""
        if path not in ROUTES:
            return 404, _error("not_found", f"no local route {path}; these are: {', '.join(ROUTES)}")
        expected = "GET" if path.endswith("/status") else "POST"
        if method != expected:
            return 405, _error("method_not_allowed", f"{path} takes {expected}")
        try:
            options = json.loads(body or b"{}")
            if not isinstance(options, dict):
                raise ValueError("the body must be a JSON object")
            if path.endswith("/status"):
                return 200, self.status()
            with self._lock:
                if path.endswith("/rollback"):
                    return 200, self.rollback(options)
                return 200, self.reindex(options)
        except (VisualSearchError, ValueError) as exc:
            return 400, _error(getattr(exc, "code", "bad_request"), str(exc))

    def status(self) -> dict[str, Any]:
        from ...ops.migration import status

        used, serving = usage(self.catalog)
        return {**status(self.catalog), "usage": used, "serving": serving}

    def rollback(self, options: dict[str, Any]) -> dict[str, Any]:
        from ...ops.migration import KEEP_PREVIOUS_H, rollback

        result = rollback(self.catalog, float(options.get("keep_previous_h") or KEEP_PREVIOUS_H))
        self.log(f"rolled back to {result['collection']} ({result['model']})")
        return result

    def reindex(self, options: dict[str, Any]) -> dict[str, Any]:
        from ...ops.migration import KEEP_PREVIOUS_H
        from ...ops.sync import reindex

        model_id = options.get("model")
        model = self.catalog.registry_model(str(model_id)) if model_id else None
        sources = [tuple(s) for s in options.get("sources") or []] or [(self.bucket, "")]
        keep = float(options.get("keep_previous_h") or KEEP_PREVIOUS_H)
        self.log(f"re-indexing s3://{self.bucket} with {model_id or 'the loaded model'} ...")
        return reindex(
            self.catalog,
            self.s3,
            sources,
            keep_old=bool(options.get("keep_old")),
            log=self.log,
            model=model,
            keep_previous_h=keep if model is not None else None,
        )


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def ask(stack: dict[str, Any], method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``/_local`` request to a running stack; its JSON answer (ValueError with its message)."""
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        stack["api"] + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=3600) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        answer = json.loads(err.read() or b"{}")
        raise ValueError(
            answer.get("error", {}).get("message") or f"the local stack answered {err.code}"
        ) from None


def usage(catalog: Any) -> tuple[dict[str, list[str]], str | None]:
    """Which collections each model (by registry id) fills, and the model serving now."""
    used: dict[str, list[str]] = {}
    current = catalog.physical_collection()
    serving = None
    for name in catalog.collections():
        meta = catalog.metadata_of(name)
        model = meta.get("model_card_id") or meta.get("model_id")
        if model:
            used.setdefault(str(model), []).append(name)
            if name == current:
                serving = str(model)
    return used, serving
