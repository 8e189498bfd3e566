"""``visual-search upload``: a catalogue folder into a bucket (the work is ../upload.py's), and
``--wait`` for the catalogue to hold it."""

from __future__ import annotations

import sys
from pathlib import Path

from .common import int_in, progress, running_local_stack


def add(sub) -> None:
    upload = sub.add_parser(
        "upload",
        help="upload a catalogue folder to a bucket, products.csv rows as S3 metadata",
        description="One subfolder per product; each products.csv row becomes the user metadata "
        "(product-id, category, brand, title, price, other columns) of that product's objects, so "
        "the bucket's ingest function indexes them. Concurrent and resumable: objects whose MD5 "
        "and metadata already match are skipped.",
    )
    upload.add_argument("folder", help="the catalogue folder")
    upload.add_argument("target", help="s3://bucket/prefix")
    upload.add_argument("--endpoint-url", help="S3 endpoint, e.g. the local stack's http://127.0.0.1:9000")
    upload.add_argument("--workers", type=int_in(1, 64), default=8, help="concurrent uploads (default 8)")
    upload.add_argument(
        "--strict",
        action="store_true",
        help="refuse to upload when products.csv has rows with no photos or folders with no row",
    )
    upload.add_argument(
        "--wait",
        action="store_true",
        help="then wait until the catalogue holds every uploaded image (the local stack's backlog, or "
        "the store QDRANT_URL names)",
    )
    upload.add_argument(
        "--timeout", type=float, default=600, metavar="S", help="with --wait: give up after S seconds (600)"
    )
    upload.add_argument("--quiet", action="store_true", help="no progress bar")
    upload.set_defaults(func=run)


def run(args) -> int:
    from ...aws import s3_client
    from ...ops.sync import parse_s3_url
    from ..folders import scan
    from ..upload import upload_folder

    bucket, prefix = parse_s3_url(args.target)
    folder = Path(args.folder)
    images = scan(folder)
    if args.strict and not _agree(folder, images):
        return 1
    s3 = s3_client(endpoint_url=args.endpoint_url)
    bar = progress(None, len(images), f"uploading to {args.target}", args.quiet)
    report = upload_folder(
        s3, folder, bucket, prefix, workers=args.workers, progress=bar.update, images=images
    )
    bar.close()
    print(report.summary(args.target))
    if report.failed:
        return 1
    if not args.wait:
        print(
            "indexing follows asynchronously: `visual-search upload ... --wait` waits for it", file=sys.stderr
        )
        return 0
    return _wait_indexed(args, bucket, prefix, images)


def _agree(folder: Path, images) -> bool:
    """``--strict``: whether products.csv and the folders agree (else why not, on stderr)."""
    from ..folders import catalogue_gaps
    from ..upload import UploadReport

    rows, folders = catalogue_gaps(folder, images)
    gaps = UploadReport(rows_without_photos=rows, folders_without_row=folders).gap_lines()
    if gaps:
        print("error: --strict: products.csv and the folders disagree; nothing uploaded", file=sys.stderr)
        print("\n".join(gaps), file=sys.stderr)
    return not gaps


def _wait_indexed(args, bucket: str, prefix: str, images) -> int:
    """``upload --wait``: through the local stack holding the catalogue (its backlog empty), or
    by asking the catalogue for every uploaded key and ETag."""
    stack = running_local_stack()
    if stack is not None and (args.endpoint_url or "").rstrip("/") == stack["s3"].rstrip("/"):
        return _wait_backlog(stack, args.timeout)
    return _wait_stored(args, bucket, prefix, images)


def _wait_backlog(stack: dict, timeout: float) -> int:
    """Until the running local stack's backlog is empty."""
    import time

    from ..devstack.models import ask

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = ask(stack, "GET", "/health")
        backlog = health.get("backlog") or {}
        if not backlog.get("queued") and not backlog.get("in_flight"):
            points = health.get("points")
            print(f"indexed: the local stack's backlog is empty ({points} images in the catalogue)")
            return 0
        time.sleep(0.5)
    print(
        f"error: the local stack still indexes after {timeout:g} s ({stack['api']}/health)", file=sys.stderr
    )
    return 1


def _wait_stored(args, bucket: str, prefix: str, images) -> int:
    """Until the catalogue holds every uploaded key with its ETag."""
    from ...catalog import get_catalog
    from ..upload import expected_objects, wait_until_indexed

    expected = expected_objects(images, bucket, prefix)
    catalog = get_catalog()
    bar = progress(None, len(expected), "indexing", args.quiet)
    done = wait_until_indexed(expected, catalog.stored, args.timeout, progress=bar.update)
    bar.close()
    if done < len(expected):
        print(
            f"error: {len(expected) - done} of {len(expected)} images not indexed after {args.timeout:g} s: "
            "see the ingest function's logs and its dead-letter queue",
            file=sys.stderr,
        )
        return 1
    print(f"indexed: all {len(expected)} images are in the catalogue")
    return 0
