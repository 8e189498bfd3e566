"""Settings, read once from the environment.

Every knob of the service is an environment variable with a documented default (see
docs/configuration.md). ``get_settings()`` reads them on first use and caches the result,
so a Lambda container pays the parsing once; tests call ``get_settings.cache_clear()`` after
changing the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# A source checkout keeps the shipped models next to the Lambda layer that deploys them. The
# default is a weight-space blend of the ImageNet model and its grocery fine-tune, statically
# quantised to int8: better on product photos, as good elsewhere (docs/quality.md).
DEFAULT_MODEL_FOLDER = "efficientnet-lite0-384-grocery-wise30-int8"
REPO_MODELS = PACKAGE_DIR.parent.parent / "layers" / "model"
REPO_MODEL_DIR = REPO_MODELS / DEFAULT_MODEL_FOLDER
# In Lambda the model layer is unpacked under /opt.
LAMBDA_MODEL_DIR = Path("/opt") / DEFAULT_MODEL_FOLDER
DEFAULT_QDRANT_PATH = ".data/qdrant"


def _default_model_dir() -> Path:
    return REPO_MODEL_DIR if REPO_MODEL_DIR.is_dir() else LAMBDA_MODEL_DIR


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value if value else default


def _env_int(name: str, default: int) -> int:
    raw = _env(name, str(default))
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def _env_float(name: str, default: float) -> float:
    raw = _env(name, str(default))
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be a number, got {raw!r}") from None


def _env_bool(name: str, default: bool) -> bool:
    raw = _env(name, "true" if default else "false").lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"environment variable {name} must be true or false, got {raw!r}")


def available_cpus() -> int:
    """CPUs this process may run on (Lambda gives vCPUs in proportion to memory)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000


@dataclass(frozen=True)
class StoreSettings:
    url: str | None = None
    api_key: str | None = None
    # In AWS the key is never a plain environment value: it is read (and cached) from an SSM
    # SecureString parameter or a Secrets Manager secret named here.
    api_key_parameter: str | None = None
    api_key_secret: str | None = None
    path: str = DEFAULT_QDRANT_PATH
    collection: str = "products"
    timeout_s: float = 10.0
    hnsw_m: int = 16
    hnsw_ef_construct: int = 128
    search_hnsw_ef: int = 128
    # A filtered graph search walks only the links between matching points and loses recall as
    # the matches thin out (filter passing 3% of the points, filtered one-per-product recall@10:
    # at 100k 0.97 at ef 128, 1.0 at 512 and 1024, same few ms; at 1M 0.62 at 128, 0.93 at 512,
    # 0.97 at 768, 0.99 at 1024 for ~1.3x the time of 512); unfiltered searches keep the cheaper ef.
    filtered_hnsw_ef: int = 1024
    # ACORN: a filtered graph walk that also steps through neighbours of neighbours, so it does
    # not strand where an AND of filters (category and price range) leaves few matching links;
    # Qdrant uses it only for filters estimated to match at most ``acorn_max_selectivity`` of
    # the points. Off: at 1M it reached recall 0.999 at ef 256 but took 6x as long as ef 1024.
    filtered_acorn: bool = False
    acorn_max_selectivity: float = 0.4
    quantization: str = "int8"
    quantization_rescore: bool = True
    quantization_oversampling: float = 2.0
    vectors_on_disk: bool = True
    shards: int = 1
    replicas: int = 1
    rerank_candidates: int = 64

    @property
    def mode(self) -> str:
        if self.url:
            return "server"
        return "memory" if self.path == ":memory:" else "embedded"


@dataclass(frozen=True)
class IngestSettings:
    prefix: str = ""
    suffixes: tuple[str, ...] = ()
    download_workers: int = 8
    embed_chunk: int = 8  # images embedded together as soon as they are downloaded
    upload_prefix: str = "query-uploads/"  # query images uploaded for search: never indexed


@dataclass(frozen=True)
class ApiSettings:
    bucket: str | None = None
    upload_bucket: str | None = None
    upload_prefix: str = "query-uploads/"
    upload_url_ttl_s: int = 300
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 6 * 1024 * 1024
    result_image_urls: bool = True
    image_url_ttl_s: int = 3600


@dataclass(frozen=True)
class FeedbackSettings:
    """Learning from shoppers' clicks (visual_search.feedback)."""

    learn: bool = True  # LEARN_FROM_CLICKS: keep searches, take POST /feedback
    ttl_h: float = 24.0  # QUERY_PHOTO_TTL_H: how long a search's photo is kept for a click
    photo_prefix: str = "query-photos/"  # QUERY_PHOTO_PREFIX: kept searches (never indexed)
    views_prefix: str = "shopper-views/"  # SHOPPER_VIEWS_PREFIX: clicked photos (indexed)
    max_views: int = 50  # MAX_SHOPPER_VIEWS_PER_PRODUCT: the oldest are dropped past it


