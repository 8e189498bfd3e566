"""API Gateway REST proxy events, built as API Gateway builds them (binary bodies base64)."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit


def rest_event(
    method: str,
    path: str,
    *,
    body: bytes | str | None = None,
    content_type: str | None = None,
    headers: dict | None = None,
    binary: bool | None = None,
    resource: str | None = None,
    path_params: dict | None = None,
) -> dict[str, Any]:
    split = urlsplit(path)
    query = parse_qs(split.query, keep_blank_values=True)
    headers = dict(headers or {})
    if content_type:
        headers["Content-Type"] = content_type
    if isinstance(body, str):
        body = body.encode()
    if binary is None:
        binary = bool(content_type) and content_type.split(";")[0].strip() in (
            "image/jpeg",
            "image/png",
            "image/webp",
            "multipart/form-data",
        )
    text = None
    if body is not None:
        text = base64.b64encode(body).decode() if binary else body.decode("utf-8", "surrogateescape")
    return {
        "resource": resource or split.path,
        "path": split.path,
        "httpMethod": method,
        "headers": headers or None,
        "multiValueHeaders": {k: [v] for k, v in headers.items()} or None,
        "queryStringParameters": {k: v[-1] for k, v in query.items()} or None,
        "multiValueQueryStringParameters": query or None,
        "pathParameters": path_params,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": resource or split.path,
            "httpMethod": method,
            "path": "/prod" + split.path,
            "stage": "prod",
            "requestId": "test-request",
            "accountId": "123456789012",
            "apiId": "test",
            "identity": {"sourceIp": "127.0.0.1"},
        },
        "body": text,
        "isBase64Encoded": binary,
    }


def json_event(method: str, path: str, payload: Any, **kwargs) -> dict[str, Any]:
    return rest_event(method, path, body=json.dumps(payload), content_type="application/json", **kwargs)


def multipart_body(
    fields: dict[str, str], image: bytes | None, boundary: str = "XyZboundary", filename: str = "query.jpg"
) -> tuple[bytes, str]:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    if image is not None:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
            f'filename="{filename}"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
            + image
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
