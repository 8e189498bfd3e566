"""Keeping the catalogue in step with the bucket: S3 changes in, points upserted or deleted.

The bucket is the truth. A change is applied by looking at the object as it is now: a create
whose object is gone deletes the point, a delete whose object exists again re-indexes it. With
the event's ``sequencer`` kept in each point's payload, an event older than the one already
applied for that key is ignored, and within a batch only the newest change of a key counts. So
duplicate, late and reordered deliveries all end in the same catalogue.

Each change ends in one outcome. ``retry`` outcomes (S3 throttling, Qdrant unreachable) are
transient: the caller reports them to SQS as batch item failures, or raises for a direct S3
event, so they are retried and finally parked in a dead-letter queue; nothing is lost.
``failed`` outcomes (a corrupt or oversized image) are permanent: logged and counted, never
retried.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any

from ..aws import is_missing
from ..catalog import NON_IMAGE_EXTENSIONS, Catalog, ImageSource, is_image_key
from ..config import FeedbackSettings, ImageLimits, IngestSettings
from ..domain import SHOPPER
from ..errors import ImageError, StoreUnavailableError
from ..feedback.views import ShopperViews
from ..observability import logger
from .events import S3Change, is_newer

SETTLE_ROUNDS = 2  # times a key is applied again when its object changed while being indexed


class Status(StrEnum):
    """How one change ended. A ``StrEnum``: each compares equal to its name as a string."""

    INDEXED = "indexed"
    DELETED = "deleted"
    SKIPPED = "skipped"  # not for the catalogue (prefix, suffix, not an image)
    STALE = "stale"  # an equal or newer change of the key was applied before
    SUPERSEDED = "superseded"  # a newer change of the key is in the same batch
    FAILED = "failed"  # permanent: the image cannot be indexed
    RETRY = "retry"  # transient: S3 or Qdrant failed; retried by the caller


OK_STATUSES = (Status.INDEXED, Status.DELETED, Status.SKIPPED, Status.STALE, Status.SUPERSEDED)


@dataclass
class Outcome:
    change: S3Change
    status: Status
    reason: str = ""

    @property
    def transient(self) -> bool:
        return self.status == Status.RETRY


@dataclass(eq=False)
class Item:
    """One change of a batch and, once it is known, its outcome (the last one set counts)."""

    change: S3Change
    outcome: Outcome | None = None

    def settle(self, status: Status, reason: str = "") -> None:
        self.outcome = Outcome(self.change, status, reason)

    @property
    def status(self) -> Status | None:
        return self.outcome.status if self.outcome else None


@dataclass
class IngestBatch:
    """The changes of one ``apply``, their outcomes, and the time spent embedding and writing."""

    items: list[Item]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def outcomes(self) -> list[Outcome]:
        """The outcome of each change, in the order of the changes."""
        return [item.outcome for item in self.items if item.outcome is not None]

    def add_time(self, name: str, ms: float) -> None:
        self.timings[name] = round(self.timings.get(name, 0.0) + ms, 3)


@dataclass
class Fetched:
    """What the bucket holds for a key right now."""

    exists: bool
    data: bytes = b""
    head: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # transient S3 failure
    too_large: str | None = None  # permanent: the object is over the byte limit
    pixels: Any = None  # decoded model input (or its ImageError), made in the download thread


def bare_etag(etag: str | None) -> str:
    return (etag or "").strip('"')


class Ingestor:
    def __init__(
        self,
        catalog: Catalog,
        s3_client: Any,
        settings: IngestSettings,
        limits: ImageLimits,
        feedback: FeedbackSettings | None = None,
    ):
        self.catalog = catalog
        self.s3 = s3_client
        self.settings = settings
        self.limits = limits
        self.feedback = feedback or FeedbackSettings()
        self.pool = ThreadPoolExecutor(
            max_workers=max(1, settings.download_workers), thread_name_prefix="s3-fetch"
        )

    @classmethod
    def configured(cls, catalog: Catalog, s3_client: Any) -> Ingestor:
        """With the environment's ingest settings and the catalogue embedder's image limits."""
        from ..config import get_settings

        settings = get_settings()
        return cls(catalog, s3_client, settings.ingest, catalog.image_limits, settings.feedback)

    # -- filtering ---------------------------------------------------------------------------

    def skip_reason(self, key: str) -> str | None:
        """Why a key is not for the catalogue, or None when it may be an image."""
        if self.settings.prefix and not key.startswith(self.settings.prefix):
            return f"outside the prefix {self.settings.prefix!r}"
        if self.settings.upload_prefix and key.startswith(self.settings.upload_prefix):
            return f"a query upload (under {self.settings.upload_prefix!r})"
        if self.feedback.photo_prefix and key.startswith(self.feedback.photo_prefix):
            return f"a kept search (under {self.feedback.photo_prefix!r})"
        if self.settings.suffixes and not key.lower().endswith(self.settings.suffixes):
            return "outside the suffix filter"
        if key.endswith("/"):
            return "a folder marker"
        if PurePosixPath(key).suffix.lower() in NON_IMAGE_EXTENSIONS:
            return "not an image (by extension)"
        return None  # an image extension, or another or none: the content type decides

    # -- S3 ----------------------------------------------------------------------------------

    def fetch(self, bucket: str, key: str) -> Fetched:
        try:
            response = self.s3.get_object(Bucket=bucket, Key=key)
        except Exception as exc:  # botocore ClientError, connection errors, throttling
            if is_missing(exc):
                return Fetched(exists=False)
            return Fetched(exists=True, error=f"S3 GetObject failed: {exc}")
        head = {
            "content_type": response.get("ContentType"),
            "etag": response.get("ETag"),
            "version_id": response.get("VersionId"),
            "metadata": response.get("Metadata") or {},
            "size": response.get("ContentLength"),
        }
        body = response["Body"]
        try:
            if (head["size"] or 0) > self.limits.max_bytes:
                return Fetched(
                    exists=True,
                    head=head,
                    too_large=(
                        f"the object is {head['size']:,} bytes; the limit is {self.limits.max_bytes:,}"
                    ),
                )
            data = body.read()
        except Exception as exc:
            return Fetched(exists=True, error=f"S3 read failed: {exc}")
        finally:
            body.close()
        return Fetched(exists=True, data=data, head=head)

    def is_image(self, key: str, got: Fetched) -> bool:
        return is_image_key(key, got.head.get("content_type"))

    def fetch_and_decode(self, bucket: str, key: str) -> Fetched:
        """Download, then decode in the same worker thread, so decoding one image overlaps the
        downloads of the others (S3 latency is the larger cost in AWS)."""
        got = self.fetch(bucket, key)
        if got.data and self.is_image(key, got):
            try:
                got.pixels = self.catalog.decode(got.data)
            except ImageError as exc:
                got.pixels = exc
        return got

    def current_etag(self, ref: tuple[str, str]) -> str | None:
        """The object's ETag now; None when it is gone, "?" when S3 cannot tell."""
        try:
            return bare_etag(self.s3.head_object(Bucket=ref[0], Key=ref[1]).get("ETag"))
        except Exception as exc:
            return None if is_missing(exc) else "?"

    # -- applying changes ----------------------------------------------------------------------

    def apply(self, changes: Sequence[S3Change]) -> list[Outcome]:
        """Apply a batch of changes; the outcomes come back in the same order."""
        return self.apply_batch(changes).outcomes

    def apply_batch(self, changes: Sequence[S3Change]) -> IngestBatch:
        """``apply``, returning the whole batch (outcomes and timings)."""
        batch = IngestBatch([Item(change) for change in changes])
        latest = self._latest_per_key(batch.items)
        if latest:
            self._apply_latest(batch, latest)
        return batch

    def _latest_per_key(self, items: list[Item]) -> list[Item]:
        """Settle the changes to skip and those a newer change of their key supersedes; the
        others, one per key, are left to apply."""
        latest: dict[tuple[str, str], Item] = {}
        for item in items:
            reason = self.skip_reason(item.change.key)
            if reason:
                item.settle(Status.SKIPPED, reason)
                continue
            seen = latest.get(item.change.ref)
            if seen is None or is_newer(item.change.sequencer, seen.change.sequencer):
                if seen is not None:
                    seen.settle(Status.SUPERSEDED, "a newer change of the key")
                latest[item.change.ref] = item
            else:
                item.settle(Status.SUPERSEDED, "a newer change of the key")
        return list(latest.values())

    def _apply_latest(self, batch: IngestBatch, pending: list[Item], round_: int = 0) -> None:
        """Download, embed and write the latest change of each key, as a pipeline.

        Images are embedded in chunks as soon as a chunk's worth has been downloaded and
        decoded, so S3 latency overlaps inference; the after-write checks of one chunk run while
        the next chunk is embedded.
        """
        if round_ == 0:
            fresh = self._not_stale(pending)
        elif round_ > SETTLE_ROUNDS:
            for item in pending:
                item.settle(Status.RETRY, "the object kept changing meanwhile")
            return
        else:
            fresh = pending
        downloads = {self.pool.submit(self.fetch_and_decode, *item.change.ref): item for item in fresh}
        ready: list[tuple[Item, ImageSource]] = []
        to_delete: list[Item] = []
        checks: list[tuple[Item, ImageSource, Future]] = []
        for done in as_completed(downloads):
            item, got = downloads[done], done.result()
            if not got.exists:
                to_delete.append(item)
                continue
            source = self._source(item, got)
            if source is not None:
                ready.append((item, source))
            if len(ready) >= self.settings.embed_chunk:
                checks += self._index_then_check(batch, ready)
                ready = []
        checks += self._index_then_check(batch, ready)
        self._delete(to_delete)
        self._drop_unindexable(list(downloads.values()))
        drifted = [
            item for item, source, check in checks if check.result() not in ("?", bare_etag(source.etag))
        ]
        if drifted:
            self._apply_latest(batch, drifted, round_ + 1)

    def _source(self, item: Item, got: Fetched) -> ImageSource | None:
        """The image an existing object gives to index, or None with the item settled."""
        change = item.change
        if got.error:
            item.settle(Status.RETRY, got.error)
        elif got.too_large:
            item.settle(Status.FAILED, got.too_large)
        elif not self.is_image(change.key, got):
            item.settle(Status.SKIPPED, "not an image (by content type)")
        else:
            return ImageSource(
                change.bucket,
                change.key,
                got.data,
                got.head["metadata"],
                content_type=got.head["content_type"],
                etag=got.head["etag"],
                version_id=got.head["version_id"],
                sequencer=change.sequencer,
                pixels=got.pixels,
            )
        return None

    def _not_stale(self, pending: list[Item]) -> list[Item]:
        """The changes newer than what is applied for their key (by the stored sequencer)."""
        try:
            applied = self.catalog.stored([item.change.ref for item in pending])
        except StoreUnavailableError as exc:
            for item in pending:
                item.settle(Status.RETRY, str(exc))
            return []
        fresh = []
        for item in pending:
            stored = applied.get(item.change.ref)
            if stored and not is_newer(item.change.sequencer, stored.get("sequencer")):
                item.settle(Status.STALE, "an equal or newer change was applied")
            else:
                fresh.append(item)
        return fresh

    def _index_then_check(
        self, batch: IngestBatch, chunk: list[tuple[Item, ImageSource]]
    ) -> list[tuple[Item, ImageSource, Future]]:
        """Index a chunk, then start looking at each written object again.

        The order check and the write are not atomic: two invocations handling two changes of
        one key at once can finish in the wrong order, the older image written last. Looking at
        the object again after writing closes that window: if its ETag is no longer the one we
        stored, the key is applied again from what the bucket holds now.
        """
        self._index(batch, chunk)
        return [
            (item, source, self.pool.submit(self.current_etag, item.change.ref))
            for item, source in chunk
            if item.status == Status.INDEXED
        ]

    def _index(self, batch: IngestBatch, chunk: list[tuple[Item, ImageSource]]) -> None:
        if not chunk:
            return
        try:
            indexed = self.catalog.index([source for _, source in chunk])
        except StoreUnavailableError as exc:
            for item, _ in chunk:
                item.settle(Status.RETRY, str(exc))
            return
        batch.add_time("embed_ms", indexed.embed_ms)
        batch.add_time("upsert_ms", indexed.upsert_ms)
        for (item, _), result in zip(chunk, indexed.results, strict=True):
            if result.ok:
                item.settle(Status.INDEXED)
            else:
                item.settle(Status.FAILED, str(result.error))

    def _drop_unindexable(self, applied: list[Item]) -> None:
        """An object replaced by something that is not an indexable image (another content
        type, a corrupt or oversized file) loses the point its earlier version left."""
        self._remove([item for item in applied if item.status in (Status.FAILED, Status.SKIPPED)])

    def _delete(self, items: list[Item]) -> None:
        try:
            gone = self.catalog.stored([item.change.ref for item in items]) if items else {}
        except StoreUnavailableError as exc:
            for item in items:
                item.settle(Status.RETRY, str(exc))
            return
        if self._remove(items):
            for item in items:
                item.settle(Status.DELETED)
            self._drop_orphan_views(gone.values())

    def _drop_orphan_views(self, removed: Any) -> None:
        """A product whose last catalogue photo went loses its shopper views too (their objects
        are deleted; their own delete events then remove their points)."""
        products = {
            (str(p.get("bucket")), str(p.get("product_id"))) for p in removed if p.get("source") != SHOPPER
        }
        for bucket, product in products:
            try:
                if self.catalog.catalogue_photos(product) == 0:
                    dropped = ShopperViews(self.s3, bucket, self.feedback).purge(product)
                    if dropped:
                        logger.info(
                            "shopper views dropped with their product",
                            extra={"product_id": product, "views": len(dropped)},
                        )
            except Exception as exc:  # `visual-search shopper-views purge --product P` removes them
                logger.warning(
                    "shopper views of a removed product not dropped",
                    extra={"product_id": product, "error": str(exc)},
                )

    def _remove(self, items: list[Item]) -> bool:
        """Delete the points of these changes' keys; on a store outage they are to retry."""
        if not items:
            return False
        try:
            self.catalog.remove([item.change.ref for item in items])
        except StoreUnavailableError as exc:
            for item in items:
                item.settle(Status.RETRY, str(exc))
            return False
        return True
