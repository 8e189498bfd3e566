"""The search API: routes on Powertools' APIGatewayRestResolver, for API Gateway REST proxy
events. The search function's handler only builds this app and resolves events with it.

Routes: ``POST /search`` (JSON base64 / JSON s3_key / raw image body / multipart form),
``GET /products/{product_id}/similar``, ``POST /uploads``, ``GET /health``,
``GET /openapi.json``. Every error has one JSON shape: ``{"error": {"code", "message",
"details"?}}``; nothing answers with a stack trace.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
import uuid
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, Mapping
from urllib.parse import unquote

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, CORSConfig, Response, content_types
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError

from .api_models import (
    MAX_OFFSET,
    ErrorResponse,
    HealthResponse,
    SearchOptions,
    SearchRequest,
    SearchResponse,
    UploadRequest,
    UploadResponse,
    merge_options,
    options_from_fields,
    parse_options,
)
from .catalog import Catalog, SearchResult
from .config import Settings
from .errors import NotFoundError, RequestError, StoreUnavailableError, VisualSearchError
from .observability import MetricUnit, logger, metrics

IMAGE_TYPES = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}
JSON_TYPES = ("application/json", "text/json")
RETRY_AFTER_S = "5"
URL_CACHE_SIZE = 10_000
DATA_URL = re.compile(r"^data:image/[a-z0-9.+-]+;base64,", re.I)
INTERNAL_PAYLOAD = {
    "bucket",
    "key",
    "product_id",
    "metadata",
    "model_id",
    "sequencer",
    "etag",
    "version_id",
    "indexed_at",
    "size",
    "content_type",
}
API_VERSION = "1.0.0"
# Options given in the query string (raw image bodies, GET) or as form fields (multipart).
QUERY_OPTIONS = [
    ("top_k", {"type": "integer", "minimum": 1, "maximum": 100, "default": 10}),
    ("offset", {"type": "integer", "minimum": 0, "maximum": 1000, "default": 0}),
    ("score_threshold", {"type": "number", "minimum": -1, "maximum": 1}),
    ("group_by_product", {"type": "boolean", "default": True}),
    ("category", {"type": "string", "description": "one value, or comma-separated any-of"}),
    ("brand", {"type": "string", "description": "one value, or comma-separated any-of"}),
    ("product_id", {"type": "string", "description": "one value, or comma-separated any-of"}),
    ("price_min", {"type": "number"}),
    ("price_max", {"type": "number"}),
    ("filters", {"type": "string", "description": "the JSON filter object"}),
]


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


class SearchApi:
    """The routes, bound to a catalogue, an S3 client and the settings."""

    def __init__(self, catalog: Catalog, s3: Any, settings: Settings):
        self.catalog = catalog
        self.s3 = s3
        self.settings = settings
        cors = None
        if settings.api.cors_origins:
            origins = list(settings.api.cors_origins)
            cors = CORSConfig(
                allow_origin=origins[0],
                extra_origins=origins[1:] or None,
                allow_headers=["Content-Type", "X-Api-Key"],
                max_age=600,
            )
        self.app = APIGatewayRestResolver(cors=cors, enable_validation=True)
        self._urls: dict[tuple[str, str], tuple[str, float]] = {}
        self._routes()
        self._error_handlers()

    # -- request parsing -------------------------------------------------------------------

    def _body(self) -> bytes:
        event = self.app.current_event
        raw = event.body or ""
        limit = self.settings.api.max_body_bytes
        if len(raw) > limit * 4 // 3 + 4:
            raise RequestError(
                f"the request body is over the {limit:,}-byte limit; upload large "
                f"images with POST /uploads and search by s3_key",
                413,
                "body_too_large",
            )
        if event.is_base64_encoded:
            try:
                data = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                raise RequestError("the request body is not valid base64") from None
        else:
            try:
                data = raw.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raise RequestError("the request body is not valid UTF-8 text", 400, "invalid_body") from None
        if len(data) > limit:
            raise RequestError(
                f"the request body is {len(data):,} bytes; the limit is {limit:,}", 413, "body_too_large"
            )
        return data

    def _content_type(self) -> str:
        value = (self.app.current_event.headers or {}).get("content-type") or ""
        return value.strip()

    def _query_fields(self) -> dict[str, list[str]]:
        event = self.app.current_event
        multi = event.multi_value_query_string_parameters or {}
        single = event.query_string_parameters or {}
        return {k: list(v) for k, v in multi.items()} or {k: [v] for k, v in single.items()}

    def _parse_search(self) -> tuple[bytes, SearchOptions]:
        media = self._content_type().split(";")[0].strip().lower()
        body = self._body()
        if not body:
            raise RequestError(
                "the request has no body: send the query image as JSON, as an "
                "image body or as a multipart form",
                400,
                "empty_body",
            )
        if media in JSON_TYPES or (not media and body[:1] == b"{"):
            return self._parse_json(body)
        if media in IMAGE_TYPES:
            return body, parse_options(SearchOptions, options_from_fields(self._query_fields()))
        if media == "multipart/form-data":
            return self._parse_multipart(body)
        raise RequestError(
            f"unsupported media type {media[:80] or '(none)'!r}; send application/json, "
            f"{', '.join(IMAGE_TYPES)} or multipart/form-data",
            415,
            "unsupported_media_type",
        )

    @staticmethod
    def _json_object(body: bytes) -> dict:
        try:
            raw = json.loads(body)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise RequestError(f"the body is not valid JSON: {reason}", 400, "invalid_json") from None
        if not isinstance(raw, dict):
            raise RequestError("the JSON body must be an object", 400, "invalid_json")
        return raw

    def _parse_json(self, body: bytes) -> tuple[bytes, SearchOptions]:
        raw = merge_options(self._json_object(body), options_from_fields(self._query_fields()))
        request = parse_options(SearchRequest, raw)
        options = SearchOptions(**request.model_dump(exclude={"image", "s3_key"}))
        if request.s3_key is not None:
            return self._uploaded_image(request.s3_key), options
        return self._decode_base64(request.image or ""), options

    def _decode_base64(self, text: str) -> bytes:
        text = "".join(DATA_URL.sub("", text.strip()).split())  # line-wrapped base64 too
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError("image is not valid base64", 400, "invalid_image") from None
        if not data:
            raise RequestError("image is empty", 400, "empty_image")
        return data

    def _parse_multipart(self, body: bytes) -> tuple[bytes, SearchOptions]:
        header = f"Content-Type: {self._content_type()}\r\nMIME-Version: 1.0\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(header + body)
        if not message.is_multipart():
            raise RequestError("the multipart body cannot be parsed (check the boundary)")
        image: bytes | None = None
        fields: dict[str, list[str]] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            if part.get_filename() is not None or name in ("image", "file"):
                if image is not None:
                    raise RequestError("send one image per search", 400, "too_many_images")
                image = payload
            elif name:
                fields.setdefault(str(name), []).append(payload.decode("utf-8", "replace"))
        if image is None:
            raise RequestError("the form has no file part (name it 'image')", 400, "no_image")
        options = merge_options(options_from_fields(fields), options_from_fields(self._query_fields()))
        return image, parse_options(SearchOptions, options)

    def _uploaded_image(self, s3_key: str) -> bytes:
        api = self.settings.api
        if not api.upload_bucket:
            raise RequestError("search by s3_key is not configured (UPLOAD_BUCKET)", 400, "uploads_disabled")
        key = s3_key if s3_key.startswith(api.upload_prefix) else api.upload_prefix + s3_key
        if (
            ".." in key.split("/")
            or key.endswith("/")
            or not s3_key.strip()
            or len(key.encode("utf-8", "surrogatepass")) > 1024
        ):
            raise RequestError(
                "s3_key is not a valid upload key",
                422,
                "invalid_options",
                [{"loc": ["s3_key"], "msg": "not a key returned by POST /uploads"}],
            )
        try:
            head = self.s3.head_object(Bucket=api.upload_bucket, Key=key)
        except Exception as exc:
            response = getattr(exc, "response", None) or {}
            code = str(response.get("Error", {}).get("Code", ""))
            status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in ("404", "NoSuchKey", "NotFound") or status == 404:
                raise NotFoundError(f"no uploaded image at s3_key {s3_key!r}") from None
            if 400 <= status < 500 and status != 429:  # S3 refuses the key itself
                raise RequestError(
                    f"S3 refused s3_key {s3_key[:80]!r} ({code or status})", 422, "invalid_options"
                ) from None
            raise StoreUnavailableError(f"S3 is unavailable: {code or exc}") from None
        if head.get("ContentLength", 0) > self.settings.images.max_bytes:
            raise RequestError(
                f"the uploaded image is {head['ContentLength']:,} bytes; the limit "
                f"is {self.settings.images.max_bytes:,}",
                413,
                "image_too_large",
            )
        return self.s3.get_object(Bucket=api.upload_bucket, Key=key)["Body"].read()

    # -- responses ---------------------------------------------------------------------------

    def _image_url(self, bucket: str, key: str) -> str | None:
        """A presigned GET URL for a result image, reused while it has over half its life left
        (signing costs ~0.3 ms a URL, a third of a warm search's overhead)."""
        if not self.settings.api.result_image_urls or not bucket:
            return None
        now = time.monotonic()
        cached = self._urls.get((bucket, key))
        if cached and cached[1] > now:
            return cached[0]
        ttl = self.settings.api.image_url_ttl_s
        try:
            url = self.s3.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=ttl
            )
        except Exception as exc:  # no credentials to sign with: results without URLs
            logger.debug(f"no image URL: {exc}")
            return None
        if len(self._urls) >= URL_CACHE_SIZE:
            self._urls.clear()
        # Reused for at most 5 minutes: the URL is also bound to the function's temporary
        # credentials, which Lambda renews.
        self._urls[(bucket, key)] = (url, now + min(ttl / 2, 300))
        return url

    def _shape(self, result: SearchResult, options: SearchOptions) -> dict:
        results = []
        for hit in result.hits:
            payload = hit.payload
            metadata = {k: v for k, v in payload.items() if k not in INTERNAL_PAYLOAD}
            metadata.update(payload.get("metadata") or {})
            bucket, key = str(payload.get("bucket", "")), str(payload.get("key", ""))
            results.append(
                {
                    "product_id": str(payload.get("product_id", "")),
                    "score": round(hit.score, 6),
                    "image": {"bucket": bucket, "key": key, "url": self._image_url(bucket, key)},
                    "metadata": metadata,
                }
            )
        following = options.offset + options.top_k
        more = len(results) == options.top_k and following <= MAX_OFFSET  # else a 422 to follow
        body = SearchResponse(
            results=results,
            model=result.model_id,
            timings_ms=result.timings_ms,
            offset=options.offset,
            next_offset=following if more else None,
        )
        metrics.add_metric(
            name="SearchLatency", unit=MetricUnit.Milliseconds, value=result.timings_ms["total"]
        )
        return body.model_dump()

    # -- routes ------------------------------------------------------------------------------

    def _routes(self) -> None:
        app = self.app
        responses = {
            400: {
                "description": "bad image or request",
                "content": {"application/json": {"model": ErrorResponse}},
            },
            413: {"description": "body or image too large"},
            415: {"description": "unsupported media type"},
            422: {"description": "invalid options (field-level details)"},
            503: {"description": "store unavailable; retry after Retry-After seconds"},
        }

        @app.post(
            "/search",
            summary="Find the products nearest to a query image",
            responses={
                200: {
                    "description": "nearest products",
                    "content": {"application/json": {"model": SearchResponse}},
                },
                **responses,
            },
        )
        def search():
            image, options = self._parse_search()
            result = self.catalog.search_image(image, options.to_query())
            return self._shape(result, options)

        @app.get(
            "/products/<product_id>/similar",
            summary="Products nearest to a stored product (no inference)",
            responses={
                200: {
                    "description": "nearest other products",
                    "content": {"application/json": {"model": SearchResponse}},
                },
                404: {"description": "unknown product"},
                **responses,
            },
        )
        def similar(product_id: str):
            # API Gateway's path keeps the client's percent-encoding; its pathParameters are
            # decoded (Caffè Latte, ids with "/" sent as %2F)
            params = self.app.current_event.path_parameters or {}
            product_id = params.get("product_id") or unquote(product_id)
            options = parse_options(SearchOptions, options_from_fields(self._query_fields()))
            result = self.catalog.similar(product_id, options.to_query())
            return self._shape(result, options)

        @app.post(
            "/uploads",
            summary="A short-lived presigned PUT URL for a large query image",
            responses={
                200: {
                    "description": "where to PUT the image",
                    "content": {"application/json": {"model": UploadResponse}},
                },
                **responses,
            },
        )
        def uploads():
            api = self.settings.api
            if not api.upload_bucket:
                raise RequestError("uploads are not configured (UPLOAD_BUCKET)", 400, "uploads_disabled")
            body = self._body()
            request = parse_options(UploadRequest, self._json_object(body) if body.strip() else {})
            if request.content_type not in IMAGE_TYPES:
                raise RequestError(
                    f"content_type must be one of {', '.join(IMAGE_TYPES)}", 415, "unsupported_media_type"
                )
            key = f"{api.upload_prefix}{uuid.uuid4().hex}.{IMAGE_TYPES[request.content_type]}"
            url = self.s3.generate_presigned_url(
                "put_object",
                Params={"Bucket": api.upload_bucket, "Key": key, "ContentType": request.content_type},
                ExpiresIn=api.upload_url_ttl_s,
                HttpMethod="PUT",
            )
            return UploadResponse(
                upload_url=url,
                s3_key=key,
                headers={"Content-Type": request.content_type},
                expires_in=api.upload_url_ttl_s,
                max_bytes=self.settings.images.max_bytes,
            ).model_dump()

        @app.get(
            "/health",
            summary="Model, collection, point count, store reachability",
            responses={
                200: {"description": "health", "content": {"application/json": {"model": HealthResponse}}}
            },
        )
        def health():
            store = self.catalog.store
            points = None
            reachable = store.ping()
            if reachable:
                try:
                    points = store.count()
                except StoreUnavailableError:
                    reachable = False
            return HealthResponse(
                status="ok" if reachable else "degraded",
                model=self.catalog.model_id,
                collection=store.collection,
                store=store.settings.mode,
                store_reachable=reachable,
                points=points,
            ).model_dump()

        @app.get("/facets", summary="Categories and brands in the catalogue, with image counts")
        def facets():
            return self.catalog.store.facets()

        @app.get("/openapi.json", summary="This API's OpenAPI document", include_in_schema=False)
        def openapi():
            return Response(
                status_code=200, content_type=content_types.APPLICATION_JSON, body=self.openapi_json()
            )

    def openapi_json(self) -> str:
        """The generated OpenAPI document, plus what the resolver cannot infer: the three body
        forms of POST /search and the query options read by hand."""
        schema = json.loads(
            self.app.get_openapi_json_schema(
                title="Visual product search",
                version=API_VERSION,
                description="Find products by photo. See README.md.",
            )
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        refs = {}
        for model in (SearchRequest, UploadRequest):
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
            refs[model] = {"$ref": f"#/components/schemas/{model.__name__}"}
        image = {"type": "string", "format": "binary"}
        search = schema["paths"]["/search"]["post"]
        search["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": refs[SearchRequest]},
                **{media: {"schema": image} for media in IMAGE_TYPES},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["image"],
                        "properties": {"image": image, **{name: spec for name, spec in QUERY_OPTIONS}},
                    }
                },
            },
        }
        query = [
            {"name": name, "in": "query", "required": False, "schema": spec} for name, spec in QUERY_OPTIONS
        ]
        search["parameters"] = query
        schema["paths"]["/products/{product_id}/similar"]["get"]["parameters"] += query
        schema["paths"]["/uploads"]["post"]["requestBody"] = {
            "content": {"application/json": {"schema": refs[UploadRequest]}}
        }
        return json.dumps(schema)

    # -- errors ------------------------------------------------------------------------------

    def _error_handlers(self) -> None:
        app = self.app

        @app.exception_handler(VisualSearchError)
        def domain_error(exc: VisualSearchError):
            headers = {"Retry-After": RETRY_AFTER_S} if exc.status == 503 else None
            if exc.status >= 500:
                logger.warning(f"{exc.code}: {exc}")
            return error_response(exc.status, exc.code, str(exc), getattr(exc, "details", None), headers)

        @app.exception_handler(RequestValidationError)
        def invalid(exc: RequestValidationError):
            details = [
                {
                    "loc": [str(p) for p in e.get("loc", ())],
                    "msg": e.get("msg", ""),
                    "type": e.get("type", ""),
                }
                for e in exc.errors()
            ][:20]
            return error_response(422, "invalid_options", "the request's options are invalid", details)

        @app.not_found
        def not_found(exc):
            return error_response(
                404, "not_found", f"no such route: {app.current_event.http_method} {app.current_event.path}"
            )

        @app.exception_handler(Exception)
        def unexpected(exc: Exception):
            logger.exception("unhandled error")
            return error_response(500, "internal_error", "internal error; the request id is in the logs")

    def resolve(self, event: dict, context: Any) -> dict:
        try:
            response = self.app.resolve(event, context)
        except Exception:  # malformed events the resolver itself cannot take
            logger.exception("event could not be resolved")
            response = error_response(400, "bad_request", "the request could not be read")
            self._count_error({"statusCode": 400})
            return {
                "statusCode": 400,
                "headers": {"Content-Type": "application/json"},
                "body": response.body,
                "isBase64Encoded": False,
            }
        self._count_error(response)
        # JSON only, whatever a client echoes into a message: browsers must not sniff it.
        response.setdefault("multiValueHeaders", {})["X-Content-Type-Options"] = ["nosniff"]
        if len(self.settings.api.cors_origins) > 1:
            # The allowed origin echoes the request's: shared caches must key on it.
            response.setdefault("multiValueHeaders", {})["Vary"] = ["Origin"]
        return response

    @staticmethod
    def _count_error(response: dict) -> None:
        """ErrorsNNN for every error answer, whichever path made it (a crash included)."""
        status = int(response.get("statusCode") or 0)
        if status >= 400:
            metrics.add_metric(name=f"Errors{status}", unit=MetricUnit.Count, value=1)
