"""The domain: index, remove and find product images. Handlers and the CLI call only this.

``Catalog`` joins the embedder (bytes -> vector) and the store (vectors <-> Qdrant). It knows
how an S3 object's metadata becomes a product payload, and it times each stage of a search so
the API can report where the milliseconds went. Its callers (ingest, the API, the CLI, the
local stack) use its methods only, never its embedder or store: health, counts, facets, stored
payloads, decoding ahead of ``index``, and its description (``info``) are all here.
"""

from __future__ import annotations

import atexit
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.header import decode_header, make_header
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from . import examples
from .adaptation.calibration import Calibration, annotate
from .adaptation.projections import ProjectionRepository
from .adaptation.spaces import ADAPTED, Space, SpaceTracker
from .config import ImageLimits, Settings, get_settings
from .domain import SHOPPER, Hit, ImagePoint, Query
from .errors import ImageError, StaleProjectionError, StoreUnavailableError, VisualSearchError
from .images import Preprocess, Region, decode
from .model import Embedder, get_embedder
from .registry import ModelRegistry, ModelSource, registry_from
from .store import CatalogStore, CollectionMissing, ModelFields

REINDEX_SUFFIX = ".reindex"  # alias <COLLECTION>.reindex -> the collection a re-index builds
PREVIOUS_SUFFIX = ".previous"  # alias <COLLECTION>.previous -> the collection a model change left
# User metadata with a meaning of its own; every other key is kept as a string under "metadata".
KNOWN_METADATA = ("product-id", "category", "brand", "title", "price")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
# Known not to be photos: skipped without downloading. Any other suffix (a dotted file name
# such as IMG_2024.05.01, a version like front.v2) is fetched and its content type decides.
NON_IMAGE_EXTENSIONS = (
    ".txt",
    ".csv",
    ".tsv",
    ".json",
    ".jsonl",
    ".xml",
    ".html",
    ".htm",
    ".md",
    ".pdf",
    ".svg",
    ".zip",
    ".gz",
    ".tar",
    ".7z",
    ".mp4",
    ".mov",
    ".avi",
    ".webm",
    ".mp3",
    ".wav",
    ".doc",
    ".docx",
    ".xls",
    ".xlsx",
    ".ppt",
    ".pptx",
    ".js",
    ".css",
    ".yaml",
    ".yml",
    ".log",
    ".parquet",
    ".onnx",  # the model registry's files (visual_search.registry), when it shares the bucket
)


@dataclass
class ImageSource:
    """An image to index: where it lives, its bytes and its S3 object facts."""

    bucket: str
    key: str
    data: bytes
    metadata: Mapping[str, str] = field(default_factory=dict)
    content_type: str | None = None
    etag: str | None = None
    version_id: str | None = None
    sequencer: str | None = None
    # The model input, when it was decoded ahead (e.g. right after the download).
    pixels: Any = None


@dataclass
class IndexResult:
    source: ImageSource
    error: ImageError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class IndexBatch:
    results: list[IndexResult]
    embed_ms: float = 0.0
    upsert_ms: float = 0.0


@dataclass
class SearchResult:
    hits: list[Hit]
    model_id: str
    timings_ms: dict[str, float]
    no_match_threshold: float | None = None  # the catalogue's calibrated default (None: uncalibrated)


@dataclass(frozen=True)
class CatalogHealth:
    """Whether the store answers, and how many images the collection holds (None if not)."""

    model_id: str
    collection: str
    store_mode: str
    reachable: bool
    points: int | None
    projection: dict | None = None  # the catalogue's projection (spaces.Space.summary), if any
    calibration: dict | None = None  # what its confidence was calibrated on, if it is


def product_id_for(key: str, metadata: Mapping[str, str]) -> str:
    """``product-id`` metadata, else the key's parent folder, else the file's stem."""
    explicit = (metadata.get("product-id") or "").strip()
    if explicit:
        return explicit
    path = PurePosixPath(key)
    return path.parent.name if path.parent.name else path.stem


_AMOUNT = re.compile(r"\d(?:[\d.,' ]*\d)?")


