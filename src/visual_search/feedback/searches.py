"""Searches kept for a shopper's click: the query photo and the products the answer showed.

Layout under ``QUERY_PHOTO_PREFIX`` (never indexed; a lifecycle rule deletes it):
``<search_id>/photo.<ext>``, ``<search_id>/search.json`` (when, which products, the photo's key)
and, once a shopper has picked a product, ``<search_id>/feedback.json`` (written only if absent:
S3's conditional put makes "one click per search" hold across concurrent requests).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..aws import error_status, is_missing
from ..config import FeedbackSettings
from ..errors import FeedbackGivenError, SearchExpiredError, StoreUnavailableError, UnknownSearchError
from ..observability import logger

SEARCH_ID = re.compile(r"[0-9a-f]{32}")
# Image formats by their first bytes: the kept photo keeps its type, so the ingest function
# reads it as the image it is once it becomes a shopper view.
SIGNATURES = (
    (b"\xff\xd8\xff", "jpg", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png", "image/png"),
    (b"GIF8", "gif", "image/gif"),
    (b"BM", "bmp", "image/bmp"),
    (b"II*\x00", "tif", "image/tiff"),
    (b"MM\x00*", "tif", "image/tiff"),
)


def image_type(data: bytes) -> tuple[str, str]:
    """(extension, content type) of an image by its signature."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp", "image/webp"
    for magic, ext, content_type in SIGNATURES:
        if data.startswith(magic):
            return ext, content_type
    return "jpg", "image/jpeg"  # decoded already by the search: one of the above in practice


@dataclass(frozen=True)
class SearchRecord:
    search_id: str
    created: datetime
    shown: tuple[str, ...]
    photo_key: str
    content_type: str


@dataclass
class PendingSearch:
    """A search whose photo is being stored while the search runs."""

    search_id: str
    photo_key: str
    content_type: str
    upload: Future


class SearchLog:
    """Kept searches in one bucket (see the module docstring)."""

    def __init__(self, s3: Any, bucket: str, settings: FeedbackSettings):
        self.s3 = s3
        self.bucket = bucket
        self.settings = settings
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="keep-search")

    def key(self, search_id: str, name: str) -> str:
        return f"{self.settings.photo_prefix}{search_id}/{name}"

    # -- at search time -------------------------------------------------------------------------

    def begin(self, photo: bytes) -> PendingSearch:
        """Start storing the query photo (in a thread: it overlaps the search)."""
        search_id = uuid.uuid4().hex
        ext, content_type = image_type(photo)
        key = self.key(search_id, f"photo.{ext}")
        upload = self.pool.submit(
            self.s3.put_object, Bucket=self.bucket, Key=key, Body=photo, ContentType=content_type
        )
        return PendingSearch(search_id, key, content_type, upload)

    def finish(self, pending: PendingSearch, shown: Sequence[str]) -> str | None:
        """Record which products the answer shows; the search id, or None when the search could
        not be kept (the answer goes out all the same: learning never fails a search)."""
        record = {
            "search_id": pending.search_id,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "shown": list(dict.fromkeys(shown)),
            "photo": pending.photo_key,
            "content_type": pending.content_type,
        }
        try:
            pending.upload.result()
            self.s3.put_object(
                Bucket=self.bucket,
                Key=self.key(pending.search_id, "search.json"),
                Body=json.dumps(record).encode(),
                ContentType="application/json",
            )
        except Exception as exc:
            logger.warning("search not kept for feedback", extra={"error": str(exc)})
            return None
        return pending.search_id

    # -- at click time ----------------------------------------------------------------------------

    def get(self, search_id: str) -> SearchRecord:
        """The kept search; ``UnknownSearchError`` / ``SearchExpiredError`` otherwise."""
        if not SEARCH_ID.fullmatch(search_id):
            raise UnknownSearchError("search_id is not one this API gave (32 hexadecimal digits)")
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=self.key(search_id, "search.json"))["Body"]
            raw = json.loads(body.read())
        except Exception as exc:
            if is_missing(exc):
                raise UnknownSearchError(
                    f"no search {search_id} is kept: unknown, or expired and deleted "
                    f"(searches are kept {self.settings.ttl_h:g} h)"
                ) from None
            raise StoreUnavailableError(f"the search could not be read: {exc}") from exc
        record = SearchRecord(
            search_id,
            datetime.fromisoformat(raw["created"]),
            tuple(str(p) for p in raw.get("shown", [])),
            str(raw["photo"]),
            str(raw.get("content_type") or "image/jpeg"),
        )
        if datetime.now(UTC) - record.created > timedelta(hours=self.settings.ttl_h):
            raise SearchExpiredError(
                f"search {search_id} is older than {self.settings.ttl_h:g} h: feedback is no longer taken"
            )
        return record

    def photo(self, record: SearchRecord) -> bytes:
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=record.photo_key)["Body"].read()
        except Exception as exc:
            if is_missing(exc):
                raise SearchExpiredError(
                    f"the photo of search {record.search_id} is gone (expired)"
                ) from None
            raise StoreUnavailableError(f"the search's photo could not be read: {exc}") from exc

    def claim(self, search_id: str, product_id: str) -> None:
        """Record the click, only if none was: ``FeedbackGivenError`` when one was (for another
        product, or for this one and already made a view: see ``release``)."""
        key = self.key(search_id, "feedback.json")
        body = json.dumps({"product_id": product_id, "at": datetime.now(UTC).isoformat(timespec="seconds")})
        try:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=body.encode(), IfNoneMatch="*")
        except Exception as exc:
            if error_status(exc) in (409, 412):  # PreconditionFailed / ConditionalRequestConflict
                raise FeedbackGivenError(f"feedback was already given for search {search_id}") from None
            raise StoreUnavailableError(f"the feedback could not be recorded: {exc}") from exc

    def release(self, search_id: str) -> None:
        """Undo a claim whose view could not be written, so the shopper's retry is taken."""
        try:
            self.s3.delete_object(Bucket=self.bucket, Key=self.key(search_id, "feedback.json"))
        except Exception as exc:  # the claim stays: the click is refused as given, not lost silently
            logger.warning("feedback claim not released", extra={"search_id": search_id, "error": str(exc)})
