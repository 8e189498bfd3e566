"""The routes, as module-level functions. Each reads the ``SearchApi`` resolving the current
event through ``current()`` (a context variable the resolver sets for the length of one
``resolve``), so one module serves any number of apps, each with its own catalogue.

Powertools' ``Depends`` would do the same but costs ~1 ms a request in its dependency solving;
a context variable costs nothing measurable. The route functions carry no return annotation:
Powertools would read one into the OpenAPI document and validate answers against it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types

from ..errors import FeedbackDisabledError, ImageTooLargeError, InvalidOptions, RequestError
from .models import (
    CalibrationInfo,
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    HealthResponse,
    ImageRef,
    ProjectionInfo,
    SearchResponse,
    UploadResponse,
    parse_options,
)
from .requests import (
    IMAGE_TYPES,
    body_bytes,
    json_object,
    query_options,
    search_input,
    upload_request,
    uploaded_image,
)
from .responses import search_response

if TYPE_CHECKING:
    from .app import SearchApi

_current: ContextVar[SearchApi] = ContextVar("search_api")


def current() -> SearchApi:
    """The ``SearchApi`` whose resolver is handling the current event."""
    return _current.get()


def bind(api: SearchApi) -> Any:
    """Make ``api`` current; returns the token to ``unbind`` with."""
    return _current.set(api)


def unbind(token: Any) -> None:
    _current.reset(token)


def search():
    api = current()
    request = search_input(api.app.current_event, api.settings.api.max_body_bytes)
    if request.image is not None:
        image = request.image
    else:
        image = uploaded_image(api.s3, api.settings, request.s3_key or "")
    kept = api.feedback.begin(image) if api.feedback else None  # stored while the search runs
    result = api.catalog.search_image(image, request.options.to_query(), request.options.region())
    search_id = None
    if kept is not None and api.feedback is not None:
        shown = [str(hit.payload.get("product_id", "")) for hit in result.hits[: request.options.top_k]]
        search_id = api.feedback.finish(kept, shown)
    return search_response(result, request.options, api.urls, api.s3, search_id)


def feedback():
    api = current()
    if api.feedback is None:
        raise FeedbackDisabledError("learning from clicks is off (LEARN_FROM_CLICKS=false, or no BUCKET)")
    body = body_bytes(api.app.current_event, api.settings.api.max_body_bytes)
    request = parse_options(FeedbackRequest, json_object(body) if body.strip() else {})
    taken = api.feedback.click(api.catalog, request.search_id, request.product_id)
    return FeedbackResponse(
        search_id=taken.search_id,
        product_id=taken.product_id,
        view=ImageRef(bucket=api.feedback.views.bucket, key=taken.key),
        dropped=taken.dropped,
    ).model_dump()


def similar(product_id: str):
    api = current()
    # API Gateway's path keeps the client's percent-encoding; its pathParameters are
    # decoded (Caffè Latte, ids with "/" sent as %2F)
    params = api.app.current_event.path_parameters or {}
    product_id = params.get("product_id") or unquote(product_id)
    options = query_options(api.app.current_event)
    if options.crop is not None:
        raise InvalidOptions(
            "crop applies to a query image (POST /search)", [{"loc": ["crop"], "msg": "not for this route"}]
        )
    result = api.catalog.similar(product_id, options.to_query())
    return search_response(result, options, api.urls, api.s3)


def uploads():
    api = current()
    settings = api.settings.api
    if not settings.upload_bucket:
        raise RequestError("uploads are not configured (UPLOAD_BUCKET)", "uploads_disabled")
    request = upload_request(api.app.current_event, settings.max_body_bytes)
    limit = api.settings.images.max_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ImageTooLargeError(f"the image is {request.content_length:,} bytes; the limit is {limit:,}")
    key = f"{settings.upload_prefix}{uuid.uuid4().hex}.{IMAGE_TYPES[request.content_type]}"
    params: dict[str, Any] = {
        "Bucket": settings.upload_bucket,
        "Key": key,
        "ContentType": request.content_type,
    }
    headers = {"Content-Type": request.content_type}
    if request.content_length is not None:  # signed: S3 refuses another size
        params["ContentLength"] = request.content_length
        headers["Content-Length"] = str(request.content_length)
    url = api.s3.generate_presigned_url(
        "put_object",
        Params=params,
        ExpiresIn=settings.upload_url_ttl_s,
        HttpMethod="PUT",
    )
    return UploadResponse(
        upload_url=url,
        s3_key=key,
        headers=headers,
        expires_in=settings.upload_url_ttl_s,
        max_bytes=api.settings.images.max_bytes,
    ).model_dump()


def health():
    health = current().catalog.health()
    return HealthResponse(
        status="ok" if health.reachable else "degraded",
        model=health.model_id,
        collection=health.collection,
        store=health.store_mode,
        store_reachable=health.reachable,
        points=health.points,
        projection=ProjectionInfo.model_validate(health.projection) if health.projection else None,
        calibration=CalibrationInfo.model_validate(health.calibration) if health.calibration else None,
    ).model_dump()


def facets():
    return current().catalog.facets()


def openapi():
    return Response(
        status_code=200, content_type=content_types.APPLICATION_JSON, body=current().openapi_json()
    )


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "bad image or request", "content": {"application/json": {"model": ErrorResponse}}},
    413: {"description": "body or image too large"},
    415: {"description": "unsupported media type"},
    422: {"description": "invalid options (field-level details)"},
    503: {"description": "store unavailable; retry after Retry-After seconds"},
}


def _answers(
    description: str, model: type, more: dict[int | str, dict[str, Any]] | None = None
) -> dict[int | str, dict[str, Any]]:
    ok = {"description": description, "content": {"application/json": {"model": model}}}
    return {200: ok, **(more or {}), **ERRORS}


# (method, path, function, the route's OpenAPI facts)
ROUTES: list[tuple[str, str, Callable[..., Any], dict[str, Any]]] = [
    (
        "POST",
        "/search",
        search,
        {
            "summary": "Find the products nearest to a query image",
            "responses": _answers("nearest products", SearchResponse),
        },
    ),
    (
        "GET",
        "/products/<product_id>/similar",
        similar,
        {
            "summary": "Products nearest to a stored product (no inference)",
            "responses": _answers(
                "nearest other products", SearchResponse, {404: {"description": "unknown product"}}
            ),
        },
    ),
    (
        "POST",
        "/feedback",
        feedback,
        {
            "summary": "The shopper picked this product for that search: its photo teaches the catalogue",
            "responses": _answers(
                "the shopper view written",
                FeedbackResponse,
                {
                    403: {"description": "learning from clicks is off"},
                    404: {"description": "unknown search, or the product left the catalogue"},
                    409: {"description": "feedback was already given for this search"},
                    410: {"description": "the search is older than QUERY_PHOTO_TTL_H"},
                },
            ),
        },
    ),
    (
        "POST",
        "/uploads",
        uploads,
        {
            "summary": "A short-lived presigned PUT URL for a large query image",
            "responses": _answers("where to PUT the image", UploadResponse),
        },
    ),
    (
        "GET",
        "/health",
        health,
        {
            "summary": "Model, collection, point count, store reachability",
            "responses": {
                200: {"description": "health", "content": {"application/json": {"model": HealthResponse}}}
            },
        },
    ),
    ("GET", "/facets", facets, {"summary": "Categories and brands in the catalogue, with image counts"}),
    ("GET", "/openapi.json", openapi, {"summary": "This API's OpenAPI document", "include_in_schema": False}),
]


def register_routes(app: APIGatewayRestResolver) -> None:
    for method, path, function, facts in ROUTES:
        app.route(path, method, **facts)(function)
