"""Bulk work on the catalogue: backfill from S3, reconcile with the bucket, re-index.

All of it goes through the ingest function's code path (``Ingestor.apply``), so an image is
decoded, embedded and stored exactly as when its upload event arrives. Backfills are
resumable and idempotent: an object whose ETag matches its stored point is not fetched again.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import TYPE_CHECKING, Any, TypeVar

from ..catalog import Catalog, is_image_key
from ..ingest.events import S3Change
from ..ingest.pipeline import Ingestor, Outcome, bare_etag
from ..store import slug
from .previous import keep_as_previous

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Embedder

RETRIES = 3
T = TypeVar("T")


@dataclass
class SourceObject:
    bucket: str
    key: str
    etag: str
    size: int


@dataclass
class SyncReport:
    listed: int = 0
    unchanged: int = 0
    indexed: int = 0
    deleted: int = 0
    skipped: int = 0
    failed: int = 0
    retry: int = 0
    missing: int = 0
    changed: int = 0
    orphaned: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            status = outcome.status
            if status in ("indexed", "deleted", "skipped", "failed", "retry"):
                setattr(self, status, getattr(self, status) + 1)
            if status in ("failed", "retry"):
                self.problems.append(f"{outcome.change.key}: {outcome.reason}")

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "problems"}
        out["problems"] = self.problems[:50]
        return out


def md5_etag(data: bytes) -> str:
    """The ETag S3 gives a single-part upload, for files that never were in S3."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def parse_s3_url(url: str) -> tuple[str, str]:
    if not url.startswith("s3://") or len(url) <= 5:
        raise ValueError(f"expected s3://bucket/prefix, got {url!r}")
    bucket, _, prefix = url[5:].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {url!r}")
    return bucket, prefix


