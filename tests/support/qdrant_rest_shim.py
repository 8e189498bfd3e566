"""Test-only Qdrant REST shim.

A small ``ThreadingHTTPServer`` on 127.0.0.1 that speaks enough of Qdrant's REST API for
``QdrantClient(url=shim.url)`` to work without a Qdrant server binary. Every request body is
parsed into the pydantic models of ``qdrant_client.http.models`` and forwarded to an embedded
local-mode client (``QdrantClient(":memory:")`` by default); results are sent back in Qdrant's
envelope ``{"result": ..., "status": "ok", "time": 0.0}`` and errors as
``{"status": {"error": ...}}`` (404 for a missing collection or point, 400 for bad input).

Fault injection for reliability tests: ``delay_seconds`` sleeps before every answer and
``fail_with`` answers every request with that HTTP status. ``accepted_keys`` makes it check the
``api-key`` header as a secured Qdrant does (401 without one, 403 for another); ``keys_seen``
and ``connections`` record what clients sent and how many TCP connections they opened.

    with QdrantRestShim() as shim:
        client = QdrantClient(url=shim.url)
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import threading
import time
import warnings
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, TypeAdapter, ValidationError
from qdrant_client import QdrantClient
from qdrant_client.http import models

_HEALTH = {
    "/healthz": "healthz check passed",
    "/livez": "healthz check passed",
    "/readyz": "all shards are ready",
}


class NotFound(Exception):
    """Raised by handlers for a missing resource, answered with HTTP 404."""


def _kwargs(body: BaseModel, renames: dict[str, str], **defaults: Any) -> dict[str, Any]:
    """Non-None fields of a request model as client keyword arguments (REST defaults filled)."""
    renames = {"shard_key": "shard_key_selector", **renames}
    kwargs = {renames.get(k, k): v for k, v in body if v is not None}
    return {**defaults, **kwargs}


def _selector(body: models.SetPayload | models.DeletePayload) -> models.PointsSelector:
    if body.points is not None:
        return models.PointIdsList(points=body.points)
    if body.filter is not None:
        return models.FilterSelector(filter=body.filter)
    raise ValueError("Either `points` or `filter` is required")


def _point_id(raw: str) -> models.ExtendedPointId:
    return int(raw) if raw.isdigit() else raw


class QdrantRestShim:
    def __init__(self, backend: QdrantClient | None = None) -> None:
        self.backend = backend if backend is not None else QdrantClient(":memory:")
        self.delay_seconds: float = 0.0
        self.fail_with: int | None = None
        self.accepted_keys: set[str] | None = None
        self.keys_seen: list[str | None] = []
        self.connections = 0
        self.url: str = ""
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # local mode is not thread-safe
        b = self.backend
        # (method, path pattern, body model or None, handler(name-or-match-groups..., body))
        self._routes: list[tuple[str, re.Pattern[str], Any, Callable[..., Any]]] = [
            (m, re.compile(p + r"/?"), model, fn)
            for m, p, model, fn in [
                ("GET", r"/collections", None, lambda: b.get_collections()),
                ("GET", r"/aliases", None, lambda: b.get_aliases()),
                (
                    "POST",
                    r"/collections/aliases",
                    models.ChangeAliasesOperation,
                    lambda o: b.update_collection_aliases(change_aliases_operations=o.actions),
                ),
                ("GET", r"/collections/([^/]+)", None, b.get_collection),
                (
                    "GET",
                    r"/collections/([^/]+)/exists",
                    None,
                    lambda n: models.CollectionExistence(exists=b.collection_exists(n)),
                ),
                ("GET", r"/collections/([^/]+)/aliases", None, b.get_collection_aliases),
                (
                    "PUT",
                    r"/collections/([^/]+)",
                    models.CreateCollection,
                    lambda n, o: b.create_collection(
                        n,
                        **_kwargs(
                            o, {"vectors": "vectors_config", "sparse_vectors": "sparse_vectors_config"}
                        ),
                    ),
                ),
                (
                    "PATCH",
                    r"/collections/([^/]+)",
                    models.UpdateCollection,
                    lambda n, o: b.update_collection(
                        n,
                        **_kwargs(
                            o,
                            {
                                "vectors": "vectors_config",
                                "sparse_vectors": "sparse_vectors_config",
                                "params": "collection_params",
                            },
                        ),
                    ),
                ),
                ("DELETE", r"/collections/([^/]+)", None, b.delete_collection),
                (
                    "PUT",
                    r"/collections/([^/]+)/index",
                    models.CreateFieldIndex,
                    lambda n, o: b.create_payload_index(n, o.field_name, o.field_schema),
                ),
                ("DELETE", r"/collections/([^/]+)/index/([^/]+)", None, b.delete_payload_index),
                (
                    "PUT",
                    r"/collections/([^/]+)/points",
                    models.PointInsertOperations,
                    lambda n, o: b.upsert(
                        n,
                        o.batch if isinstance(o, models.PointsBatch) else o.points,
                        update_filter=o.update_filter,
                        update_mode=o.update_mode,
                    ),
                ),
                (
                    "POST",
                    r"/collections/([^/]+)/points",
                    models.PointRequest,
                    lambda n, o: b.retrieve(n, **_kwargs(o, {"with_vector": "with_vectors"})),
                ),
                ("GET", r"/collections/([^/]+)/points/([^/]+)", None, self._get_point),
                (
                    "POST",
                    r"/collections/([^/]+)/points/delete",
                    models.PointsSelector,
                    lambda n, o: b.delete(n, o),
                ),
                ("POST", r"/collections/([^/]+)/points/scroll", models.ScrollRequest, self._scroll),
                (
                    "POST",
                    r"/collections/([^/]+)/facet",
                    models.FacetRequest,
                    lambda n, o: b.facet(n, **_kwargs(o, {"filter": "facet_filter"})),
                ),
                (
                    "POST",
                    r"/collections/([^/]+)/points/count",
                    models.CountRequest,
                    lambda n, o: b.count(n, count_filter=o.filter, exact=o.exact),
                ),
                ("POST", r"/collections/([^/]+)/points/query", models.QueryRequest, self._query),
                (
                    "POST",
                    r"/collections/([^/]+)/points/query/batch",
                    models.QueryRequestBatch,
                    lambda n, o: [self._query(n, r) for r in o.searches],
                ),
                (
                    "POST",
                    r"/collections/([^/]+)/points/query/groups",
                    models.QueryGroupsRequest,
                    lambda n, o: b.query_points_groups(
                        n,
                        **_kwargs(
                            o,
                            {
                                "filter": "query_filter",
                                "params": "search_params",
                                "with_vector": "with_vectors",
                            },
                            with_payload=False,
                        ),
                    ),
                ),
                (
                    "POST",
                    r"/collections/([^/]+)/points/payload",
                    models.SetPayload,
                    lambda n, o: b.set_payload(n, o.payload, _selector(o), key=o.key),
                ),
                (
                    "PUT",
                    r"/collections/([^/]+)/points/payload",
                    models.SetPayload,
                    lambda n, o: b.overwrite_payload(n, o.payload, _selector(o)),
                ),
                (
                    "POST",
                    r"/collections/([^/]+)/points/payload/delete",
                    models.DeletePayload,
                    lambda n, o: b.delete_payload(n, o.keys, _selector(o)),
                ),
                (
                    "PUT",
                    r"/collections/([^/]+)/points/vectors",
                    models.UpdateVectors,
                    lambda n, o: b.update_vectors(n, o.points, update_filter=o.update_filter),
                ),
            ]
        ]

    # -- handlers that need more than one backend call ---------------------------------------
    def _query(self, name: str, req: models.QueryRequest) -> models.QueryResponse:
        return self.backend.query_points(
            name,
            **_kwargs(
                req,
                {"filter": "query_filter", "params": "search_params", "with_vector": "with_vectors"},
                with_payload=False,
            ),
        )

    def _scroll(self, name: str, req: models.ScrollRequest) -> models.ScrollResult:
        points, next_offset = self.backend.scroll(
            name, **_kwargs(req, {"filter": "scroll_filter", "with_vector": "with_vectors"})
        )
        return models.ScrollResult(points=points, next_page_offset=next_offset)

    def _get_point(self, name: str, point_id: str) -> models.Record:
        found = self.backend.retrieve(name, [_point_id(point_id)], with_vectors=True)
        if not found:
            raise NotFound(f"No point with id {point_id} found")
        return found[0]

    # -- request dispatch ----------------------------------------------------------------------
    def handle(
        self, method: str, raw_path: str, raw_body: bytes, api_key: str | None = None
    ) -> tuple[int, Any]:
        """Return (HTTP status, JSON-able body or plain text) for one request."""
        self.keys_seen.append(api_key)
        if self.accepted_keys is not None and api_key not in self.accepted_keys:
            status = 401 if api_key is None else 403
            error = "Must provide an API key" if api_key is None else "Invalid API key"
            return status, {"status": {"error": error}, "time": 0.0}
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        if self.fail_with is not None:
            return self.fail_with, {"status": {"error": "Injected failure"}, "time": 0.0}
        path = urlsplit(raw_path).path
        if method == "GET" and path in ("", "/"):
            version = importlib.metadata.version("qdrant-client")
            return 200, {"title": "qdrant - vector search engine (test shim)", "version": version}
        if method == "GET" and path in _HEALTH:
            return 200, _HEALTH[path]
        for route_method, pattern, model, fn in self._routes:
            match = pattern.fullmatch(path)
            if route_method != method or match is None:
                continue
            args: list[Any] = [unquote(g) for g in match.groups()]
            started = time.perf_counter()
            try:
                if model is not None:
                    args.append(TypeAdapter(model).validate_json(raw_body or b"{}"))
                with self._lock, warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # local-mode-only notes (indexes, params)
                    result = fn(*args)
            except NotFound as exc:
                return 404, {"status": {"error": f"Not found: {exc}"}, "time": 0.0}
            except (ValidationError, ValueError, KeyError, TypeError, AssertionError) as exc:
                if "not found" in str(exc).lower():  # local mode: "Collection x not found"
                    return 404, {"status": {"error": f"Not found: {exc}"}, "time": 0.0}
                return 400, {"status": {"error": f"Bad request: {exc}"}, "time": 0.0}
            except Exception as exc:
                return 500, {"status": {"error": f"Service internal error: {exc!r}"}, "time": 0.0}
            if isinstance(result, BaseModel):
                result = result.model_dump(mode="json", exclude_none=True)
            elif isinstance(result, list):
                result = [r.model_dump(mode="json", exclude_none=True) for r in result]
            return 200, {"result": result, "status": "ok", "time": time.perf_counter() - started}
        return 404, {"status": {"error": f"Not found: no route for {method} {path}"}, "time": 0.0}

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> str:
        shim = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                shim.connections += 1

            def _dispatch(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, payload = shim.handle(self.command, self.path, body, self.headers.get("api-key"))
                is_text = isinstance(payload, str)
                data = payload.encode() if is_text else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain" if is_text else "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # client gave up (timeouts)
                    self.close_connection = True

            do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _dispatch

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="qdrant-rest-shim",
            daemon=True,
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> QdrantRestShim:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
