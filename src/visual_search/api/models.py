"""Request and response models of the search API (pydantic), and how options are read from
JSON bodies, query strings and form fields into one ``SearchOptions``."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from ..domain import RECORD_FIELDS, Filter, Query, Range
from ..errors import InvalidOptions
from ..examples import MAX_EXAMPLES
from ..images import Region

Scalar = str | float | int | bool
FilterValue = Scalar | list[Scalar]
# S3 user-metadata names as they arrive (lower case letters, digits, - and _); no dots or colons,
# which Qdrant would read as a path into the payload.
METADATA_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
MAX_STRING = 256
MAX_ANY_OF = 50
MAX_OFFSET = 1000
# Not filterable: the image's record, the nested metadata object and the title (free text).
RESERVED = RECORD_FIELDS | {"metadata", "title"}


class PriceRange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gte: float | None = None
    lte: float | None = None
    gt: float | None = None
    lt: float | None = None

    @model_validator(mode="after")
    def finite_and_ordered(self) -> PriceRange:
        values = [v for v in (self.gte, self.lte, self.gt, self.lt) if v is not None]
        if not values:
            raise ValueError("give at least one of gte, lte, gt, lt")
        if any(not math.isfinite(v) for v in values):
            raise ValueError("price bounds must be finite numbers")
        lows = [(v, strict) for v, strict in ((self.gte, False), (self.gt, True)) if v is not None]
        highs = [(v, strict) for v, strict in ((self.lte, False), (self.lt, True)) if v is not None]
        for low, low_strict in lows:
            for high, high_strict in highs:
                if low > high or (low == high and (low_strict or high_strict)):
                    raise ValueError("the lower price bound is above the upper one")
        return self


def _check_scalar(value: Any, field: str) -> Any:
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise ValueError(f"{field}: values are at most {MAX_STRING} characters")
        if "\x00" in value:
            raise ValueError(f"{field}: a value may not hold a NUL character")
        return _encodable(value, f"{field}: a value")
    if isinstance(value, (bool, int)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise ValueError(f"{field}: expected a string or number or a list of them")


def _encodable(value: str, what: str) -> str:
    """``value`` if it is text S3, Qdrant and JSON can carry (a lone surrogate cannot be)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} must be valid Unicode (no lone surrogates)") from None
    return value


