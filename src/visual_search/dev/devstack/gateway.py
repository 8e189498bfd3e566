"""A local API Gateway: HTTP requests in, REST proxy events to the search function, responses out.

Binary media types (images, multipart forms) are base64-encoded exactly as a REST API with
BinaryMediaTypes does. Requests are handled one at a time, as one Lambda container does. ``/``
serves the search page, which in AWS would be hosted apart from the API.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..lambdas import LambdaContext

# As the template's BinaryMediaTypes: these bodies reach the function base64-encoded.
BINARY_TYPES = (
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/gif",
    "image/bmp",
    "image/tiff",
    "application/octet-stream",
    "multipart/form-data",
)
MAX_BODY = 10 * 1024 * 1024  # API Gateway's payload limit
LAMBDA_PAYLOAD = 6 * 1024 * 1024  # a synchronous invocation's request, the event JSON included
# Seconds a client may take between two reads of its request (LOCAL_READ_TIMEOUT_S): a body that
# stops arriving gets a 408 and its connection is closed; each client has its own thread.
READ_TIMEOUT_S = 30.0


def read_timeout() -> float:
    try:
        return max(0.1, float(os.environ.get("LOCAL_READ_TIMEOUT_S", READ_TIMEOUT_S)))
    except ValueError:
        return READ_TIMEOUT_S


def page() -> bytes:
    return resources.files("visual_search.dev.devstack").joinpath("static/index.html").read_bytes()


def to_event(method: str, target: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    split = urlsplit(target)
    query = parse_qs(split.query, keep_blank_values=True)
    content_type = headers.get("Content-Type", headers.get("content-type", ""))
    binary = content_type.split(";")[0].strip().lower() in BINARY_TYPES
    text = None
    if body:
        text = base64.b64encode(body).decode() if binary else body.decode("utf-8", "replace")
    path_params = None
    parts = split.path.strip("/").split("/")
    resource = split.path
    if len(parts) == 3 and parts[0] == "products" and parts[2] == "similar":
        # decoded, as API Gateway decodes path parameters (the path itself stays encoded)
        path_params, resource = {"product_id": unquote(parts[1])}, "/products/{product_id}/similar"
    return {
        "resource": resource,
        "path": split.path,
        "httpMethod": method,
        "headers": dict(headers),
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": {k: v[-1] for k, v in query.items()} or None,
        "multiValueQueryStringParameters": query or None,
        "pathParameters": path_params,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": resource,
            "httpMethod": method,
            "path": split.path,
            "stage": "local",
            "requestId": str(uuid.uuid4()),
            "identity": {"sourceIp": "127.0.0.1"},
            "requestTimeEpoch": int(time.time() * 1000),
        },
        "body": text,
        "isBase64Encoded": binary and bool(body),
    }


class Gateway:
    """Until :meth:`ready` gives it the search function, ``/health`` answers ``"status":
    "starting"`` (with what the stack is doing) and every other route 503 with ``Retry-After``."""

    def __init__(
        self,
        handler: Callable[[dict, Any], dict] | None,
        host: str,
        port: int,
        log: Callable[[str], None] = print,
        context: LambdaContext | None = None,
        read_timeout_s: float | None = None,
    ):
        self.handler = handler
        self.log = log
        self.context = context or LambdaContext()
        self.phase = "starting"
        self.health_extra: Callable[[], dict] = dict
        # the stack's own routes (/_local/...: model changes), never the deployed API's
        self.admin: Callable[[str, str, bytes], tuple[int, dict]] | None = None
        self._invoke = threading.Lock()  # one request at a time, like one Lambda container
        gateway = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "visual-search-local"
            timeout = read_timeout() if read_timeout_s is None else read_timeout_s  # per socket read

            def log_message(self, fmt, *args):  # quiet: the stack prints its own lines
                pass

            def _serve(self):
                gateway.serve(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _serve

        self.server = ThreadingHTTPServer((host, port), RequestHandler)
        self.server.daemon_threads = True
        self.thread: threading.Thread | None = None

    def _refuse(self, request: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        request.close_connection = True  # the body, if any, cannot be framed: do not read on
        self._reply(
            request,
            status,
            {"Content-Type": "application/json"},
            json.dumps({"error": {"code": code, "message": message}}).encode(),
        )

    def ready(
        self,
        handler: Callable[[dict, Any], dict],
        health_extra: Callable[[], dict] = dict,
        admin: Callable[[str, str, bytes], tuple[int, dict]] | None = None,
    ) -> None:
        self.health_extra = health_extra
        self.admin = admin
        self.handler = handler

    def _starting(self, request: BaseHTTPRequestHandler, path: str) -> None:
        if path == "/health":
            body = {"status": "starting", "phase": self.phase, **self.health_extra()}
            self._reply(request, 200, {"Content-Type": "application/json"}, json.dumps(body).encode())
            return
        error = {"code": "starting", "message": f"the local stack is starting ({self.phase}); try again soon"}
        headers = {"Content-Type": "application/json", "Retry-After": "2"}
        self._reply(request, 503, headers, json.dumps({"error": error}).encode())

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def serve(self, request: BaseHTTPRequestHandler) -> None:
        if "chunked" in (request.headers.get("Transfer-Encoding") or "").lower():
            self._refuse(
                request,
                411,
                "length_required",
                "send the body with a Content-Length "
                "(API Gateway does not take chunked request bodies either)",
            )
            return
        raw_length = (request.headers.get("Content-Length") or "0").strip()
        if not raw_length.isdigit():
            self._refuse(request, 400, "bad_request", "the Content-Length header is not a number")
            return
        length = int(raw_length)
        if length > MAX_BODY:  # at once, without reading a byte of it
            self._refuse(request, 413, "body_too_large", "over API Gateway's 10 MB payload limit")
            return
        try:
            body = request.rfile.read(length) if length else b""
        except TimeoutError:
            message = f"the request body did not arrive within {request.timeout:g} s"
            self._refuse(request, 408, "request_timeout", message)
            return
        if len(body) < length:  # the client closed the connection half-way
            request.close_connection = True
            return
        path = urlsplit(request.path).path
        if request.command == "GET" and path in ("/", "/index.html"):
            self._reply(request, 200, {"Content-Type": "text/html; charset=utf-8"}, page())
            return
        handler = self.handler
        if handler is None:
            self._starting(request, path)
            return
        if path.startswith("/_local/") and self.admin is not None:
            status, answer = self.admin(request.command, path, body)
            self._reply(request, status, {"Content-Type": "application/json"}, json.dumps(answer).encode())
            return
        event = to_event(request.command, request.path, dict(request.headers.items()), body)
        if len(json.dumps(event)) > LAMBDA_PAYLOAD:  # deployed, Lambda refuses the invocation
            message = (
                f"the request ({length:,} bytes"
                f"{', base64-encoded by API Gateway' if event['isBase64Encoded'] else ''}) "
                f"is over Lambda's 6 MB invocation limit: send photos over about 4.4 MB through POST /uploads"
            )
            self._refuse(request, 413, "body_too_large", message)
            return
        with self._invoke:
            response = handler(event, self.context)
        headers = dict(response.get("headers") or {})
        headers.update({k: v[-1] for k, v in (response.get("multiValueHeaders") or {}).items()})
        data = response.get("body") or ""
        payload = base64.b64decode(data) if response.get("isBase64Encoded") else data.encode()
        if path == "/health" and request.command == "GET" and response.get("statusCode") == 200:
            payload = self._with_extra(payload)
        self._reply(request, int(response.get("statusCode", 500)), headers, payload)

    def _with_extra(self, payload: bytes) -> bytes:
        """The local stack's own facts (the notification backlog) added to /health."""
        try:
            body = json.loads(payload)
        except ValueError:
            return payload
        return json.dumps({**body, **self.health_extra()}).encode()

    @staticmethod
    def _reply(request: BaseHTTPRequestHandler, status: int, headers: dict, payload: bytes) -> None:
        request.send_response(status)
        for name, value in headers.items():
            if name.lower() not in ("content-length", "connection"):
                request.send_header(name, str(value))
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        request.wfile.write(payload)

    def start(self) -> None:
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="api-gateway", kwargs={"poll_interval": 0.1}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self.thread:
            self.thread.join(5)
