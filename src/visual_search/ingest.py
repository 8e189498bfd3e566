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

from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Sequence

from .catalog import Catalog, ImageSource, NON_IMAGE_EXTENSIONS, is_image_key
from .config import ImageLimits, IngestSettings
from .errors import ImageError, StoreUnavailableError
from .events import S3Change, is_newer

OK_STATUSES = ("indexed", "deleted", "skipped", "stale", "superseded")
SETTLE_ROUNDS = 2  # times a key is applied again when its object changed while being indexed
MISSING_CODES = ("NoSuchKey", "404", "NotFound", "NoSuchBucket")


@dataclass
class Outcome:
    change: S3Change
    status: str  # indexed | deleted | skipped | stale | superseded | failed | retry
    reason: str = ""

    @property
    def transient(self) -> bool:
        return self.status == "retry"


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


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class Ingestor:
    def __init__(self, catalog: Catalog, s3_client: Any, settings: IngestSettings, limits: ImageLimits):
        self.catalog = catalog
        self.s3 = s3_client
        self.settings = settings
        self.limits = limits
        self.pool = ThreadPoolExecutor(
            max_workers=max(1, settings.download_workers), thread_name_prefix="s3-fetch"
        )
        self.timings: dict[str, float] = {}

    @classmethod
    def configured(cls, catalog: Catalog, s3_client: Any) -> "Ingestor":
        """With the environment's ingest settings and the catalogue embedder's image limits."""
        from .config import get_settings

        return cls(catalog, s3_client, get_settings().ingest, catalog.embedder.limits)

    # -- filtering ---------------------------------------------------------------------------

    def skip_reason(self, key: str) -> str | None:
        """Why a key is not for the catalogue, or None when it may be an image."""
        if self.settings.prefix and not key.startswith(self.settings.prefix):
            return f"outside the prefix {self.settings.prefix!r}"
        if self.settings.upload_prefix and key.startswith(self.settings.upload_prefix):
            return f"a query upload (under {self.settings.upload_prefix!r})"
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
            if _error_code(exc) in MISSING_CODES:
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
                got.pixels = self.catalog.embedder.preprocess(got.data)
            except ImageError as exc:
                got.pixels = exc
        return got

    # -- applying changes ----------------------------------------------------------------------

    def apply(self, changes: Sequence[S3Change]) -> list[Outcome]:
        """Apply a batch of changes; the outcomes come back in the same order."""
        outcomes: list[Outcome | None] = [None] * len(changes)
        latest: dict[tuple[str, str], int] = {}
        for i, change in enumerate(changes):
            reason = self.skip_reason(change.key)
            if reason:
                outcomes[i] = Outcome(change, "skipped", reason)
                continue
            j = latest.get(change.ref)
            if j is None or is_newer(change.sequencer, changes[j].sequencer):
                if j is not None:
                    outcomes[j] = Outcome(changes[j], "superseded", "a newer change of the key")
                latest[change.ref] = i
            else:
                outcomes[i] = Outcome(change, "superseded", "a newer change of the key")
        self.timings.clear()
        pending = [i for i in latest.values()]
        if pending:
            self._apply_latest(changes, pending, outcomes)
        return [o for o in outcomes if o is not None]

    def _apply_latest(
        self, changes: Sequence[S3Change], pending: list[int], outcomes: list[Outcome | None], round_: int = 0
    ) -> None:
        """Download, embed and write the latest change of each key, as a pipeline.

        Images are embedded in chunks as soon as a chunk's worth has been downloaded and
        decoded, so S3 latency overlaps inference; the after-write checks of one chunk run while
        the next chunk is embedded.
        """
        if round_ == 0:
            fresh = self._not_stale(changes, pending, outcomes)
        elif round_ > SETTLE_ROUNDS:
            for i in pending:
                outcomes[i] = Outcome(changes[i], "retry", "the object kept changing meanwhile")
            return
        else:
            fresh = pending
        downloads = {self.pool.submit(self.fetch_and_decode, *changes[i].ref): i for i in fresh}
        ready: list[tuple[int, ImageSource]] = []
        to_delete: list[int] = []
        checks: list[tuple[int, ImageSource, Future]] = []
        for done in as_completed(downloads):
            i = downloads[done]
            source = self._sort(changes[i], done.result(), i, outcomes, to_delete)
            if source is not None:
                ready.append((i, source))
            if len(ready) >= self.settings.embed_chunk:
                checks += self._index_then_check(changes, ready, outcomes)
                ready = []
        checks += self._index_then_check(changes, ready, outcomes)
        self._delete(changes, to_delete, outcomes)
        self._drop_unindexable(changes, list(downloads.values()), outcomes)
        drifted = [i for i, source, check in checks if check.result() not in ("?", bare_etag(source.etag))]
        if drifted:
            self._apply_latest(changes, drifted, outcomes, round_ + 1)

    def _sort(
        self, change: S3Change, got: Fetched, i: int, outcomes: list[Outcome | None], to_delete: list[int]
    ) -> ImageSource | None:
        """What one download means: an image to index, a point to delete, or an outcome now."""
        if got.error:
            outcomes[i] = Outcome(change, "retry", got.error)
        elif not got.exists:
            to_delete.append(i)
        elif got.too_large:
            outcomes[i] = Outcome(change, "failed", got.too_large)
        elif not self.is_image(change.key, got):
            outcomes[i] = Outcome(change, "skipped", "not an image (by content type)")
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

    def _not_stale(self, changes, pending: list[int], outcomes) -> list[int]:
        """The changes newer than what is applied for their key (by the stored sequencer)."""
        try:
            applied = self.catalog.store.get_images([changes[i].ref for i in pending])
        except StoreUnavailableError as exc:
            for i in pending:
                outcomes[i] = Outcome(changes[i], "retry", str(exc))
            return []
        fresh = []
        for i in pending:
            stored = applied.get(changes[i].ref)
            if stored and not is_newer(changes[i].sequencer, stored.get("sequencer")):
                outcomes[i] = Outcome(changes[i], "stale", "an equal or newer change was applied")
            else:
                fresh.append(i)
        return fresh

    def _index_then_check(
        self, changes, chunk: list[tuple[int, ImageSource]], outcomes
    ) -> list[tuple[int, ImageSource, Future]]:
        """Index a chunk, then start looking at each written object again.

        The order check and the write are not atomic: two invocations handling two changes of
        one key at once can finish in the wrong order, the older image written last. Looking at
        the object again after writing closes that window: if its ETag is no longer the one we
        stored, the key is applied again from what the bucket holds now.
        """
        self._index(changes, chunk, outcomes)
        return [
            (i, source, self.pool.submit(self.current_etag, changes[i].ref))
            for i, source in chunk
            if outcomes[i] and outcomes[i].status == "indexed"
        ]

    def current_etag(self, ref: tuple[str, str]) -> str | None:
        """The object's ETag now; None when it is gone, "?" when S3 cannot tell."""
        try:
            return bare_etag(self.s3.head_object(Bucket=ref[0], Key=ref[1]).get("ETag"))
        except Exception as exc:
            return None if _error_code(exc) in MISSING_CODES else "?"

    def _index(self, changes, to_index, outcomes) -> None:
        if not to_index:
            return
        try:
            batch = self.catalog.index([source for _, source in to_index])
        except StoreUnavailableError as exc:
            for i, _ in to_index:
                outcomes[i] = Outcome(changes[i], "retry", str(exc))
            return
        for name, ms in (("embed_ms", batch.embed_ms), ("upsert_ms", batch.upsert_ms)):
            self.timings[name] = round(self.timings.get(name, 0.0) + ms, 3)
        for (i, _), result in zip(to_index, batch.results):
            outcomes[i] = (
                Outcome(changes[i], "indexed")
                if result.ok
                else Outcome(changes[i], "failed", str(result.error))
            )

    def _drop_unindexable(self, changes, applied: list[int], outcomes) -> None:
        """An object replaced by something that is not an indexable image (another content
        type, a corrupt or oversized file) loses the point its earlier version left."""
        self._remove(
            changes,
            [i for i in applied if outcomes[i] and outcomes[i].status in ("failed", "skipped")],
            outcomes,
        )

    def _delete(self, changes, to_delete, outcomes) -> None:
        if self._remove(changes, to_delete, outcomes):
            for i in to_delete:
                outcomes[i] = Outcome(changes[i], "deleted")

    def _remove(self, changes, indices: list[int], outcomes) -> bool:
        """Delete the points of these changes' keys; on a store outage they are to retry."""
        if not indices:
            return False
        try:
            self.catalog.remove([changes[i].ref for i in indices])
        except StoreUnavailableError as exc:
            for i in indices:
                outcomes[i] = Outcome(changes[i], "retry", str(exc))
            return False
        return True
