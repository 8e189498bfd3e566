"""``visual-search reindex``, ``optimize`` and ``migrate-store``: rebuilding the collection."""

from __future__ import annotations

import json

from .common import int_in, log_to_stderr, progress


def add_reindex(sub) -> None:
    reindex = sub.add_parser(
        "reindex",
        help="rebuild the collection with the current model and switch the alias",
        description="Build a new collection with the current model from the bucket(s), switch "
        "the COLLECTION alias to it atomically, catch up and drop the old one.",
    )
    reindex.add_argument(
        "--source",
        action="append",
        default=[],
        help="s3://bucket/prefix to index (repeatable; default: the buckets "
        "recorded in the current collection)",
    )
    reindex.add_argument("--keep-old", action="store_true", help="keep the previous collection")
    _add_queue_options(reindex)
    _add_model_options(reindex)
    reindex.add_argument("--quiet", action="store_true", help="no progress bar")
    reindex.set_defaults(func=run_reindex)


def _add_queue_options(reindex) -> None:
    reindex.add_argument(
        "--via-queue",
        metavar="QUEUE",
        help="fill the new collection through the deployed ingest queue and its function fleet "
        "(messages name the new collection; live changes go to both meanwhile); waits for the queue "
        "to drain and the counts to match, then switches the alias",
    )
    reindex.add_argument(
        "--rate", type=float, metavar="N", help="with --via-queue: at most N messages per second"
    )
    reindex.add_argument(
        "--timeout",
        type=float,
        default=86400,
        metavar="S",
        help="with --via-queue: give up (alias unchanged) after S seconds (default 86400)",
    )


def _add_model_options(reindex) -> None:
    reindex.add_argument(
        "--model",
        metavar="MODEL_ID",
        help="build the new collection with this model of the registry (visual-search model "
        "publish); searches keep the current model until the switch; the old collection is kept "
        "for `visual-search model rollback` (--keep-previous)",
    )
    reindex.add_argument(
        "--dry-run",
        action="store_true",
        help="with --model: print the plan and an estimate (images, Lambda-seconds, dollars, wall time)",
    )
    reindex.add_argument(
        "--keep-previous",
        type=float,
        default=72.0,
        metavar="HOURS",
        help="with --model: keep the previous collection this long for `visual-search model rollback` (72)",
    )
    reindex.add_argument(
        "--memory-mb", type=int_in(128, 10240), default=2048, help="for the estimate: MemorySize (2048)"
    )
    reindex.add_argument(
        "--concurrency", type=int_in(1), default=5, help="for the estimate: IngestMaxConcurrency (5)"
    )


def add_optimize(sub) -> None:
    optimize = sub.add_parser(
        "optimize",
        help="build the embedded store's HNSW index now (ingest and reindex do it when they finish)",
        description="Build the HNSW graphs and merge the segments of the embedded store's collection. "
        "It blocks while it runs: never while a `visual-search dev` serves the same folder. "
        "Nothing to do on a Qdrant server.",
    )
    optimize.set_defaults(func=run_optimize)


def add_migrate_store(sub) -> None:
    migrate = sub.add_parser(
        "migrate-store",
        help="convert a qdrant-client local-mode folder to the embedded engine (qdrant-edge)",
        description="Copy every collection, alias, vector and payload of a folder written by "
        "qdrant-client's local mode (the embedded store before qdrant-edge) into qdrant-edge "
        "shards in place; the old files move to local-mode-backup/.",
    )
    migrate.add_argument("path", nargs="?", help="the folder (default: QDRANT_PATH)")
    migrate.set_defaults(func=run_migrate_store)


def run_reindex(args) -> int:
    from ...ops.sync import parse_s3_url

    sources = [parse_s3_url(s) for s in args.source] or None
    if args.dry_run and not args.via_queue:
        raise ValueError("--dry-run estimates a change through the fleet: give --via-queue QUEUE and --model")
    if args.via_queue and (args.model or args.dry_run):
        return _migrate(args, sources)
    if args.via_queue:
        from ...ops.fleet import run_reindex as fleet_reindex

        return fleet_reindex(
            args.via_queue,
            sources,
            keep_old=args.keep_old,
            rate=args.rate,
            timeout_s=args.timeout,
            quiet=args.quiet,
        )
    return _reindex_here(args, sources)


def _reindex_here(args, sources) -> int:
    from ...aws import s3_client
    from ...catalog import get_catalog
    from ...ops.sync import reindex

    catalog = get_catalog()
    model = catalog.registry_model(args.model) if args.model else None  # fetched and checked first
    bar = progress(None, None, "re-indexing", args.quiet)
    result = reindex(
        catalog,
        s3_client(),
        sources,
        keep_old=args.keep_old,
        progress=bar.update,
        log=log_to_stderr,
        model=model,
        keep_previous_h=args.keep_previous if model is not None else None,
    )
    bar.close()
    print(json.dumps(result, indent=2))
    problems = sum(r["failed"] + r["retry"] for r in result["sources"].values())
    return 0 if problems == 0 else 1


def _migrate(args, sources) -> int:
    import boto3

    from ...aws import s3_client
    from ...catalog import get_catalog
    from ...config import get_settings
    from ...ops.migration import migrate

    if not args.model:
        raise ValueError("--dry-run estimates a model change: give --model MODEL_ID")
    bar = progress(None, None, "counting" if args.dry_run else "queueing", args.quiet)
    result = migrate(
        get_catalog(),
        s3_client(),
        boto3.client("sqs"),
        args.via_queue,
        args.model,
        get_settings().adapt,
        sources,
        dry_run=args.dry_run,
        keep_previous_h=args.keep_previous,
        memory_mb=args.memory_mb,
        concurrency=args.concurrency,
        progress=bar.update,
        log=log_to_stderr,
        rate=args.rate,
        timeout_s=args.timeout,
    )
    bar.close()
    print(json.dumps(result, indent=2))
    return 0


def run_optimize(args) -> int:
    from ...catalog import get_catalog
    from ...ops.maintenance import optimize

    print(json.dumps(optimize(get_catalog(), log=log_to_stderr)))
    return 0


def run_migrate_store(args) -> int:
    from ...ops.maintenance import migrate_store

    print(json.dumps(migrate_store(args.path, log=log_to_stderr)))
    return 0
