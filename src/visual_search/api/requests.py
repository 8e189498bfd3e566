"""Reading requests: the body (raw or base64, size-limited), its media type, query-string
fields, and the four forms of a search (JSON with base64 ``image``, JSON with ``s3_key``, a raw
image body, a multipart form) -> the query image's bytes and one ``SearchOptions``."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent

from ..api_models import (
    SearchOptions,
    SearchRequest,
    UploadRequest,
    merge_options,
    options_from_fields,
    parse_options,
)
from ..aws import error_code, error_status, is_missing, is_refused
from ..config import Settings
from ..errors import (
    BodyTooLargeError,
    ImageTooLargeError,
    InvalidOptions,
    NotFoundError,
    RequestError,
    StoreUnavailableError,
    UnsupportedMediaTypeError,
)

# The image types the decoder reads (images.SUPPORTED_FORMATS), by media type -> file extension.
IMAGE_TYPES = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/bmp": "bmp",
    "image/tiff": "tif",
}
# A raw body of this type is taken as an image and identified by its content (sniffed).
SNIFFED_TYPES = ("application/octet-stream",)
JSON_TYPES = ("application/json", "text/json")
DATA_URL = re.compile(r"^data:image/[a-z0-9.+-]+;base64,", re.I)


@dataclass(frozen=True)
class SearchInput:
    """A decoded search request: the image itself, or the key of an uploaded one."""

    options: SearchOptions
    image: bytes | None = None
    s3_key: str | None = None


def body_bytes(event: APIGatewayProxyEvent, limit: int) -> bytes:
    """The request body as bytes (base64-decoded when API Gateway encoded it), at most ``limit``."""
    raw = event.body or ""
    if len(raw) > limit * 4 // 3 + 4:
        raise BodyTooLargeError(
            f"the request body is over the {limit:,}-byte limit; upload large "
            f"images with POST /uploads and search by s3_key"
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
            raise RequestError("the request body is not valid UTF-8 text", "invalid_body") from None
    if len(data) > limit:
        raise BodyTooLargeError(f"the request body is {len(data):,} bytes; the limit is {limit:,}")
    return data


def content_type(event: APIGatewayProxyEvent) -> str:
    value = (event.headers or {}).get("content-type") or ""
    return value.strip()


def query_fields(event: APIGatewayProxyEvent) -> dict[str, list[str]]:
    multi = event.multi_value_query_string_parameters or {}
    single = event.query_string_parameters or {}
    return {k: list(v) for k, v in multi.items()} or {k: [v] for k, v in single.items()}


def query_options(event: APIGatewayProxyEvent) -> SearchOptions:
    """Options given in the query string only (GET routes, raw image bodies)."""
    return parse_options(SearchOptions, options_from_fields(query_fields(event)))


def json_object(body: bytes) -> dict[str, Any]:
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise RequestError(f"the body is not valid JSON: {reason}", "invalid_json") from None
    if not isinstance(raw, dict):
        raise RequestError("the JSON body must be an object", "invalid_json")
    return raw


def decode_base64(text: str) -> bytes:
    text = "".join(DATA_URL.sub("", text.strip()).split())  # line-wrapped base64 too
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("image is not valid base64", "invalid_image") from None
    if not data:
        raise RequestError("image is empty", "empty_image")
    return data


def search_input(event: APIGatewayProxyEvent, limit: int) -> SearchInput:
    """Any of the four forms of ``POST /search``, chosen by the media type."""
    media = content_type(event).split(";")[0].strip().lower()
    body = body_bytes(event, limit)
    if not body:
        raise RequestError(
            "the request has no body: send the query image as JSON, as an image body or as a multipart form",
            "empty_body",
        )
    if media in JSON_TYPES or (not media and body[:1] == b"{"):
        return json_search(body, query_fields(event))
    if media in IMAGE_TYPES or media in SNIFFED_TYPES:
        return SearchInput(query_options(event), image=body)
    if media == "multipart/form-data":
        return multipart_search(content_type(event), body, query_fields(event))
    raise UnsupportedMediaTypeError(
        f"unsupported media type {media[:80] or '(none)'!r}; send application/json, "
        f"{', '.join(IMAGE_TYPES)}, application/octet-stream or multipart/form-data"
    )


def json_search(body: bytes, fields: dict[str, list[str]]) -> SearchInput:
    raw = merge_options(json_object(body), options_from_fields(fields))
    request = parse_options(SearchRequest, raw)
    options = SearchOptions(**request.model_dump(exclude={"image", "s3_key"}))
    if request.s3_key is not None:
        return SearchInput(options, s3_key=request.s3_key)
    return SearchInput(options, image=decode_base64(request.image or ""))


def multipart_search(media_type: str, body: bytes, fields: dict[str, list[str]]) -> SearchInput:
    header = f"Content-Type: {media_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(header + body)
    if not message.is_multipart():
        raise RequestError("the multipart body cannot be parsed (check the boundary)")
    image: bytes | None = None
    form: dict[str, list[str]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):  # None: a nested multipart, not a field
            payload = b""
        if part.get_filename() is not None or name in ("image", "file"):
            if image is not None:
                raise RequestError("send one image per search", "too_many_images")
            image = payload
        elif name:
            form.setdefault(str(name), []).append(payload.decode("utf-8", "replace"))
    if image is None:
        raise RequestError("the form has no file part (name it 'image')", "no_image")
    options = merge_options(options_from_fields(form), options_from_fields(fields))
    return SearchInput(parse_options(SearchOptions, options), image=image)


def upload_request(event: APIGatewayProxyEvent, limit: int) -> UploadRequest:
    body = body_bytes(event, limit)
    request = parse_options(UploadRequest, json_object(body) if body.strip() else {})
    if request.content_type not in IMAGE_TYPES:
        raise UnsupportedMediaTypeError(f"content_type must be one of {', '.join(IMAGE_TYPES)}")
    return request


def upload_key(s3_key: str, prefix: str) -> str:
    """The object key of an ``s3_key`` from ``POST /uploads`` (with or without the prefix)."""
    key = s3_key if s3_key.startswith(prefix) else prefix + s3_key
    if (
        ".." in key.split("/")
        or key.endswith("/")
        or not s3_key.strip()
        or len(key.encode("utf-8", "surrogatepass")) > 1024
    ):
        raise InvalidOptions(
            "s3_key is not a valid upload key",
            [{"loc": ["s3_key"], "msg": "not a key returned by POST /uploads"}],
        )
    return key


def uploaded_image(s3: Any, settings: Settings, s3_key: str) -> bytes:
    """The bytes of a query image uploaded through ``POST /uploads``."""
    api = settings.api
    if not api.upload_bucket:
        raise RequestError("search by s3_key is not configured (UPLOAD_BUCKET)", "uploads_disabled")
    key = upload_key(s3_key, api.upload_prefix)
    try:
        head = s3.head_object(Bucket=api.upload_bucket, Key=key)
    except Exception as exc:
        code, status = error_code(exc), error_status(exc)
        if is_missing(exc) or status == 404:
            raise NotFoundError(f"no uploaded image at s3_key {s3_key!r}") from None
        if is_refused(exc):  # S3 refuses the key itself
            raise InvalidOptions(f"S3 refused s3_key {s3_key[:80]!r} ({code or status})") from None
        raise StoreUnavailableError(f"S3 is unavailable: {code or exc}") from None
    limit = settings.images.max_bytes
    if head.get("ContentLength", 0) > limit:
        raise ImageTooLargeError(
            f"the uploaded image is {head['ContentLength']:,} bytes; the limit is {limit:,}"
        )
    return s3.get_object(Bucket=api.upload_bucket, Key=key)["Body"].read()