def parse_price(raw: str | None) -> float | None:
    """A price as shops write it: ``12.5``, ``3,99``, ``1,299.00``, ``1.299,00``, ``€12``,
    ``12.50 EUR``. None for anything else (text, several numbers, negative, not finite).

    Kept instead of ``price-parser`` (0.5.1, measured on tests/unit/test_payload.py: 18 of 23
    cases): it extracts the first amount it sees, so ``-5`` became 5.0, ``1e400`` 1.0 and
    ``12 or 13`` / ``about 12`` 12.0, wrong prices a filter would then match."""
    text = str(raw).strip() if raw is not None else ""
    match = _AMOUNT.search(text)
    if not match:
        return None
    around = (text[: match.start()] + " " + text[match.end() :]).strip()
    if "-" in text[: match.start()] or not re.fullmatch(r"[^\w\d]*|[A-Za-z]{3}", around):
        return None
    number = re.sub(r"[' ]", "", match.group())
    if "," in number and "." in number:  # the last separator is the decimal one
        decimal, thousands = (",", ".") if number.rfind(",") > number.rfind(".") else (".", ",")
        number = number.replace(thousands, "").replace(decimal, ".")
    elif "," in number:  # 1,299 and 1,299,000 group thousands; 3,99 is a decimal comma
        groups = number.split(",")
        grouped = len(groups) > 2 or len(groups[-1]) == 3
        number = number.replace(",", "") if grouped else number.replace(",", ".")
    elif number.count(".") > 1:  # 1.299.000
        number = number.replace(".", "")
    try:
        value = float(number)
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def decode_metadata_value(value: Any) -> str:
    """S3 stores non-ASCII user metadata as RFC 2047 encoded-words (=?UTF-8?B?...?=): decode."""
    text = str(value)
    if "=?" not in text or "?=" not in text:
        return text
    try:
        return str(make_header(decode_header(text)))
    except Exception:
        return text


def build_payload(source: ImageSource, model_id: str) -> dict[str, Any]:
    meta = {k.lower(): decode_metadata_value(v) for k, v in source.metadata.items()}
    payload: dict[str, Any] = {
        "product_id": product_id_for(source.key, meta),
        "bucket": source.bucket,
        "key": source.key,
        "size": len(source.data),
        "content_type": source.content_type,
        "etag": source.etag,
        "version_id": source.version_id,
        "sequencer": source.sequencer,
        "model_id": model_id,
        # to the microsecond: `adapt` and `reindex` catch up by comparing these stamps
        "indexed_at": datetime.now(UTC).isoformat(timespec="microseconds"),
    }
    for name in ("category", "brand", "title"):
        if meta.get(name):
            payload[name] = meta[name]
    price = parse_price(meta.get("price"))
    if price is not None:
        payload["price"] = price
    if meta.get("source") == SHOPPER:  # a shopper view (visual_search.feedback)
        payload["source"] = SHOPPER
        payload["search_id"] = meta.pop("search-id", None)
        meta.pop("source")
    payload["metadata"] = {k: str(v) for k, v in meta.items() if k not in KNOWN_METADATA}
    return {k: v for k, v in payload.items() if v is not None}


DESCRIPTIVE_FIELDS = ("product_id", "category", "brand", "title", "price", "metadata")


def describes_same(stored: Mapping[str, Any], source: ImageSource, model_id: str) -> bool:
    """Whether a stored payload already carries the product metadata ``source`` would give."""
    fresh = build_payload(source, model_id)
    return all(stored.get(name) == fresh.get(name) for name in DESCRIPTIVE_FIELDS)


def is_image_key(key: str, content_type: str | None = None) -> bool:
    if content_type and content_type.lower().startswith("image/"):
        return True
    return key.lower().endswith(IMAGE_EXTENSIONS)


