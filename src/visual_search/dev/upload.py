"""`visual-search upload ./folder s3://bucket/prefix`: a catalogue folder into a bucket.

One subfolder per product; each ``products.csv`` row becomes the S3 user metadata of that
product's objects (``product-id``, ``category``, ``brand``, ``title``, ``price`` and any other
column), so the bucket's normal event path (the ingest function) indexes them with it: against
the local stack (``--endpoint-url`` it printed) or a deployed bucket alike. Concurrent, with a
progress bar; resumable: an object whose MD5 (single-part ETag), content type and metadata
already match is not sent again.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..aws import is_missing
from .folders import LocalImage, catalogue_gaps, scan

_UNSAFE_NAME = re.compile(r"[^a-z0-9\-_.]+")


@dataclass
class UploadReport:
    found: int = 0
    uploaded: int = 0
    unchanged: int = 0
    failed: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    rows_without_photos: list[str] = field(default_factory=list)  # products.csv rows, no folder
    folders_without_row: list[str] = field(default_factory=list)  # product folders, no row

    def summary(self, target: str) -> str:
        mib = self.bytes_sent / 2**20
        line = (
            f"{target}: {self.found} images; {self.uploaded} uploaded ({mib:.1f} MiB), "
            f"{self.unchanged} already there and unchanged, {self.failed} failed, in {self.seconds:.1f} s"
        )
        return "\n".join([line, *self.gap_lines(), *(f"  failed: {p}" for p in self.problems[:20])])

    def gap_lines(self) -> list[str]:
        """What products.csv and the folders disagree on (with a few names of each)."""
        out = []
        if self.rows_without_photos:
            out.append(
                f"  {len(self.rows_without_photos)} products.csv rows have no photos: "
                f"{_some(self.rows_without_photos)}"
            )
        if self.folders_without_row:
            out.append(
                f"  {len(self.folders_without_row)} product folders have no products.csv row (uploaded "
                f"with their folder name as product id only): {_some(self.folders_without_row)}"
            )
        return out


def _some(names: list[str], count: int = 5) -> str:
    more = f" and {len(names) - count} more" if len(names) > count else ""
    return ", ".join(names[:count]) + more


def s3_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """products.csv columns as S3 user metadata: names lower-case and header-safe, non-ASCII
    values as RFC 2047 encoded-words (what S3 itself returns for them; the ingest decodes)."""
    out = {}
    for name, value in metadata.items():
        name = _UNSAFE_NAME.sub("-", name.strip().lower()).strip("-")
        value = " ".join(str(value).split())
        if not name or not value:
            continue
        if not value.isascii():
            value = f"=?UTF-8?B?{base64.b64encode(value.encode()).decode()}?="
        out[name] = value
    return out


def object_key(prefix: str, image: LocalImage) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/{image.key}" if prefix else image.key


def _same(head: dict, md5: str, content_type: str, metadata: dict[str, str]) -> bool:
    return (
        head.get("ETag", "").strip('"') == md5
        and head.get("ContentType") == content_type
        and {k.lower(): v for k, v in (head.get("Metadata") or {}).items()} == metadata
    )


def upload_one(s3: Any, bucket: str, key: str, image: LocalImage) -> tuple[str, int]:
    """("uploaded" | "unchanged", bytes sent) for one image."""
    data = image.path.read_bytes()
    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    metadata = s3_metadata(image.metadata)
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except s3.exceptions.ClientError as exc:
        if not is_missing(exc):
            raise
        head = {}
    if head and _same(head, md5, image.content_type, metadata):
        return "unchanged", 0
    s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=data,
        ContentType=image.content_type,
        Metadata=metadata,
        ContentMD5=base64.b64encode(bytes.fromhex(md5)).decode(),
    )
    return "uploaded", len(data)


def upload_folder(
    s3: Any,
    folder: Path,
    bucket: str,
    prefix: str = "",
    workers: int = 8,
    progress: Callable[[int], None] | None = None,
    images: list[LocalImage] | None = None,
) -> UploadReport:
    """``images``: the folder's scan, when the caller already made it."""
    images = scan(folder) if images is None else images
    rows, folders = catalogue_gaps(folder, images)
    report = UploadReport(found=len(images), rows_without_photos=rows, folders_without_row=folders)
    started = time.monotonic()

    def one(image: LocalImage) -> tuple[LocalImage, str, int, str]:
        try:
            status, sent = upload_one(s3, bucket, object_key(prefix, image), image)
            return image, status, sent, ""
        except Exception as exc:
            return image, "failed", 0, f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for image, status, sent, problem in pool.map(one, images):
            setattr(report, status, getattr(report, status) + 1)
            report.bytes_sent += sent
            if problem:
                report.problems.append(f"{image.key}: {problem}")
            if progress:
                progress(1)
    report.seconds = time.monotonic() - started
    return report


def expected_objects(images: list[LocalImage], bucket: str, prefix: str) -> dict[tuple[str, str], str]:
    """(bucket, key) -> the ETag (MD5) each uploaded image has in the bucket."""
    return {
        (bucket, object_key(prefix, image)): hashlib.md5(
            image.path.read_bytes(), usedforsecurity=False
        ).hexdigest()
        for image in images
    }


def wait_until_indexed(
    expected: dict[tuple[str, str], str],
    stored: Callable[[list[tuple[str, str]]], dict[tuple[str, str], dict]],
    timeout_s: float = 600.0,
    poll_s: float = 1.0,
    progress: Callable[[int], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Poll the catalogue (``stored``: Catalog.stored) until every object is indexed with the
    ETag it was uploaded with; how many are. Returns early with fewer at ``timeout_s``."""
    from ..ingest.pipeline import bare_etag

    deadline = clock() + timeout_s
    left = dict(expected)
    while True:
        refs = list(left)
        found = {}
        for start in range(0, len(refs), 256):
            found.update(stored(refs[start : start + 256]))
        done = [ref for ref in refs if bare_etag(found.get(ref, {}).get("etag")) == left[ref]]
        for ref in done:
            left.pop(ref)
        if progress and done:
            progress(len(done))
        if not left or clock() >= deadline:
            return len(expected) - len(left)
        sleep(poll_s)