def _as_text(value: Any) -> str:
    """A JSON filter value as the string S3 metadata holds: true -> "true", 2 -> "2"."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


class Filters(BaseModel):
    """``category``, ``brand`` and ``product_id``: a value or a list (any of); ``price``: a range;
    any other metadata key: an exact value or a list."""

    model_config = ConfigDict(extra="allow")
    category: str | list[str] | None = None
    brand: str | list[str] | None = None
    product_id: str | list[str] | None = None
    price: PriceRange | None = None

    @field_validator("category", "brand", "product_id")
    @classmethod
    def short_lists(cls, value):
        if isinstance(value, list):
            if not value or len(value) > MAX_ANY_OF:
                raise ValueError(f"give 1 to {MAX_ANY_OF} values")
            for item in value:
                _check_scalar(item, "value")
        elif value is not None:
            _check_scalar(value, "value")
        return value

    @model_validator(mode="after")
    def metadata_keys(self) -> Filters:
        for key, value in (self.model_extra or {}).items():
            if key in RESERVED:
                raise ValueError(f"cannot filter on {key!r}")
            if not METADATA_KEY.match(key):
                raise ValueError(
                    f"filter key {key[:70]!r} is not a metadata name "
                    f"(letters, digits, _ and -, at most 64 characters)"
                )
            items = value if isinstance(value, list) else [value]
            if not items or len(items) > MAX_ANY_OF:
                raise ValueError(f"{key}: give 1 to {MAX_ANY_OF} values")
            for item in items:
                _check_scalar(item, key)
        return self

    def to_filter(self) -> Filter:
        """The typed filter the store takes (it alone knows where fields live in Qdrant)."""

        def values(value: Any) -> tuple:
            return tuple(value) if isinstance(value, list) else (value,)

        fields = {
            name: values(getattr(self, name))
            for name in ("category", "brand", "product_id")
            if getattr(self, name) is not None
        }
        price = Range(**self.price.model_dump(exclude_none=True)) if self.price is not None else None
        # S3 user metadata names arrive (and are stored) in lower case, values as strings
        metadata = {
            key.lower(): tuple(_as_text(v) for v in values(value))
            for key, value in (self.model_extra or {}).items()
        }
        return Filter(**fields, price=price, metadata=metadata)


class Crop(BaseModel):
    """A box of the query image, in relative [0, 1] coordinates of the image as seen (after its
    EXIF rotation): only that region is embedded (one product in a photo of several)."""

    model_config = ConfigDict(extra="forbid")
    x: float = Field(ge=0.0, le=1.0, description="left edge, 0 = the image's left")
    y: float = Field(ge=0.0, le=1.0, description="top edge, 0 = the image's top")
    width: float = Field(gt=0.0, le=1.0, description="box width, a fraction of the image's width")
    height: float = Field(gt=0.0, le=1.0, description="box height, a fraction of the image's height")

    @model_validator(mode="after")
    def inside_the_image(self) -> Crop:
        if self.x + self.width > 1.0 + 1e-6 or self.y + self.height > 1.0 + 1e-6:
            raise ValueError("the box must lie inside the image: x + width and y + height at most 1")
        return self

    def region(self) -> Region:
        return Region(self.x, self.y, min(self.width, 1.0 - self.x), min(self.height, 1.0 - self.y))


def _printable_id(value: str) -> str:
    if not value.isprintable():
        raise ValueError("an id must be printable text (no NUL or control characters)")
    return _encodable(value, "an id")


# A product id or an image's point id, as "more like this" / "not this" name them.
ExampleId = Annotated[str, StringConstraints(min_length=1, max_length=512), AfterValidator(_printable_id)]


class SearchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top_k: int = Field(10, ge=1, le=100, description="results per page")
    offset: int = Field(0, ge=0, le=MAX_OFFSET, description="results to skip (pagination)")
    score_threshold: float | None = Field(
        None, ge=-1.0, le=1.0, description="only results scoring at least this"
    )
    group_by_product: bool = Field(True, description="one result per product (its best image)")
    min_confidence: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="no_match is true when the first product's confidence is under this "
        "(default: the catalogue's calibrated no-match threshold)",
    )
    filters: Filters = Field(default_factory=Filters)
    positive: list[ExampleId] = Field(
        default_factory=list,
        max_length=MAX_EXAMPLES,
        description="more like this: product ids (or image point ids) of results; the query moves "
        "towards them (comma-separated in the query string or a form field)",
    )
    negative: list[ExampleId] = Field(
        default_factory=list,
        max_length=MAX_EXAMPLES,
        description="not this: product ids (or image point ids); they leave the answer and the "
        "query moves away from them",
    )
    crop: Crop | None = Field(
        None,
        description='search one region of the image: {"x", "y", "width", "height"} in [0, 1] '
        "(a JSON string in the query string or a form field)",
    )

    @field_validator("crop", mode="before")
    @classmethod
    def crop_from_json_text(cls, value):
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError('crop must be a JSON object {"x", "y", "width", "height"}') from None
        return value

    @field_validator("top_k", "offset", mode="before")
    @classmethod
    def no_floats_or_bools(cls, value):
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError("must be a whole number")
        return value

    def region(self) -> Region | None:
        return self.crop.region() if self.crop else None

    def to_query(self, exclude_products: tuple[str, ...] = ()) -> Query:
        """The store query, for one result more than the page: whether it exists decides
        ``next_offset`` (null when no result follows)."""
        return Query(
            top_k=self.top_k + 1,
            offset=self.offset,
            score_threshold=self.score_threshold,
            group_by_product=self.group_by_product,
            filters=self.filters.to_filter(),
            exclude_products=exclude_products,
            positive=tuple(self.positive),
            negative=tuple(self.negative),
        )


class SearchRequest(SearchOptions):
    """The JSON body of ``POST /search``: the image as base64, or the key of an uploaded one."""

    image: str | None = Field(None, description="the query image, base64 (a data: URL is fine)")
    s3_key: str | None = Field(
        None, max_length=1024, description="key of a query image uploaded through POST /uploads"
    )

    @model_validator(mode="after")
    def one_image(self) -> SearchRequest:
        if (self.image is None) == (self.s3_key is None):
            raise ValueError("give exactly one of image (base64) or s3_key")
        return self


# The models no search goes through (uploads, health, errors) build their validators when first
# used (defer_build), not in every cold start: ~3 ms of its CPU.
class UploadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)
    content_type: str = Field(
        "image/jpeg", description="an image type: image/jpeg, image/png, image/webp, ..."
    )
    content_length: int | None = Field(
        None,
        ge=1,
        description="the image's size in bytes: the upload URL then accepts exactly that many "
        "(S3 checks it), and a size over the image limit is refused at once (413)",
    )


class ImageRef(BaseModel):
    bucket: str
    key: str
    url: str | None = Field(None, description="short-lived URL to fetch the image")


class SearchHit(BaseModel):
    product_id: str
    score: float = Field(description="cosine similarity in the catalogue's space, in [-1, 1]")
    confidence: float | None = Field(
        None,
        description="calibrated probability that this is the product in the photo (null until "
        "the catalogue is calibrated by visual-search adapt)",
    )
    image: ImageRef
    metadata: dict[str, Any]


class Timings(BaseModel):
    decode: float
    embed: float
    search: float
    total: float


class SearchResponse(BaseModel):
    results: list[SearchHit]
    model: str
    timings_ms: Timings
    offset: int
    next_offset: int | None = Field(None, description="offset of the next page, if there may be one")
    no_match: bool = Field(
        False,
        description="the first product's confidence is under min_confidence (or the catalogue's "
        "no-match threshold): the shop may not carry this product; the candidates are still listed",
    )
    no_match_threshold: float | None = Field(
        None, description="the confidence under which no_match is true (null: uncalibrated catalogue)"
    )
    search_id: str | None = Field(
        None,
        description="this search's id, for POST /feedback when the shopper picks a result (null: "
        "learning from clicks is off, or the search could not be kept)",
    )


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)
    search_id: str = Field(description="the search_id of a search answer", max_length=64)
    product_id: str = Field(description="the product the shopper picked among its results", min_length=1)

    @field_validator("product_id")
    @classmethod
    def _product(cls, value: str) -> str:
        if len(value) > MAX_STRING or "\x00" in value:
            raise ValueError(f"a product id is at most {MAX_STRING} characters, without NUL")
        return _encodable(value, "product_id")


class FeedbackResponse(BaseModel):
    model_config = ConfigDict(defer_build=True)
    search_id: str
    product_id: str
    view: ImageRef = Field(description="the shopper view written: indexed as a photo of the product")
    dropped: list[str] = Field(
        description="keys of older shopper views of the product deleted to stay under the cap"
    )


class UploadResponse(BaseModel):
    model_config = ConfigDict(defer_build=True)
    upload_url: str
    s3_key: str
    method: str = "PUT"
    headers: dict[str, str]
    expires_in: int
    max_bytes: int


class ProjectionInfo(BaseModel):
    """The catalogue's projection (learned whitening): see `visual-search adapt`."""

    model_config = ConfigDict(defer_build=True)

    id: str
    fitted_at: str | None = None
    products: int | None = None
    photos: int | None = None
    dims: int | None = None
    shrinkage: float | None = None
    cv_recall_raw: float | None = None
    cv_recall_adapted: float | None = None
    cv_gain: float | None = None