class Catalog:
    def __init__(
        self,
        embedder: Embedder,
        store: CatalogStore,
        reranker: Embedder | None = None,
        projection_check_s: float | None = None,
        models: ModelSource | None = None,
        projections: ProjectionRepository | None = None,
    ):
        self.embedder = embedder  # the layer's model (MODEL_DIR)
        self.store = store
        self.reranker = reranker
        # Which model serves each collection: the layer's, or the registry's (registry.serving).
        self.models = models or ModelSource(embedder, layer_space=(store.model_id, store.model_fingerprint))
        check_s = get_settings().adapt.check_s if projection_check_s is None else projection_check_s
        # The physical collection behind the alias, its model and its projection (spaces.py).
        self.spaces = SpaceTracker(store, check_s, models=self.models, projections=projections)

    @classmethod
    def open(cls, settings: Settings | None = None, embedder: Embedder | None = None) -> Catalog:
        from .model import load_reranker

        settings = settings or get_settings()
        embedder = embedder or get_embedder()
        reranker = load_reranker(settings)
        registry = registry_from(settings)
        store = CatalogStore.open(
            settings.store,
            embedder.model_id,
            embedder.dim,
            embedder.card.distance,
            reranker.model_id if reranker else None,
            reranker.dim if reranker else None,
            model_fingerprint=embedder.fingerprint,
            metadata=embedder.fields.metadata,
            follow=registry is not None,
        )
        models = ModelSource(embedder, registry, settings, settings.models.keep)
        return cls(embedder, store, reranker, models=models)

    @property
    def model_id(self) -> str:
        """The id of the model serving the catalogue now (the one its collection was built by;
        the layer's when there is none it can serve: the operation itself then says why)."""
        try:
            return self._embedder(self.spaces.current()).model_id
        except VisualSearchError:
            return self.embedder.model_id

    def _embedder(self, space: Space) -> Embedder:
        return space.embedder or self.embedder

    # -- about the catalogue -----------------------------------------------------------------

    @property
    def collection(self) -> str:
        """The collection (or alias) name searches and writes go to."""
        return self.store.collection

    @property
    def store_mode(self) -> str:
        """``server``, ``local`` or ``memory``: where the store lives."""
        return self.store.settings.mode

    @property
    def space(self) -> str:
        """The embedding space the collection's vectors belong to (model, version, input)."""
        return self.store.space

    @property
    def image_limits(self) -> ImageLimits:
        """The byte and pixel limits images are decoded under."""
        return self.embedder.limits

    def count(self) -> int:
        return self.store.count()

    def facets(self) -> dict:
        """Categories and brands with their image counts."""
        return self.store.facets()

    def health(self) -> CatalogHealth:
        points, projection, calibrated = None, None, None
        model_id = self.embedder.model_id
        reachable = self.store.ping()
        if reachable:
            try:
                points = self.store.count()
                space = self.spaces.current()
                projection, calibrated = space.summary(), space.calibration_summary()
                model_id = self._embedder(space).model_id
            except StoreUnavailableError:
                reachable = False
        return CatalogHealth(
            model_id, self.collection, self.store_mode, reachable, points, projection, calibrated
        )

    def info(self) -> dict[str, Any]:
        """The model and the store, as ``visual-search info`` prints them."""
        embedder = self._embedder(self.spaces.current())
        card = embedder.card
        return {
            "model": {
                "id": card.id,
                "version": card.version,
                "embedding_dim": card.embedding_dim,
                "distance": card.distance,
                "dir": str(embedder.model_dir),
            },
            "store": {
                "mode": self.store_mode,
                "collection": self.collection,
                "points": self.count(),
                "disk_bytes": self.store_info()["disk_bytes"],
            },
        }

    def stored(self, refs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        """The payloads of the images at these (bucket, key) refs that are in the catalogue."""
        return self.store.get_images(refs)

    def images_in(self, bucket: str | None = None) -> Iterator[Hit]:
        """Every image of ``bucket`` (of all buckets: None) in the catalogue (payloads, no vectors)."""
        return self.store.scroll({"bucket": bucket} if bucket is not None else {})

    def product_payload(self, product_id: str) -> dict | None:
        """The payload of one of the product's images (its product fields), or None."""
        for hit in self.store.scroll({"product_id": product_id}, page=1):
            return hit.payload
        return None

    def catalogue_photos(self, product_id: str) -> int:
        """How many of the product's images are its catalogue's own (not shopper views)."""
        everything = self.store.count({"product_id": product_id})
        return (
            everything - self.store.count({"product_id": product_id, "source": SHOPPER}) if everything else 0
        )

    def shopper_views(self) -> Iterator[Hit]:
        """Every shopper view, with its vector in the space searches use."""
        return self._read(lambda space: space.store.scroll({"source": SHOPPER}, with_vectors=[space.using]))

    def nearest_images(self, vector: np.ndarray, top: int) -> list[Hit]:
        """The ``top`` images nearest to a vector already in the search space (no grouping)."""
        query = Query(top_k=top, group_by_product=False, with_held=True)
        return self._read(lambda space: space.store.search(vector, replace(query, using=space.using)))

    def hold_views(self, held: Mapping[str, str | None]) -> None:
        """Hold back (a reason) or release (None) shopper views, by point id: a held view answers
        no search and is left out of the next adaptation fit."""
        if held:
            self._write(
                lambda space: space.store.update_payload({pid: {"held": why} for pid, why in held.items()})
            )

    def close(self) -> None:
        """Flush and release the store (embedded Qdrant holds a folder lock)."""
        self.store.close()

    # -- collections (re-indexing) -----------------------------------------------------------

    def physical_collection(self) -> str | None:
        """The collection ``collection`` names (the alias's target, or itself), if any."""
        return self.store.physical_collection()

    def new_collection(self, name: str) -> Catalog:
        """The same models writing to a new, empty collection ``name``."""
        return self._view(self.store.new_collection(name))

    def drop_collection(self, name: str) -> None:
        self.store.drop_collection(name)

    def point_alias(self, target: str) -> None:
        """Point the alias ``collection`` at ``target`` (atomically)."""
        self.store.point_alias(target)

    def payloads_in(self, collection: str, fields: Sequence[str]) -> Iterator[dict]:
        """These payload fields of every point of a physical collection."""
        return self.store.payloads_in(collection, fields)

    # -- images ------------------------------------------------------------------------------

    def decode(self, data: bytes) -> Decoded:
        """The model input of an image, made ahead of ``index`` (e.g. in a download thread, see
        ``ImageSource.pixels``) for the model serving the catalogue now; raises ``ImageError``."""
        try:
            preprocess = self._embedder(self.spaces.current()).card.preprocess
        except VisualSearchError:  # no space to write to (yet): ``index`` says why, or decodes again
            preprocess = self.embedder.card.preprocess
        return Decoded(preprocess, decode(data, preprocess, self.embedder.limits))

    def reconnect(self) -> None:
        """New store connections (after a SnapStart restore)."""
        self.store.reconnect()

    # -- collections (re-index through the function fleet, visual_search.ops.fleet) -----------------

    def for_collection(self, name: str) -> Catalog:
        """The same catalogue over another collection (sharing the model and the connection)."""
        return self._view(self.store.for_collection(name))

    def _view(self, store: CatalogStore) -> Catalog:
        """This catalogue over another of its collections: the same models and projections."""
        return Catalog(
            self.embedder, store, self.reranker, models=self.models, projections=self.spaces.projections
        )

    def exists(self) -> bool:
        return self.store.exists()

    def create(self) -> None:
        self.store.create()

    def reindex_target(self) -> str | None:
        """The collection a running re-index builds (every change goes there too), or None."""
        return self.store.alias_target(self.store.collection + REINDEX_SUFFIX)

    def set_reindex_target(self, collection: str | None) -> None:
        self.store.set_alias(self.store.collection + REINDEX_SUFFIX, collection)

    def switch_to(self, collection: str) -> None:
        """The alias to ``collection`` and the re-index over, in one atomic step."""
        self.store.switch_alias(collection, drop=[self.store.collection + REINDEX_SUFFIX])

    # -- model changes (visual_search.ops.migration) ------------------------------------------

    def create_collection(self, name: str, model: ModelFields, metadata: Mapping[str, Any]) -> Catalog:
        """A new, empty physical collection for ``model``'s vectors; the catalogue over it."""
        store = self.store.for_model(model).for_collection(name, metadata=metadata)
        store.create()
        return self.for_collection(name)

    @property
    def layer_model(self) -> ModelFields:
        """What a collection of the layer's model (``MODEL_DIR``) records of it."""
        return self.embedder.fields

    def serving_model_dir(self) -> Path:
        """The folder of the model serving the catalogue now (the layer's, before any collection)."""
        current = self.physical_collection()
        return (self.model_for(current) if current else self.embedder).model_dir

    def previous_collection(self) -> str | None:
        """The collection a model change left, kept for ``visual-search model rollback``."""
        name = self.store.alias_target(self.store.collection + PREVIOUS_SUFFIX)
        return name if name and self.store.admin().collection_exists(name) else None

    def set_previous(self, collection: str | None) -> None:
        self.store.set_alias(self.store.collection + PREVIOUS_SUFFIX, collection)

    def collections(self) -> list[str]:
        """The store's physical collections."""
        return self.store.collections()

    def metadata_of(self, collection: str) -> dict[str, Any]:
        return self.store.metadata_of(collection)

    def update_metadata_of(self, collection: str, changes: Mapping[str, Any]) -> None:
        self.store.update_metadata_of(collection, changes)

    def count_in(self, collection: str) -> int:
        return self.store.count_in(collection)

    @property
    def registry(self) -> ModelRegistry | None:
        """The model registry (``MODELS_BUCKET``), or None."""
        return self.models.registry

    def registry_model(self, model_id: str) -> Embedder:
        """A model of the registry, fetched and checked (ModelUnavailableError if it cannot be)."""
        return self.models.published(model_id)

    def model_for(self, collection: str) -> Embedder:
        """The model that serves ``collection`` (loaded; ModelUnavailableError if it cannot be)."""
        return self.models.for_collection(collection, self.metadata_of(collection))

    def count_under(self, sources: Sequence[tuple[str, str]]) -> int:
        """Images stored from these (bucket, key prefix) sources."""
        total = 0
        for bucket, prefix in sources:
            if not prefix:
                total += self.store.count({"bucket": bucket})
            else:
                total += sum(
                    1
                    for h in self.store.scroll({"bucket": bucket})
                    if str(h.payload.get("key", "")).startswith(prefix)
                )
        return total

    def index(self, sources: Sequence[ImageSource]) -> IndexBatch:
        """Embed all images in one batch, with the model of the collection they go to, and
        upsert the good ones; bad images carry their error."""
        started = time.perf_counter()
        space = self.spaces.current()
        embedder = self._embedder(space)
        decoded = [_decoded_for(s.pixels, embedder) for s in sources]
        todo = [i for i, item in enumerate(decoded) if item is None]
        for i, item in zip(todo, embedder.preprocess_many([sources[i].data for i in todo])):
            decoded[i] = item
        embedded = embedder.embed_prepared(decoded)
        reranked = (
            self.reranker.embed_many([s.data for s in sources]) if self.reranker else [None] * len(sources)
        )
        embedded_at = time.perf_counter()
        results, points = [], []
        for source, item, second in zip(sources, embedded, reranked):
            if isinstance(item, ImageError):
                results.append(IndexResult(source, item))
                continue
            if isinstance(second, ImageError):  # the reranking model refused the image
                results.append(IndexResult(source, second))
                continue
            points.append(
                ImagePoint(
                    source.bucket,
                    source.key,
                    item,
                    build_payload(source, embedder.model_id),
                    rerank_vector=second,
                )
            )
            results.append(IndexResult(source))
        if points:
            self._write(lambda space: self._upsert(space, points), space)
        return IndexBatch(results, _ms(embedded_at - started), _ms(time.perf_counter() - embedded_at))

    @staticmethod
    def _upsert(space: Space, points: list[ImagePoint]) -> None:
        """Both vectors: the model's, and its projection when the collection has one."""
        adapted = space.project(np.stack([p.vector for p in points]))
        for i, point in enumerate(points):
            point.vectors.pop(ADAPTED, None)
            if adapted is not None:
                point.vectors[ADAPTED] = adapted[i]
        space.store.upsert(points)

    def _write(self, write, space: Space | None = None) -> None:
        """Write into the current space, then make sure it still is the current one.

        A write that raced ``visual-search adapt`` (or ``reindex``) landed in the collection the
        alias just left, made with the projection it just left: refused as stale (transient, so
        the change is retried), with the space reloaded for the retry. Never a mixed space.
        ``space``: the one the write was made for (its model embedded the vectors).
        """
        space = space or self.spaces.current()
        try:
            write(space)
        except CollectionMissing:  # dropped after a switch: look again before the retry
            self.spaces.invalidate()
            raise
        if not self.spaces.still_current(space):
            fresh = self.spaces.reload()
            raise StaleProjectionError(
                f"the catalogue moved from {space.collection} (projection {_short(space.projection_id)}) "
                f"to {fresh.collection} (projection {_short(fresh.projection_id)}) during the write: "
                f"reloaded, retry"
            )

    def remove(self, refs: Sequence[tuple[str, str]]) -> None:
        if refs:
            self._write(lambda space: space.store.delete_images(refs))

    def _read(self, read):
        """Read from the current space; a collection dropped under us (a switch this process
        has not seen yet) means: reload and read once more."""
        space = self.spaces.current()
        try:
            return read(space)
        except CollectionMissing:
            return read(self.spaces.reload())

    @property
    def adaptation_store(self) -> CatalogStore:
        """The store, for ``visual-search adapt`` (adaptation.py), which copies whole physical
        collections by name: the one caller that works below this facade, by design. It
        describes the model serving the catalogue now, whose vectors it copies."""
        embedder = self._embedder(self.spaces.current())
        return self.store if embedder is self.embedder else self.store.for_model(embedder.fields)

    def adaptation_store_for(self, collection: str) -> CatalogStore:
        """The store describing the model of ``collection`` (a model change's new collection)."""
        embedder = self.model_for(collection)
        return self.store if embedder is self.embedder else self.store.for_model(embedder.fields)

    @property
    def projection(self) -> dict | None:
        """The current projection's summary (id, when fitted, products, photos, gain), or None."""
        return self.spaces.current().summary()

    def optimize(self) -> None:
        """Build the store's search indexes now (blocks; bulk commands only, never serving)."""
        self.store.optimize()

    def store_info(self) -> dict[str, Any]:
        """The collection's points, named vectors and real bytes on disk."""
        return self.store.info()

    def search_image(self, data: bytes, query: Query, region: Region | None = None) -> SearchResult:
        """The products nearest to a photo (to ``region`` of it only, when given), embedded by
        the model of the collection it is compared with."""
        try:
            return self._search_image(self.spaces.current(), data, query, region)
        except CollectionMissing:  # a switch this process has not seen yet: look again
            return self._search_image(self.spaces.reload(), data, query, region)

    def _search_image(self, space: Space, data: bytes, query: Query, region: Region | None) -> SearchResult:
        started = time.perf_counter()
        extra = (region,) if region is not None else ()  # embedders without regions still work
        reranker, embedder = self.reranker, self._embedder(space)
        pixels = embedder.preprocess(data, *extra)
        second = reranker.preprocess(data, *extra) if reranker else None
        decoded = time.perf_counter()
        vector = embedder.embed_pixels(pixels[None])[0]
        if reranker is not None and second is not None:
            query = replace(query, rerank=reranker.embed_pixels(second[None])[0])
        embedded = time.perf_counter()
        hits, calibrated = self._search(space, vector, query)
        done = time.perf_counter()
        return SearchResult(
            hits,
            embedder.model_id,
            {
                "decode": _ms(decoded - started),
                "embed": _ms(embedded - decoded),
                "search": _ms(done - embedded),
                "total": _ms(done - started),
            },
            calibrated.no_match if calibrated else None,
        )

    @staticmethod
    def _search(space: Space, vector: np.ndarray, query: Query) -> tuple[list[Hit], Calibration | None]:
        """The query projected like the collection's vectors, compared with the same vector;
        each hit's confidence by the space's own calibration."""
        adapted = space.project(vector)
        target = vector if adapted is None else adapted
        if query.positive or query.negative:  # "more like this" / "not this"
            positive = examples.resolve(space.store, query.positive, space.using, "positive")
            negative = examples.resolve(space.store, query.negative, space.using, "negative")
            target = examples.steer(target, positive, negative)
            query = replace(
                query, exclude_products=[*query.exclude_products, *(e.product_id for e in negative)]
            )
        hits = space.store.search(target, replace(query, using=space.using))
        annotate(hits, space.calibration, query.offset, query.score_threshold)
        return hits, space.calibration

    def similar(self, product_id: str, query: Query) -> SearchResult:
        started = time.perf_counter()
        hits, model_id = self._read(
            lambda space: (
                space.store.similar(product_id, replace(query, using=space.using)),
                self._embedder(space).model_id,
            )
        )
        total = _ms(time.perf_counter() - started)
        return SearchResult(hits, model_id, {"decode": 0.0, "embed": 0.0, "search": total, "total": total})


@dataclass(frozen=True)
class Decoded:
    """An image decoded ahead of ``Catalog.index``, with the preprocessing it was made for."""

    preprocess: Preprocess
    pixels: np.ndarray


def _decoded_for(made: Any, embedder: Embedder) -> Any:
    """What ``index`` can use of an image decoded ahead: its error, or its pixels when they were
    made for this model's input; None (decode again) when another model served meanwhile."""
    if isinstance(made, Decoded):
        return made.pixels if made.preprocess == embedder.card.preprocess else None
    return made


def _short(projection_id: str | None) -> str:
    return projection_id[:12] if projection_id else "none"


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


@lru_cache(maxsize=1)
def get_catalog() -> Catalog:
    """The process-wide catalogue (one model session, one Qdrant client)."""
    catalog = Catalog.open()
    # Embedded Qdrant holds a folder lock and buffers writes: release both on exit.
    atexit.register(catalog.close)
    return catalog
