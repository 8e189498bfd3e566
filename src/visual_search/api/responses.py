"""Shaping answers: search hits -> the ``SearchResponse`` JSON, with a presigned GET URL per
result image from a small cache."""

from __future__ import annotations

import time
from typing import Any

from ..catalog import SearchResult
from ..config import ApiSettings
from ..domain import RECORD_FIELDS
from ..observability import MetricUnit, logger, metrics
from .models import MAX_OFFSET, SearchOptions, SearchResponse

URL_CACHE_SIZE = 10_000
URL_REUSE_MAX_S = 300
# Payload fields that are not the product's free-form metadata: the image's record, the product
# id (a field of its own in a result) and the nested metadata (flattened into the result's).
INTERNAL_PAYLOAD = RECORD_FIELDS | {"product_id", "metadata"}


class ImageUrls:
    """Presigned GET URLs for result images, each reused while it has over half its life left
    (signing costs ~0.3 ms a URL, a third of a warm search's overhead)."""

    def __init__(self, settings: ApiSettings):
        self.settings = settings
        self._urls: dict[tuple[str, str], tuple[str, float]] = {}

    def url(self, s3: Any, bucket: str, key: str) -> str | None:
        if not self.settings.result_image_urls or not bucket:
            return None
        now = time.monotonic()
        cached = self._urls.get((bucket, key))
        if cached and cached[1] > now:
            return cached[0]
        ttl = self.settings.image_url_ttl_s
        try:
            url = s3.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=ttl
            )
        except Exception as exc:  # no credentials to sign with: results without URLs
            logger.debug(f"no image URL: {exc}")
            return None
        if len(self._urls) >= URL_CACHE_SIZE:
            self._urls.clear()
        # Reused for at most 5 minutes: the URL is also bound to the function's temporary
        # credentials, which Lambda renews.
        self._urls[(bucket, key)] = (url, now + min(ttl / 2, URL_REUSE_MAX_S))
        return url


def result_metadata(payload: dict[str, Any]) -> dict[str, Any]:
    """The product's own fields and its free-form S3 metadata, flattened into one object."""
    metadata = {k: v for k, v in payload.items() if k not in INTERNAL_PAYLOAD}
    metadata.update(payload.get("metadata") or {})
    return metadata


def _no_match(result: SearchResult, options: SearchOptions) -> dict[str, Any]:
    """Whether the first product is too unsure to be called a match (first page only: a later
    page's first product is not the answer's)."""
    threshold = options.min_confidence
    if threshold is None:
        threshold = result.no_match_threshold
    if threshold is None or options.offset > 0 or (result.hits and result.hits[0].confidence is None):
        return {"no_match": False, "no_match_threshold": threshold}
    best = result.hits[0].confidence if result.hits else None
    return {"no_match": best is None or best < threshold, "no_match_threshold": threshold}


def search_response(
    result: SearchResult, options: SearchOptions, urls: ImageUrls, s3: Any, search_id: str | None = None
) -> dict:
    results = []
    for hit in result.hits[: options.top_k]:  # the store was asked for one more
        payload = hit.payload
        bucket, key = str(payload.get("bucket", "")), str(payload.get("key", ""))
        results.append(
            {
                "product_id": str(payload.get("product_id", "")),
                "score": round(min(1.0, max(-1.0, hit.score)), 6),
                "confidence": hit.confidence,
                "image": {"bucket": bucket, "key": key, "url": urls.url(s3, bucket, key)},
                "metadata": result_metadata(payload),
            }
        )
    following = options.offset + options.top_k
    more = len(result.hits) > options.top_k and following <= MAX_OFFSET  # else a 422 to follow
    body = SearchResponse.model_validate(
        {
            "results": results,
            "model": result.model_id,
            "timings_ms": result.timings_ms,
            "offset": options.offset,
            "next_offset": following if more else None,
            **_no_match(result, options),
            "search_id": search_id,
        }
    )
    metrics.add_metric(name="SearchLatency", unit=MetricUnit.Milliseconds, value=result.timings_ms["total"])
    return body.model_dump()