class CalibrationInfo(BaseModel):
    """How the catalogue's confidence was calibrated: see `visual-search adapt`."""

    model_config = ConfigDict(defer_build=True)

    no_match_threshold: float
    fitted_at: str | None = None
    queries: int | None = Field(None, description="cross-validation queries it was fitted on")
    cv_recall_at_1: float | None = None
    cv_ece: float | None = Field(None, description="expected calibration error on those queries")
    cv_auroc: float | None = None


class HealthResponse(BaseModel):
    model_config = ConfigDict(defer_build=True)
    status: str
    model: str
    collection: str
    store: str
    store_reachable: bool
    points: int | None
    projection: ProjectionInfo | None = None  # null: the raw model space
    calibration: CalibrationInfo | None = None  # null: confidence not calibrated yet


class ErrorBody(BaseModel):
    model_config = ConfigDict(defer_build=True)
    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    model_config = ConfigDict(defer_build=True)
    error: ErrorBody


# -- options from query strings and form fields ---------------------------------------------

FLAT_FILTERS = ("category", "brand", "product_id")


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic's errors as field-level messages, without echoing the (maybe huge) input."""
    return [
        {"loc": [str(part)[:100] for part in err["loc"]] or ["body"], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_input=False)
    ][:20]


def parse_options(model: type[BaseModel], raw: Any) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        details = validation_details(exc)
        first = details[0] if details else {"loc": [], "msg": "invalid"}
        where = ".".join(first["loc"]) or "request"
        raise InvalidOptions(f"{where}: {first['msg']}", details) from None


