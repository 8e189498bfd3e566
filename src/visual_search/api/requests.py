"""Reading requests: the body (raw or base64, size-limited), its media type, query-string
fields, and the four forms of a search (JSON with base64 ``image``, JSON with ``s3_key``, a raw
image body, a multipart form) -> the query image's bytes and one ``SearchOptions``."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import quopri
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

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
from .models import (
    SearchOptions,
    SearchRequest,
    UploadRequest,
    merge_options,
    options_from_fields,
    parse_options,
)

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

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
# python-multipart logs each parse error as a warning before raising it; here it becomes the 400's
# message, which the error mapping logs once (api/statuses.py).
logging.getLogger("python_multipart").setLevel(logging.ERROR)


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


@dataclass
class FormPart:
    """One part of a multipart form: its Content-Disposition names, transfer encoding and data."""

    name: str | None = None
    filename: str | None = None
    encoding: str = ""
    data: bytearray = field(default_factory=bytearray)

    def payload(self) -> bytes:
        """The part's bytes, decoded when the sender gave a transfer encoding (deprecated for
        forms by RFC 7578, still read)."""
        if self.encoding == "base64":
            try:
                return base64.b64decode(b"".join(bytes(self.data).split()), validate=True)
            except (binascii.Error, ValueError):
                raise RequestError(f"form part {self.name!r} is not valid base64") from None
        if self.encoding == "quoted-printable":
            return quopri.decodestring(bytes(self.data))
        return bytes(self.data)


class _FormReader:
    """python-multipart's callbacks, collecting the parts of one body."""

    def __init__(self) -> None:
        self.parts: list[FormPart] = []
        self.ended = False
        self._field = bytearray()
        self._value = bytearray()

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": lambda: self.parts.append(FormPart()),
            "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_part_data": lambda data, start, end: self.parts[-1].data.extend(data[start:end]),
            "on_end": self._end,
        }

    def _header_end(self) -> None:
        name, value = self._field.decode("latin-1").strip().lower(), bytes(self._value)
        self._field, self._value = bytearray(), bytearray()
        part = self.parts[-1]
        if name == "content-disposition":
            _, params = parse_options_header(value)
            raw_name, raw_filename = params.get(b"name"), params.get(b"filename")
            part.name = None if raw_name is None else raw_name.decode("utf-8", "replace")
            part.filename = None if raw_filename is None else raw_filename.decode("utf-8", "replace")
        elif name == "content-transfer-encoding":
            part.encoding = value.decode("latin-1").strip().lower()

    def _end(self) -> None:
        self.ended = True


def form_parts(media_type: str, body: bytes) -> list[FormPart]:
    """The parts of a ``multipart/form-data`` body, read by python-multipart (Starlette's and
    FastAPI's parser; 15-40x faster than the standard library's e-mail parser on a 1-5 MB image).
    A missing, wrong or over-long (> 256 bytes) boundary, a malformed part header, more than 8
    headers or a header over 4 KiB in a part, and a body that ends before its closing boundary
    are each a 400; the body as a whole is within the request's size limit already."""
    # The parser reads bytes as latin-1, so any header text (API Gateway passes str) is safe.
    _, params = parse_options_header(media_type.encode("utf-8", "replace"))
    boundary = params.get(b"boundary")
    if not boundary:
        raise RequestError("the multipart body cannot be parsed: its Content-Type has no boundary")
    reader = _FormReader()
    try:
        parser = MultipartParser(boundary, reader.callbacks())
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:  # MultipartParseError, and the boundary's length
        raise RequestError(
            f"the multipart body cannot be parsed (check its boundary and part headers): {str(exc)[:200]}"
        ) from None
    if not reader.ended:
        raise RequestError("the multipart body cannot be parsed: it ends before its closing boundary")
    return reader.parts


def multipart_search(media_type: str, body: bytes, fields: dict[str, list[str]]) -> SearchInput:
    image: bytes | None = None
    form: dict[str, list[str]] = {}
    for part in form_parts(media_type, body):
        if part.filename is not None or part.name in ("image", "file"):
            if image is not None:
                raise RequestError("send one image per search", "too_many_images")
            image = part.payload()
        elif part.name:
            form.setdefault(part.name, []).append(part.payload().decode("utf-8", "replace"))
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