@dataclass(frozen=True)
class AdaptSettings:
    """Catalogue adaptation (learned whitening, see adaptation.py)."""

    auto: bool = True  # ADAPT: refit on schedule (maintenance function) and in the local stack
    check_s: float = 30.0  # PROJECTION_CHECK_S: how often a warm function re-reads the projection id
    change_threshold: float = 0.1  # ADAPT_CHANGE_THRESHOLD: share of the catalogue changed before a refit
    min_products: int = 4  # ADAPT_MIN_PRODUCTS: products with 2+ photos needed to fit at all
    min_photos: int = 16  # ADAPT_MIN_PHOTOS: photos in those products needed to fit at all
    sample: int = 20_000  # ADAPT_SAMPLE: photos the fit reads at most (stratified by product)
    batch: int = 256  # ADAPT_BATCH: points read and rewritten per request
    grace_s: float | None = None  # ADAPT_GRACE_S: old collection kept after the switch (None: auto)
    settle_s: float = 30.0  # ADAPT_SETTLE_S: local stack waits this long without changes
    dims: tuple[int | None, ...] = (None, 512, 256)  # ADAPT_DIMS: candidate sizes (None: all)


@dataclass(frozen=True)
class ModelSettings:
    """The model registry (visual_search.registry): where published models live, and the
    local cache the functions load them from."""

    bucket: str | None = None  # MODELS_BUCKET: none, no registry (collections of other models refused)
    prefix: str = "models/"  # MODELS_PREFIX
    cache_dir: Path = Path("/tmp/models")  # MODEL_CACHE_DIR
    keep: int = 2  # MODEL_CACHE_SIZE: registry models kept loaded in a process