PRICE_CONFLICT = "give the price range either in filters or as price_min / price_max"


def _conflict(message: str, loc: list[str]) -> InvalidOptions:
    return InvalidOptions(message, [{"loc": loc, "msg": "conflict"}])


def _json_filters(text: str) -> dict[str, Any]:
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidOptions(
            "filters is not valid JSON", [{"loc": ["filters"], "msg": "not valid JSON"}]
        ) from None
    if not isinstance(parsed, dict):
        raise InvalidOptions(
            "filters must be a JSON object", [{"loc": ["filters"], "msg": "must be a JSON object"}]
        )
    return parsed


def options_from_fields(fields: Mapping[str, list[str]]) -> dict[str, Any]:
    """Query-string or form fields -> the dict SearchOptions validates.

    ``category``/``brand``/``product_id`` may repeat or hold comma-separated values (any of);
    ``price_min``/``price_max`` form a range; ``filters`` may carry the JSON filter object. A
    filter given both ways is a conflict (422), whatever the order of the fields.
    """
    raw: dict[str, Any] = {}
    named: dict[str, Any] = {}
    filters: dict[str, Any] = {}
    for name, values in fields.items():
        if name in FLAT_FILTERS:
            items = [v.strip() for value in values for v in value.split(",") if v.strip()]
            named[name] = items[0] if len(items) == 1 else items
        elif name in ("price_min", "price_max"):
            named.setdefault("price", {})["gte" if name == "price_min" else "lte"] = values[-1]
        elif name == "filters":
            filters = _json_filters(values[-1])
        elif name in ("positive", "negative"):
            raw[name] = [v.strip() for value in values for v in value.split(",") if v.strip()]
        else:  # top_k, offset, score_threshold, group_by_product; unknown ones are refused (422)
            raw[name] = values[-1].strip() if name == "group_by_product" else values[-1]
    for name, value in named.items():
        if name in filters:
            raise _conflict(
                PRICE_CONFLICT if name == "price" else f"give {name} either in filters or as its own field",
                ["filters", name],
            )
        filters[name] = value
    if filters:
        raw["filters"] = filters
    return raw


def merge_options(body: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """Options of the body (JSON or form) together with those of the query string; an option
    or filter given in both is a conflict (422)."""
    merged = dict(body)
    for name, value in fields.items():
        if name == "filters" and isinstance(merged.get("filters"), dict):
            both = set(merged["filters"]) & set(value)
            if both:
                raise _conflict(
                    f"filter {sorted(both)[0]} is given both in the body and in the query string",
                    ["filters", sorted(both)[0]],
                )
            merged["filters"] = {**merged["filters"], **value}
        elif name in merged:
            raise _conflict(f"{name} is given both in the body and in the query string", [name])
        else:
            merged[name] = value
    return merged