def list_objects(s3: Any, bucket: str, prefix: str = "") -> Iterator[SourceObject]:
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield SourceObject(bucket, obj["Key"], bare_etag(obj.get("ETag")), int(obj.get("Size", 0)))


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter), read lazily (a bucket listing)."""
    rest = iter(items)
    while chunk := list(islice(rest, size)):
        yield chunk


class Syncer:
    """Backfill / reconcile / re-index, for one ingestor (and so one collection)."""

    def __init__(
        self,
        ingestor: Ingestor,
        progress: Callable[[int], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.ingestor = ingestor
        self.progress = progress or (lambda n: None)
        self.sleep = sleep

    @property
    def catalog(self) -> Catalog:
        return self.ingestor.catalog

    def apply_with_retries(self, changes: list[S3Change]) -> list[Outcome]:
        """Apply; retry transient failures with backoff; return the final outcome of each."""
        final: dict[tuple[str, str], Outcome] = {}
        pending = changes
        for attempt in range(RETRIES + 1):
            outcomes = self.ingestor.apply(pending)
            for outcome in outcomes:
                final[outcome.change.ref] = outcome
            pending = [o.change for o in outcomes if o.transient]
            if not pending or attempt == RETRIES:
                break
            self.sleep(min(8.0, 0.5 * 2**attempt))
        return [final[c.ref] for c in changes if c.ref in final]

    def backfill(self, bucket: str, prefix: str = "", batch: int = 32) -> SyncReport:
        """Index every image under the prefix that is not already indexed with its ETag."""
        report = SyncReport()
        for chunk in chunks(list_objects(self.ingestor.s3, bucket, prefix), batch):
            report.listed += len(chunk)
            wanted = [o for o in chunk if not self.ingestor.skip_reason(o.key)]
            report.skipped += len(chunk) - len(wanted)
            stored = self.catalog.stored([(o.bucket, o.key) for o in wanted])
            todo = [o for o in wanted if bare_etag(stored.get((o.bucket, o.key), {}).get("etag")) != o.etag]
            report.unchanged += len(wanted) - len(todo)
            if todo:
                report.add(
                    self.apply_with_retries([S3Change(o.bucket, o.key, "created", "Backfill") for o in todo])
                )
            self.progress(len(chunk))
        return report

    def _images_among(self, bucket: str, keys: list[str], report: SyncReport) -> list[str]:
        """Drop the keys whose content type says they are not images (named without an image
        extension: README, IMG_2024.05.01), so they never count as drift; one HEAD each."""
        ingestor = self.ingestor

        def content_type(key: str) -> str:
            try:
                return str(ingestor.s3.head_object(Bucket=bucket, Key=key).get("ContentType") or "")
            except Exception:
                return "image/?"

        unsure = [k for k in keys if not is_image_key(k)]
        kinds = dict(zip(unsure, ingestor.pool.map(content_type, unsure)))
        images = [k for k in keys if k not in kinds or is_image_key(k, kinds[k])]
        report.skipped += len(keys) - len(images)
        return images

    def reconcile(self, bucket: str, prefix: str = "", dry_run: bool = False, batch: int = 32) -> SyncReport:
        """Repair both kinds of drift: images missing or stale in the collection, and points
        whose object is gone. With ``dry_run`` only count them."""
        report = SyncReport()
        objects = {}
        for obj in list_objects(self.ingestor.s3, bucket, prefix):
            report.listed += 1
            if self.ingestor.skip_reason(obj.key):
                report.skipped += 1
            else:
                objects[obj.key] = obj
        points = {
            str(hit.payload.get("key", "")): bare_etag(hit.payload.get("etag"))
            for hit in self.catalog.images_in(bucket)
            if str(hit.payload.get("key", "")).startswith(prefix)
        }
        missing = self._images_among(bucket, [k for k in objects if k not in points], report)
        changed = [k for k in objects if k in points and points[k] != objects[k].etag]
        orphaned = [k for k in points if k not in objects]
        report.missing, report.changed, report.orphaned = len(missing), len(changed), len(orphaned)
        report.unchanged = len(objects) - len(missing) - len(changed)
        if dry_run:
            return report
        changes = [S3Change(bucket, k, "created", "Reconcile") for k in missing + changed] + [
            S3Change(bucket, k, "removed", "Reconcile") for k in orphaned
        ]
        for start in range(0, len(changes), batch):
            part = changes[start : start + batch]
            report.add(self.apply_with_retries(part))
            self.progress(len(part))
        return report


def written_to(catalog: Catalog, collection: str) -> Iterator[tuple[str, str, str]]:
    """(bucket, key, indexed_at) of every point of a collection, read without its vectors."""
    for payload in catalog.payloads_in(collection, ["bucket", "key", "indexed_at"]):
        if payload.get("bucket") and payload.get("key"):
            yield payload["bucket"], payload["key"], str(payload.get("indexed_at", ""))


def _shared_folder(a: str, b: str) -> str:
    """The deepest folder ("x/y/") two folders share; "" when none."""
    parts = []
    for left, right in zip(a.split("/")[:-1], b.split("/")[:-1]):
        if left != right:
            break
        parts.append(left + "/")
    return "".join(parts)


def sources_in(catalog: Catalog, collection: str) -> list[tuple[str, str]]:
    """Where a collection's images came from: per bucket, the deepest folder its keys share
    under each top-level folder (``catalog/shoes/``), so a re-index reads what was indexed and
    not the rest of the bucket (query uploads, exports, ...)."""
    shared: dict[tuple[str, str], str] = {}
    for bucket, key, _ in written_to(catalog, collection):
        folder = key.rpartition("/")[0] + "/" if "/" in key else ""
        top = (bucket, folder.partition("/")[0])
        shared[top] = _shared_folder(shared.get(top, folder), folder)
    whole = {bucket for (bucket, _), folder in shared.items() if not folder}
    return sorted(
        {(bucket, folder) for (bucket, _), folder in shared.items() if bucket not in whole}
        | {(bucket, "") for bucket in whole}
    )


def reindex(
    catalog: Catalog,
    s3: Any,
    sources: list[tuple[str, str]] | None = None,
    keep_old: bool = False,
    progress: Callable[[int], None] | None = None,
    log: Callable[[str], None] = print,
    model: Embedder | None = None,
    keep_previous_h: float | None = None,
) -> dict[str, Any]:
    """Build a new collection with the current model (or ``model``, from the registry) from the
    bucket(s), switch the alias to it, catch up with what changed meanwhile, and drop the old
    collection (or keep it ``keep_previous_h`` hours for a rollback).

    Searches keep answering from the old collection until the alias switches (atomically).
    """
    old = catalog.physical_collection()
    if sources is None:
        sources = sources_in(catalog, old) if old else []
    if not sources:
        raise ValueError("nothing to re-index from: give --source s3://bucket/prefix")
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%d%H%M%S%f")
    fields = model.fields if model is not None else catalog.layer_model
    new = f"{catalog.collection}-{slug(fields.model_id)}-{stamp}"
    building = catalog.create_collection(new, fields, {})
    ingestor = Ingestor.configured(building, s3)
    syncer = Syncer(ingestor, progress)
    reports = {}
    try:
        for bucket, prefix in sources:
            log(f"indexing s3://{bucket}/{prefix} into {new}")
            reports[f"s3://{bucket}/{prefix}"] = syncer.backfill(bucket, prefix).as_dict()
    except BaseException:  # S3 or Qdrant gone, Ctrl-C: the alias never moved; leave no debris
        log(f"re-index stopped before the switch: dropping {new}; {catalog.collection!r} is unchanged")
        building.drop_collection(new)
        raise
    log(f"building the search index of {new} ...")
    building.optimize()  # before the switch: searches move to an indexed collection
    if old == catalog.collection:  # a plain collection, not yet an alias: replace it
        if keep_old:
            log(
                f"{old!r} is a plain collection, not an alias: it must go for the alias to "
                f"take its name, so it is dropped despite --keep-old"
            )
        catalog.drop_collection(old)
    catalog.point_alias(new)
    catalog.spaces.reload()  # this process writes and reads the new collection from now on
    log(f"alias {catalog.collection!r} now points at {new}")
    catch_up = Syncer(Ingestor.configured(catalog, s3))
    for bucket, prefix in sources:
        catch_up.reconcile(bucket, prefix)
    if old and old != catalog.collection:  # what the live ingest function wrote meanwhile,
        # a metadata-only change (same ETag) included
        since = started.isoformat(timespec="seconds")
        touched = [
            (b, k)
            for b, k, at in written_to(catalog, old)
            if at >= since and any(b == bucket and k.startswith(prefix) for bucket, prefix in sources)
        ]
        if touched:
            log(f"applying again {len(touched)} images changed during the re-index")
            catch_up.apply_with_retries([S3Change(b, k, "created", "Reindex") for b, k in touched])
    result: dict[str, Any] = {
        "collection": new,
        "previous": old,
        "sources": reports,
        "model": fields.model_id,
    }
    if old and old != catalog.collection and keep_previous_h is not None:
        result["previous_kept_until"] = keep_as_previous(catalog, old, new, keep_previous_h, log)
    elif old and old != catalog.collection and not keep_old:
        catalog.drop_collection(old)
        log(f"dropped the old collection {old}")
    return result