@dataclass(frozen=True)
class Settings:
    model_dir: Path
    ort_threads: int
    max_batch: int
    flip_tta: bool = False
    rerank_model_dir: Path | None = None
    images: ImageLimits = field(default_factory=ImageLimits)
    store: StoreSettings = field(default_factory=StoreSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    adapt: AdaptSettings = field(default_factory=AdaptSettings)
    feedback: FeedbackSettings = field(default_factory=FeedbackSettings)
    models: ModelSettings = field(default_factory=ModelSettings)


def _env_list(name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in os.environ.get(name, "").split(",") if item.strip())


def _adapt_dims(raw: str) -> tuple[int | None, ...]:
    out: list[int | None] = []
    for item in (i.strip().lower() for i in raw.split(",") if i.strip()):
        if item == "full":
            out.append(None)
        elif item.isdigit() and int(item) > 0:
            out.append(int(item))
        else:
            raise ValueError(f"ADAPT_DIMS must list sizes or 'full' (e.g. full,512,256), got {raw!r}")
    return tuple(out) or (None,)


def load_settings() -> Settings:
    """Build settings from the environment (no caching: see ``get_settings``)."""
    quantization = _env("QDRANT_QUANTIZATION", "int8").lower()
    if quantization not in ("int8", "none"):
        raise ValueError(f"QDRANT_QUANTIZATION must be int8 or none, got {quantization!r}")
    acorn_max_selectivity = _env_float("QDRANT_ACORN_MAX_SELECTIVITY", 0.4)
    if not 0.0 <= acorn_max_selectivity <= 1.0:
        raise ValueError(f"QDRANT_ACORN_MAX_SELECTIVITY must be from 0 to 1, got {acorn_max_selectivity}")
    store = StoreSettings(
        url=os.environ.get("QDRANT_URL") or None,
        api_key=os.environ.get("QDRANT_API_KEY") or None,
        api_key_parameter=os.environ.get("QDRANT_API_KEY_PARAMETER") or None,
        api_key_secret=os.environ.get("QDRANT_API_KEY_SECRET") or None,
        path=_env("QDRANT_PATH", DEFAULT_QDRANT_PATH),
        collection=_env("COLLECTION", "products"),
        timeout_s=_env_float("QDRANT_TIMEOUT", 10.0),
        hnsw_m=_env_int("QDRANT_HNSW_M", 16),
        hnsw_ef_construct=_env_int("QDRANT_HNSW_EF_CONSTRUCT", 128),
        search_hnsw_ef=_env_int("QDRANT_SEARCH_HNSW_EF", 128),
        filtered_hnsw_ef=_env_int("QDRANT_FILTERED_HNSW_EF", 1024),
        filtered_acorn=_env_bool("QDRANT_FILTERED_ACORN", False),
        acorn_max_selectivity=acorn_max_selectivity,
        quantization=quantization,
        quantization_rescore=_env_bool("QDRANT_QUANTIZATION_RESCORE", True),
        quantization_oversampling=_env_float("QDRANT_QUANTIZATION_OVERSAMPLING", 2.0),
        vectors_on_disk=_env_bool("QDRANT_VECTORS_ON_DISK", True),
        shards=_env_int("QDRANT_SHARDS", 1),
        replicas=_env_int("QDRANT_REPLICAS", 1),
        rerank_candidates=_env_int("RERANK_CANDIDATES", 64),
    )
    images = ImageLimits(
        max_bytes=_env_int("MAX_IMAGE_BYTES", ImageLimits.max_bytes),
        max_pixels=_env_int("MAX_IMAGE_PIXELS", ImageLimits.max_pixels),
    )
    ingest = IngestSettings(
        prefix=_env("INGEST_PREFIX", ""),
        suffixes=tuple(s.lower() for s in _env_list("INGEST_SUFFIXES")),
        download_workers=_env_int("INGEST_DOWNLOAD_WORKERS", 8),
        embed_chunk=max(1, _env_int("INGEST_EMBED_CHUNK", 8)),
        upload_prefix=_env("UPLOAD_PREFIX", "query-uploads/"),
    )
    feedback = FeedbackSettings(
        learn=_env_bool("LEARN_FROM_CLICKS", True),
        ttl_h=max(0.0, _env_float("QUERY_PHOTO_TTL_H", 24.0)),
        photo_prefix=_env("QUERY_PHOTO_PREFIX", "query-photos/"),
        views_prefix=_env("SHOPPER_VIEWS_PREFIX", "shopper-views/"),
        max_views=max(1, _env_int("MAX_SHOPPER_VIEWS_PER_PRODUCT", 50)),
    )
    api = ApiSettings(
        bucket=os.environ.get("BUCKET") or None,
        upload_bucket=os.environ.get("UPLOAD_BUCKET") or os.environ.get("BUCKET") or None,
        upload_prefix=_env("UPLOAD_PREFIX", "query-uploads/"),
        upload_url_ttl_s=_env_int("UPLOAD_URL_TTL", 300),
        cors_origins=_env_list("CORS_ORIGINS"),
        max_body_bytes=_env_int("MAX_BODY_BYTES", 6 * 1024 * 1024),
        result_image_urls=_env_bool("RESULT_IMAGE_URLS", True),
        image_url_ttl_s=_env_int("IMAGE_URL_TTL", 3600),
    )
    grace = os.environ.get("ADAPT_GRACE_S", "").strip()
    adapt = AdaptSettings(
        auto=_env_bool("ADAPT", True),
        check_s=max(0.0, _env_float("PROJECTION_CHECK_S", 30.0)),
        change_threshold=max(0.0, _env_float("ADAPT_CHANGE_THRESHOLD", 0.1)),
        min_products=max(2, _env_int("ADAPT_MIN_PRODUCTS", 4)),
        min_photos=max(4, _env_int("ADAPT_MIN_PHOTOS", 16)),
        sample=max(100, _env_int("ADAPT_SAMPLE", 20_000)),
        batch=max(1, _env_int("ADAPT_BATCH", 256)),
        grace_s=max(0.0, _env_float("ADAPT_GRACE_S", 0.0)) if grace else None,
        settle_s=max(0.0, _env_float("ADAPT_SETTLE_S", 30.0)),
        dims=_adapt_dims(_env("ADAPT_DIMS", "full,512,256")),
    )
    return Settings(
        model_dir=Path(_env("MODEL_DIR", str(_default_model_dir()))),
        ort_threads=_env_int("ORT_THREADS", available_cpus()),
        max_batch=_env_int("EMBED_BATCH_SIZE", 16),
        flip_tta=_env_bool("EMBED_FLIP_TTA", False),
        rerank_model_dir=Path(os.environ["RERANK_MODEL_DIR"]) if os.environ.get("RERANK_MODEL_DIR") else None,
        images=images,
        store=store,
        ingest=ingest,
        api=api,
        adapt=adapt,
        feedback=feedback,
        models=ModelSettings(
            bucket=os.environ.get("MODELS_BUCKET") or None,
            prefix=_env("MODELS_PREFIX", "models/"),
            cache_dir=Path(_env("MODEL_CACHE_DIR", "/tmp/models")),
            keep=max(1, _env_int("MODEL_CACHE_SIZE", 2)),
        ),
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
