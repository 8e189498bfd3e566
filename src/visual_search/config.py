"""Settings, read once from the environment.

Every knob of the service is an environment variable with a documented default (see the
README's configuration table). ``get_settings()`` reads them on first use and caches the result,
so a Lambda container pays the parsing once; tests call ``get_settings.cache_clear()`` after
changing the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# A source checkout keeps the shipped model next to the Lambda layer that deploys it.
REPO_MODEL_DIR = PACKAGE_DIR.parent.parent / "layers" / "model" / "efficientnet-lite0"
# In Lambda the model layer is unpacked under /opt.
LAMBDA_MODEL_DIR = Path("/opt/efficientnet-lite0")
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


def _env_list(name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in os.environ.get(name, "").split(",") if item.strip())


def load_settings() -> Settings:
    """Build settings from the environment (no caching: see ``get_settings``)."""
    quantization = _env("QDRANT_QUANTIZATION", "int8").lower()
    if quantization not in ("int8", "none"):
        raise ValueError(f"QDRANT_QUANTIZATION must be int8 or none, got {quantization!r}")
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
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
