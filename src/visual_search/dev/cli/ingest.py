"""``visual-search ingest``, ``reconcile`` and ``redrive``: bringing images into the catalogue."""

from __future__ import annotations

import json
from pathlib import Path

from ..folders import ingest_folder
from .common import int_in, log_to_stderr, progress


def add_ingest(sub) -> None:
    ingest = sub.add_parser(
        "ingest",
        help="index existing images in bulk: s3://bucket/prefix or a local folder",
        description="Backfill: index every image under s3://bucket/prefix (through the ingest "
        "function's code path; objects already indexed with their ETag are skipped, "
        "so an interrupted run resumes) or of a local folder (one subfolder per "
        "product, products.csv as metadata).",
    )
    ingest.add_argument("source", help="s3://bucket/prefix or a local folder")
    ingest.add_argument(
        "--bucket", default="local", help="for a folder: the bucket name recorded per image (default: local)"
    )
    ingest.add_argument("--batch", type=int_in(1, 1024), default=32, help="images per batch (default 32)")
    ingest.add_argument(
        "--prune",
        action="store_true",
        help="for a folder: delete the points of --bucket whose file is gone "
        "from the folder (use one --bucket label per folder)",
    )
    ingest.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_queue_options(ingest)
    ingest.set_defaults(func=run_ingest)


def _add_queue_options(ingest) -> None:
    ingest.add_argument(
        "--via-queue",
        metavar="QUEUE",
        help="do not embed here: send the objects to the deployed ingest queue (name or URL, the "
        "stack's IngestQueueName output) as S3 notifications, for the function fleet to index in "
        "parallel; already indexed objects (same ETag) are not sent; prints how to watch the drain",
    )
    ingest.add_argument("--force", action="store_true", help="with --via-queue: send indexed objects too")
    ingest.add_argument(
        "--rate", type=float, metavar="N", help="with --via-queue: at most N messages per second"
    )
    ingest.add_argument(
        "--dry-run", action="store_true", help="with --via-queue: only count what would be sent"
    )
    ingest.add_argument(
        "--records-per-message",
        type=int_in(1, 100),
        default=10,
        help="with --via-queue: S3 records per message (default 10; the function takes 10 messages a batch)",
    )


def add_reconcile(sub) -> None:
    reconcile = sub.add_parser(
        "reconcile",
        help="compare a bucket with the collection and repair any drift",
        description="Index images missing from (or stale in) the collection and delete points "
        "whose object is gone. Exit code 3 with --dry-run when there is drift.",
    )
    reconcile.add_argument("source", help="s3://bucket/prefix")
    reconcile.add_argument("--dry-run", action="store_true", help="only report the drift")
    reconcile.add_argument("--quiet", action="store_true", help="no progress bar")
    reconcile.set_defaults(func=run_reconcile)


def add_redrive(sub) -> None:
    redrive = sub.add_parser(
        "redrive",
        help="send the ingest DLQ's messages back to the ingest queue",
        description="Move every message from the dead-letter queue back to the queue it came "
        "from (or --to), once the cause of the failures is fixed. Messages are sent "
        "before they are deleted: nothing is lost. --dry-run lists them instead.",
    )
    redrive.add_argument("--dlq", required=True, help="dead-letter queue name or URL")
    redrive.add_argument("--to", help="target queue name or URL (default: the DLQ's source queue)")
    redrive.add_argument("--max", type=int_in(1), help="move at most this many messages")
    redrive.add_argument("--dry-run", action="store_true", help="list the parked messages only")
    redrive.add_argument("--quiet", action="store_true", help="no progress bar")
    redrive.set_defaults(func=run_redrive)


def _syncer(quiet: bool, desc: str):
    from ...aws import s3_client
    from ...catalog import get_catalog
    from ...ingest.pipeline import Ingestor
    from ...ops.sync import Syncer

    ingestor = Ingestor.configured(get_catalog(), s3_client())
    bar = progress(None, None, desc, quiet)
    return Syncer(ingestor, progress=bar.update), bar


def _optimize_after_bulk(quiet: bool) -> None:
    """Bulk commands leave the embedded store's HNSW built (a server builds its own)."""
    from ...catalog import get_catalog
    from ...ops.maintenance import optimize

    optimize(get_catalog(), log=(lambda m: None) if quiet else log_to_stderr)


def run_ingest(args) -> int:
    if args.via_queue:
        return _through_queue(args)
    if args.source.startswith("s3://"):
        return _backfill(args)
    return _from_folder(args)


def _through_queue(args) -> int:
    from ...ops.fleet import run_ingest as fleet_ingest

    if not args.source.startswith("s3://"):
        raise ValueError("--via-queue takes s3://bucket/prefix: the fleet reads from S3")
    return fleet_ingest(
        args.source,
        args.via_queue,
        force=args.force,
        dry_run=args.dry_run,
        rate=args.rate,
        records_per_message=args.records_per_message,
        quiet=args.quiet,
    )


def _backfill(args) -> int:
    from ...ops.sync import parse_s3_url

    if args.prune:
        raise ValueError(
            "--prune is for folders; for a bucket, `visual-search reconcile` "
            "deletes the points whose object is gone"
        )
    bucket, prefix = parse_s3_url(args.source)
    syncer, bar = _syncer(args.quiet, f"backfilling {args.source}")
    report = syncer.backfill(bucket, prefix, batch=args.batch).as_dict()
    bar.close()
    _optimize_after_bulk(args.quiet)
    print(json.dumps(report, indent=2))
    return 0 if not report["failed"] and not report["retry"] else 1


def _from_folder(args) -> int:
    from ...catalog import get_catalog

    counts = ingest_folder(
        get_catalog(), Path(args.source), args.bucket, batch=args.batch, quiet=args.quiet, prune=args.prune
    )
    _optimize_after_bulk(args.quiet)
    print(json.dumps(counts))
    return 0 if counts["failed"] == 0 else 1


def run_reconcile(args) -> int:
    from ...ops.sync import parse_s3_url

    bucket, prefix = parse_s3_url(args.source)
    syncer, bar = _syncer(args.quiet, f"reconciling {args.source}")
    report = syncer.reconcile(bucket, prefix, dry_run=args.dry_run).as_dict()
    bar.close()
    print(json.dumps(report, indent=2))
    drift = report["missing"] + report["changed"] + report["orphaned"]
    if args.dry_run:
        return 0 if drift == 0 else 3
    return 0 if not report["failed"] and not report["retry"] else 1


def run_redrive(args) -> int:
    import boto3

    from ...ops.queues import queue_url, redrive, source_queue

    sqs = boto3.client("sqs")
    dlq = queue_url(sqs, args.dlq)
    if args.dry_run:
        return _list_parked(sqs, dlq, args.max)
    target = queue_url(sqs, args.to) if args.to else source_queue(sqs, dlq)
    bar = progress(None, None, "redriving", args.quiet)
    moved = redrive(sqs, dlq, target, args.max, progress=bar.update)
    bar.close()
    print(json.dumps({"moved": moved, "from": dlq, "to": target}))
    return 0


def _list_parked(sqs, dlq: str, most: int | None) -> int:
    """``redrive --dry-run``: the dead-letter queue's messages, listed, none moved."""
    from ...ops.queues import peek, waiting

    parked = peek(sqs, dlq, most or 100)
    for p in parked:
        print(f"{p.message_id}  received {p.receives}x  {', '.join(p.keys) or p.body[:80]}")
    total = waiting(sqs, dlq)
    shown = f" ({len(parked)} shown)" if len(parked) < total else ""
    print(f"{max(total, len(parked))} messages in the dead-letter queue{shown}")
    return 0
