"""Errors -> HTTP answers: the one table of status codes, the one error shape
``{"error": {"code", "message", "details"?}}``, and the resolver's error handlers.

The domain raises typed errors (``visual_search.errors``) and knows nothing of HTTP; a status is
looked up by the error's type, most specific class first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError

from ..errors import (
    BodyTooLargeError,
    FeedbackDisabledError,
    FeedbackGivenError,
    ImageError,
    ImageTooLargeError,
    InvalidOptions,
    ModelMismatchError,
    NotFoundError,
    NotShownError,
    RequestError,
    SearchExpiredError,
    StoreUnavailableError,
    UnknownSearchError,
    UnsupportedMediaTypeError,
    VisualSearchError,
)
from ..observability import logger

STATUS_BY_ERROR: dict[type[VisualSearchError], int] = {
    VisualSearchError: 500,  # ModelError and anything unforeseen
    ImageError: 400,
    ImageTooLargeError: 413,
    RequestError: 400,
    BodyTooLargeError: 413,
    UnsupportedMediaTypeError: 415,
    InvalidOptions: 422,
    NotFoundError: 404,
    ModelMismatchError: 409,
    StoreUnavailableError: 503,
    FeedbackDisabledError: 403,
    UnknownSearchError: 404,
    SearchExpiredError: 410,
    NotShownError: 422,
    FeedbackGivenError: 409,
}
RETRY_AFTER_S = "5"


def status_for(exc: VisualSearchError) -> int:
    """The status of the most specific class of ``exc`` in the table."""
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def error_response(
    status: int,
    code: str,
    message: str,
    details: list | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if details:
        body["error"]["details"] = details
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=json.dumps(body),
        headers=dict(headers or {}),
    )


def domain_error(exc: VisualSearchError) -> Response:
    status = status_for(exc)
    headers = {"Retry-After": RETRY_AFTER_S} if status == 503 else None
    if status >= 500:
        logger.warning(f"{exc.code}: {exc}")
    return error_response(status, exc.code, str(exc), getattr(exc, "details", None), headers)


def invalid_request(exc: RequestValidationError) -> Response:
    details = [
        {
            "loc": [str(p) for p in e.get("loc", ())],
            "msg": e.get("msg", ""),
            "type": e.get("type", ""),
        }
        for e in exc.errors()
    ][:20]
    return error_response(422, "invalid_options", "the request's options are invalid", details)


def unexpected(exc: Exception) -> Response:
    logger.exception("unhandled error")
    return error_response(500, "internal_error", "internal error; the request id is in the logs")


def register_error_handlers(app: APIGatewayRestResolver) -> None:
    app.exception_handler(VisualSearchError)(domain_error)
    app.exception_handler(RequestValidationError)(invalid_request)
    app.exception_handler(Exception)(unexpected)

    @app.not_found
    def not_found(exc: Exception) -> Response:
        event = app.current_event
        allowed = allowed_methods(event.path)
        if allowed and event.http_method not in allowed:  # a known route, another method
            return error_response(
                405,
                "method_not_allowed",
                f"{event.http_method} is not allowed on {event.path}; use {', '.join(allowed)}",
                headers={"Allow": ", ".join(allowed)},
            )
        return error_response(404, "not_found", f"no such route: {event.http_method} {event.path}")


def allowed_methods(path: str) -> list[str]:
    """The methods of the routes matching ``path`` (``<name>`` matches one path segment)."""
    import re

    from .routes import ROUTES

    methods = set()
    for method, route, _, _ in ROUTES:
        if re.fullmatch(re.sub(r"<[^>]+>", "[^/]+", route), path.rstrip("/") or "/"):
            methods.add(method)
    return sorted(methods)
