"""The ``visual-search`` command line: demo, ingest, search, info and bench."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import StoreUnavailableError, VisualSearchError
from .folders import ingest_folder


def _progress(iterable, total: int | None, desc: str, quiet: bool = False):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="img", disable=quiet, file=sys.stderr)


def _query_from_args(args):
    from ..domain import Filter, Query

    filters: dict = {}
    if args.category:
        filters["category"] = args.category
    if args.brand:
        filters["brand"] = args.brand
    if args.price_min is not None or args.price_max is not None:
        filters["price"] = {"gte": args.price_min, "lte": args.price_max}
    return Query(top_k=args.top_k, filters=Filter.of(filters), group_by_product=not args.no_group)


def _print_hits(result, as_json: bool) -> None:
    rows = [
        {
            "product_id": h.payload.get("product_id"),
            "score": round(h.score, 4),
            "key": h.payload.get("key"),
            "category": h.payload.get("category"),
            "price": h.payload.get("price"),
        }
        for h in result.hits
    ]
    if as_json:
        print(
            json.dumps({"results": rows, "model": result.model_id, "timings_ms": result.timings_ms}, indent=2)
        )
        return
    for rank, row in enumerate(rows, 1):
        print(f"{rank:>3}. {row['score']:.4f}  {row['product_id']:<34} {row['key']}")
    print(f"model {result.model_id}; timings ms {result.timings_ms}")


def cmd_demo(args) -> int:
    import os

    from ..catalog import get_catalog
    from .folders import DEMO_CATALOG, scan

    folder = Path(args.folder or DEMO_CATALOG)
    images = scan(folder)
    if not images:
        raise ValueError(f"{folder} holds no images (one subfolder per product)")
    if not os.environ.get("QDRANT_URL") and not args.persist:
        os.environ["QDRANT_PATH"] = ":memory:"  # a throwaway catalogue, apart from the dev stack's
    catalog = get_catalog()
    print(f"model {catalog.model_id}; store {catalog.store_mode} collection {catalog.collection!r}")
    counts = ingest_folder(catalog, folder, args.bucket)
    print(
        f"indexed {counts['indexed']} images ({counts['failed']} failed); "
        f"{catalog.count()} images in the catalogue"
    )
    query_image = Path(args.query) if args.query else images[0].path
    print(f"\nsample query: {query_image}")
    result = catalog.search_image(query_image.read_bytes(), _query_from_args(args))
    _print_hits(result, args.json)
    return 0


def _syncer(quiet: bool, desc: str):
    from ..aws import s3_client
    from ..catalog import get_catalog
    from ..ingest.pipeline import Ingestor
    from ..ops.sync import Syncer

    ingestor = Ingestor.configured(get_catalog(), s3_client())
    bar = _progress(None, None, desc, quiet)
    return Syncer(ingestor, progress=bar.update), bar


def cmd_ingest(args) -> int:
    from ..catalog import get_catalog
    from ..ops.sync import parse_s3_url

    source = args.source
    if args.via_queue:
        from ..ops.fleet import run_ingest

        if not source.startswith("s3://"):
            raise ValueError("--via-queue takes s3://bucket/prefix: the fleet reads from S3")
        return run_ingest(
            source,
            args.via_queue,
            force=args.force,
            dry_run=args.dry_run,
            rate=args.rate,
            records_per_message=args.records_per_message,
            quiet=args.quiet,
        )
    if source.startswith("s3://"):
        if args.prune:
            raise ValueError(
                "--prune is for folders; for a bucket, `visual-search reconcile` "
                "deletes the points whose object is gone"
            )
        bucket, prefix = parse_s3_url(source)
        syncer, bar = _syncer(args.quiet, f"backfilling {source}")
        report = syncer.backfill(bucket, prefix, batch=args.batch).as_dict()
        bar.close()
        _optimize_after_bulk(args.quiet)
        print(json.dumps(report, indent=2))
        return 0 if not report["failed"] and not report["retry"] else 1
    counts = ingest_folder(
        get_catalog(), Path(source), args.bucket, batch=args.batch, quiet=args.quiet, prune=args.prune
    )
    _optimize_after_bulk(args.quiet)
    print(json.dumps(counts))
    return 0 if counts["failed"] == 0 else 1


def cmd_reconcile(args) -> int:
    from ..ops.sync import parse_s3_url

    bucket, prefix = parse_s3_url(args.source)
    syncer, bar = _syncer(args.quiet, f"reconciling {args.source}")
    report = syncer.reconcile(bucket, prefix, dry_run=args.dry_run).as_dict()
    bar.close()
    print(json.dumps(report, indent=2))
    drift = report["missing"] + report["changed"] + report["orphaned"]
    if args.dry_run:
        return 0 if drift == 0 else 3
    return 0 if not report["failed"] and not report["retry"] else 1


def cmd_redrive(args) -> int:
    import boto3

    from ..ops.queues import peek, queue_url, redrive, source_queue, waiting

    sqs = boto3.client("sqs")
    dlq = queue_url(sqs, args.dlq)
    if args.dry_run:
        parked = peek(sqs, dlq, args.max or 100)
        for p in parked:
            print(f"{p.message_id}  received {p.receives}x  {', '.join(p.keys) or p.body[:80]}")
        total = waiting(sqs, dlq)
        shown = f" ({len(parked)} shown)" if len(parked) < total else ""
        print(f"{max(total, len(parked))} messages in the dead-letter queue{shown}")
        return 0
    target = queue_url(sqs, args.to) if args.to else source_queue(sqs, dlq)
    bar = _progress(None, None, "redriving", args.quiet)
    moved = redrive(sqs, dlq, target, args.max, progress=bar.update)
    bar.close()
    print(json.dumps({"moved": moved, "from": dlq, "to": target}))
    return 0


def _migrate(args, sources) -> int:
    import boto3

    from ..aws import s3_client
    from ..catalog import get_catalog
    from ..config import get_settings
    from ..ops.migration import migrate

    if not args.model:
        raise ValueError("--dry-run estimates a model change: give --model MODEL_ID")
    bar = _progress(None, None, "counting" if args.dry_run else "queueing", args.quiet)
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
        log=lambda m: print(m, file=sys.stderr),
        rate=args.rate,
        timeout_s=args.timeout,
    )
    bar.close()
    print(json.dumps(result, indent=2))
    return 0


def cmd_reindex(args) -> int:
    from ..aws import s3_client
    from ..catalog import get_catalog
    from ..ops.sync import parse_s3_url, reindex

    sources = [parse_s3_url(s) for s in args.source] or None
    if args.dry_run and not args.via_queue:
        raise ValueError("--dry-run estimates a change through the fleet: give --via-queue QUEUE and --model")
    if args.via_queue and (args.model or args.dry_run):
        return _migrate(args, sources)
    if args.via_queue:
        from ..ops.fleet import run_reindex

        return run_reindex(
            args.via_queue,
            sources,
            keep_old=args.keep_old,
            rate=args.rate,
            timeout_s=args.timeout,
            quiet=args.quiet,
        )
    catalog = get_catalog()
    model = catalog.registry_model(args.model) if args.model else None  # fetched and checked first
    bar = _progress(None, None, "re-indexing", args.quiet)
    result = reindex(
        catalog,
        s3_client(),
        sources,
        keep_old=args.keep_old,
        progress=bar.update,
        log=lambda m: print(m, file=sys.stderr),
        model=model,
        keep_previous_h=args.keep_previous if model is not None else None,
    )
    bar.close()
    print(json.dumps(result, indent=2))
    problems = sum(r["failed"] + r["retry"] for r in result["sources"].values())
    return 0 if problems == 0 else 1


def _optimize_after_bulk(quiet: bool) -> None:
    """Bulk commands leave the embedded store's HNSW built (a server builds its own)."""
    from ..catalog import get_catalog
    from ..ops.maintenance import optimize

    optimize(get_catalog(), log=(lambda m: None) if quiet else (lambda m: print(m, file=sys.stderr)))


def cmd_optimize(args) -> int:
    from ..catalog import get_catalog
    from ..ops.maintenance import optimize

    print(json.dumps(optimize(get_catalog(), log=lambda m: print(m, file=sys.stderr))))
    return 0


def cmd_migrate_store(args) -> int:
    from ..ops.maintenance import migrate_store

    print(json.dumps(migrate_store(args.path, log=lambda m: print(m, file=sys.stderr))))
    return 0


def cmd_adapt(args) -> int:
    from ..adaptation.adapter import adapt, print_result
    from ..catalog import get_catalog

    catalog = get_catalog()
    total = None if args.dry_run else catalog.count()  # the copy writes every point once
    bar = _progress(None, total, "writing adapted vectors", args.quiet or args.dry_run)
    result = adapt(
        catalog, dry_run=args.dry_run, progress=bar.update, log=lambda m: print(m, file=sys.stderr)
    )
    bar.close()
    print_result(result, as_json=args.json)
    return 0 if result.status != "incomplete" else 1


def cmd_search(args) -> int:
    from ..catalog import get_catalog

    result = get_catalog().search_image(Path(args.image).read_bytes(), _query_from_args(args))
    _print_hits(result, args.json)
    return 0


def cmd_info(args) -> int:
    from ..catalog import get_catalog

    catalog = get_catalog()
    print(json.dumps({**catalog.info(), "projection": catalog.projection}, indent=2))
    return 0


def cmd_dev(args) -> int:
    from .devstack.stack import DevStack, StackError, StackOptions

    options = StackOptions(
        host="127.0.0.1",
        api_port=args.api_port,
        s3_port=args.s3_port,
        data_dir=Path(args.data_dir),
        bucket=args.bucket,
        demo=not args.no_demo,
        verbose=args.verbose,
    )
    try:
        return DevStack(options, log=lambda m: print(m, flush=True)).run()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def cmd_eval(args) -> int:
    from ..config import get_settings
    from ..model import Embedder
    from .evaluate import PixelEmbedder, evaluate

    settings = get_settings()
    embedder: Embedder | PixelEmbedder
    if args.baseline == "pixels":
        embedder = PixelEmbedder()
    else:
        embedder = Embedder(
            Path(args.model_dir) if args.model_dir else settings.model_dir,
            threads=settings.ort_threads,
            max_batch=settings.max_batch,
            limits=settings.images,
            flip_tta=args.flip or settings.flip_tta,
            crop=args.crop,
        )
    reranker = None
    if args.rerank_model_dir:
        reranker = Embedder(
            Path(args.rerank_model_dir),
            threads=settings.ort_threads,
            max_batch=settings.max_batch,
            limits=settings.images,
            crop=args.crop,
        )
    bar = _progress(None, None, f"evaluating {embedder.model_id}", args.json or args.quiet)
    queries = [p.strip() for p in args.queries.split(",") if p.strip()] if args.queries else None
    gallery = [p.strip() for p in args.gallery.split(",") if p.strip()] if args.gallery else None
    if gallery and not queries:
        raise SystemExit("error: --gallery needs --queries (the split protocol)")
    result = evaluate(
        Path(args.folder),
        embedder,
        limit=args.limit,
        progress=bar.update,
        reranker=reranker,
        queries=queries,
        gallery=gallery,
        adapt=args.adapt,
        folds=args.folds,
        leave_out=args.leave_out,
    )
    bar.close()
    if args.json:
        print(json.dumps(result.as_json()))
        return 0
    print("\n".join(result.lines(args.folder)))
    return 0


def cmd_eval_clicks(args) -> int:
    from .clicks import simulate

    bar = _progress(None, None, "searching and clicking", args.json or args.quiet)
    result = simulate(
        Path(args.folder),
        [p.strip() for p in args.catalogue.split(",") if p.strip()],
        [p.strip() for p in args.queries.split(",") if p.strip()],
        share=args.share,
        misclicks=args.misclicks,
        seed=args.seed,
        progress=bar.update,
        total=lambda n: setattr(bar, "total", n),
        log=(lambda line: None) if args.json or args.quiet else bar.write,
    )
    bar.close()
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


def cmd_audit(args) -> int:
    from ..model import load_embedder
    from .audit import audit

    embedder = load_embedder()
    bar = _progress(None, None, f"auditing with {embedder.model_id}", args.json)
    photos, found = audit(Path(args.folder), embedder, progress=bar.update)
    bar.close()
    shown = found[: args.top]
    if args.json:
        print(json.dumps({"photos": photos, "suspects": [s.as_json() for s in shown], "total": len(found)}))
        return 0
    print(f"{len(found)} of {photos} photos are nearer to another product than to their own")
    for s in shown:
        print(f"  {s.key}: {s.other_product} ({s.other_key}) {s.other_best:.3f} > own {s.own_best:.3f}")
    return 0


def cmd_finetune(args) -> int:
    if args.sagemaker:
        if not args.role:
            raise ValueError("--sagemaker needs --role ARN (the template's TrainingRoleArn output)")
        from .training import sagemaker

        return sagemaker.run(args, lambda m: print(m, file=sys.stderr))
    if not args.out:
        raise ValueError("give --out DIR: the model folder to write")
    from .training.command import run

    return run(args, lambda desc, total: _progress(None, total, desc, args.quiet))


def cmd_model_quantize(args) -> int:
    from .training.quantize import QuantizeOptions, quantize

    patterns = tuple(p.strip() for p in (args.patterns or "").split(",") if p.strip())
    options = QuantizeOptions(
        Path(args.model_dir),
        Path(args.calibration),
        Path(args.out),
        args.images,
        args.method,
        patterns=patterns,
    )
    bars: list = []

    def progress(desc: str, total: int):
        bars.append(_progress(None, total, desc, args.quiet))
        return bars[-1].update

    try:
        card = quantize(options, log=lambda m: print(m, file=sys.stderr), progress=progress)
    finally:
        for bar in bars:
            bar.close()
    print(json.dumps({"model": card["id"], "out": args.out, "quantization": card["quantization"]}, indent=2))
    return 0


def cmd_bench(args) -> int:
    from .bench import run_bench

    return run_bench(args)


def _sizes(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated point counts, each from 1,000 to 10,000,000."""
    parse = _int_in(1000, 10_000_000)
    sizes = tuple(parse(part.strip().replace("_", "")) for part in text.split(",") if part.strip())
    if not sizes:
        raise argparse.ArgumentTypeError("give at least one size, e.g. 10000,100000")
    return sizes


def _fraction(text: str) -> float:
    """An argparse type: a number from 0 to 1 (exclusive of 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{value} is out of range: give a fraction from 0 to below 1")
    return value


def _int_in(low: int, high: int | None = None):
    """An argparse type: a whole number from low to high."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{value} is out of range: give {bound}")
        return value

    return parse


def _add_query_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--top-k", type=_int_in(1, 100), default=5, help="results to return, 1..100 (default 5)"
    )
    parser.add_argument("--category", help="only this category")
    parser.add_argument("--brand", help="only this brand")
    parser.add_argument("--price-min", type=float, help="lowest price")
    parser.add_argument("--price-max", type=float, help="highest price")
    parser.add_argument("--no-group", action="store_true", help="return images, not one result per product")
    parser.add_argument("--json", action="store_true", help="print JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visual-search",
        description="Visual product search: index product photos and find products by photo. "
        "The store is chosen by QDRANT_URL / QDRANT_PATH / COLLECTION (see docs/configuration.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="index the demo catalogue in memory and answer a sample query")
    demo.add_argument(
        "--persist",
        action="store_true",
        help="index into the configured store (QDRANT_PATH) instead of memory",
    )
    demo.add_argument("--folder", help="catalogue folder (default: data/demo-catalog)")
    demo.add_argument("--bucket", default="demo-catalog", help="bucket name recorded per image")
    demo.add_argument("--query", help="query image (default: the folder's first image)")
    _add_query_options(demo)
    demo.set_defaults(func=cmd_demo)

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
    ingest.add_argument("--batch", type=_int_in(1, 1024), default=32, help="images per batch (default 32)")
    ingest.add_argument(
        "--prune",
        action="store_true",
        help="for a folder: delete the points of --bucket whose file is gone "
        "from the folder (use one --bucket label per folder)",
    )
    ingest.add_argument("--quiet", action="store_true", help="no progress bar")
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
        type=_int_in(1, 100),
        default=10,
        help="with --via-queue: S3 records per message (default 10; the function takes 10 messages a batch)",
    )
    ingest.set_defaults(func=cmd_ingest)

    reconcile = sub.add_parser(
        "reconcile",
        help="compare a bucket with the collection and repair any drift",
        description="Index images missing from (or stale in) the collection and delete points "
        "whose object is gone. Exit code 3 with --dry-run when there is drift.",
    )
    reconcile.add_argument("source", help="s3://bucket/prefix")
    reconcile.add_argument("--dry-run", action="store_true", help="only report the drift")
    reconcile.add_argument("--quiet", action="store_true", help="no progress bar")
    reconcile.set_defaults(func=cmd_reconcile)

    redrive = sub.add_parser(
        "redrive",
        help="send the ingest DLQ's messages back to the ingest queue",
        description="Move every message from the dead-letter queue back to the queue it came "
        "from (or --to), once the cause of the failures is fixed. Messages are sent "
        "before they are deleted: nothing is lost. --dry-run lists them instead.",
    )
    redrive.add_argument("--dlq", required=True, help="dead-letter queue name or URL")
    redrive.add_argument("--to", help="target queue name or URL (default: the DLQ's source queue)")
    redrive.add_argument("--max", type=_int_in(1), help="move at most this many messages")
    redrive.add_argument("--dry-run", action="store_true", help="list the parked messages only")
    redrive.add_argument("--quiet", action="store_true", help="no progress bar")
    redrive.set_defaults(func=cmd_redrive)

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
        "--memory-mb", type=_int_in(128, 10240), default=2048, help="for the estimate: MemorySize (2048)"
    )
    reindex.add_argument(
        "--concurrency", type=_int_in(1), default=5, help="for the estimate: IngestMaxConcurrency (5)"
    )
    reindex.add_argument("--quiet", action="store_true", help="no progress bar")
    reindex.set_defaults(func=cmd_reindex)

    adapt = sub.add_parser(
        "adapt",
        help="fit the catalogue's projection (learned whitening) and move the catalogue into it",
        description="Fit a projection on the current catalogue's vectors and product labels "
        "(a sample stratified by product), print the chosen shrinkage and the cross-validated "
        "recall@1 before and after, write the adapted vector of every point (no inference) into "
        "a new collection and switch the COLLECTION alias to it atomically. A catalogue too "
        "small to gain keeps the raw space, with the reason.",
    )
    adapt.add_argument("--dry-run", action="store_true", help="fit and report only; write nothing")
    adapt.add_argument("--json", action="store_true", help="print the result as JSON")
    adapt.add_argument("--quiet", action="store_true", help="no progress bar")
    adapt.set_defaults(func=cmd_adapt)

    search = sub.add_parser("search", help="find the products nearest to a photo")
    search.add_argument("image", help="path of the query image")
    _add_query_options(search)
    search.set_defaults(func=cmd_search)

    dev = sub.add_parser(
        "dev",
        help="run the whole system locally: S3 emulator, ingest, REST API, search page",
        description="Start, on 127.0.0.1 and without AWS or Docker: an S3 endpoint (moto) with "
        "the product-images bucket; delivery of its create/delete notifications to "
        "the ingest function; the REST API (API Gateway proxy events for the search "
        "function) and a search page at /; an embedded Qdrant under --data-dir, kept "
        "between runs. By default the demo catalogue is uploaded into the bucket and "
        "indexed through the normal ingest path. Ctrl-C stops everything cleanly.",
    )
    dev.add_argument(
        "--api-port",
        type=_int_in(0, 65535),
        default=8000,
        help="port of the REST API and search page (default 8000; 0 = any free)",
    )
    dev.add_argument(
        "--s3-port",
        type=_int_in(0, 65535),
        default=9000,
        help="port of the S3 endpoint (default 9000; 0 = any free)",
    )
    dev.add_argument(
        "--data-dir",
        default=".data",
        help="folder for the embedded Qdrant and the bucket's files (default .data)",
    )
    dev.add_argument("--bucket", default="product-images", help="bucket name (default product-images)")
    dev.add_argument("--no-demo", action="store_true", help="do not upload the demo catalogue")
    dev.add_argument("--verbose", action="store_true", help="show the functions' JSON logs")
    dev.set_defaults(func=cmd_dev)

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
    upload.add_argument("--workers", type=_int_in(1, 64), default=8, help="concurrent uploads (default 8)")
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
    upload.set_defaults(func=cmd_upload)

    ev = sub.add_parser(
        "eval",
        help="measure retrieval quality on an image folder (leave-one-out)",
        description="Index every image of DIR (one subfolder per product) into a temporary "
        "collection and query with each image against all the others: recall@1, "
        "recall@5, recall@10, mAP@R, indexing images/s and query latency.",
    )
    ev.add_argument("folder", metavar="DIR", help="one subfolder per product")
    ev.add_argument(
        "--json", action="store_true", help="print one JSON object (metric keys, model id, timings)"
    )
    ev.add_argument("--limit", type=_int_in(2), help="evaluate an even subset of this many images")
    ev.add_argument("--model-dir", help="another model folder (model.onnx + model.json)")
    ev.add_argument("--baseline", choices=["pixels"], help="evaluate the raw-pixel baseline")
    ev.add_argument(
        "--rerank-model-dir", help="rerank the candidates with this second model (RERANK_MODEL_DIR)"
    )
    ev.add_argument("--flip", action="store_true", help="average each embedding with its mirror image's")
    ev.add_argument(
        "--crop",
        choices=["center", "full"],
        help="override the card's crop: center = ImageNet's 87.5%% centre crop, full = the whole image",
    )
    ev.add_argument(
        "--queries",
        metavar="PATTERNS",
        help="split protocol: file names matching these comma-separated patterns ('val_*,test_*') "
        "are the queries, the rest the gallery (default: leave-one-out)",
    )
    ev.add_argument(
        "--gallery",
        metavar="PATTERNS",
        help="with --queries: only file names matching these patterns are the gallery, the others "
        "are left out ('iconic_*': the web-shop protocol, one studio photo per product)",
    )
    ev.add_argument(
        "--adapt",
        action="store_true",
        help="also measure the catalogue adaptation, fitted on the gallery only (leave-one-out: k folds)",
    )
    ev.add_argument("--folds", type=_int_in(2), default=5, help="folds for leave-one-out with --adapt (5)")
    ev.add_argument(
        "--leave-out",
        type=_fraction,
        default=0.0,
        metavar="FRACTION",
        help="with --queries and --adapt: this share of the products loses its gallery photos, so "
        "their queries measure 'not in our catalogue' (the confidence's no_match)",
    )
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_eval)

    au = sub.add_parser(
        "audit",
        help="list photos nearer to another product than to their own (likely mislabels)",
        description="Embed every image of DIR (one subfolder per product) and list the photos whose "
        "most similar photo of another product beats every photo of their own, worst first.",
    )
    au.add_argument("folder", metavar="DIR", help="one subfolder per product")
    au.add_argument("--top", type=_int_in(1), default=50, help="suspects to list (default 50)")
    au.add_argument("--json", action="store_true", help="print one JSON object")
    au.set_defaults(func=cmd_audit)

    optimize = sub.add_parser(
        "optimize",
        help="build the embedded store's HNSW index now (ingest and reindex do it when they finish)",
        description="Build the HNSW graphs and merge the segments of the embedded store's collection. "
        "It blocks while it runs: never while a `visual-search dev` serves the same folder. "
        "Nothing to do on a Qdrant server.",
    )
    optimize.set_defaults(func=cmd_optimize)

    migrate = sub.add_parser(
        "migrate-store",
        help="convert a qdrant-client local-mode folder to the embedded engine (qdrant-edge)",
        description="Copy every collection, alias, vector and payload of a folder written by "
        "qdrant-client's local mode (the embedded store before qdrant-edge) into qdrant-edge "
        "shards in place; the old files move to local-mode-backup/.",
    )
    migrate.add_argument("path", nargs="?", help="the folder (default: QDRANT_PATH)")
    migrate.set_defaults(func=cmd_migrate_store)

    info = sub.add_parser("info", help="show the model and the store in use")
    info.set_defaults(func=cmd_info)

    finetune = sub.add_parser(
        "finetune",
        help="fine-tune the model on a catalogue's own photos (needs the train extra: torch)",
        description="Train the current model's architecture from its ImageNet weights on the "
        "product labels of SOURCE, validate on shoppers' photos (--shopper-views) or held-back "
        "ones and write a model folder (model.onnx + model.json) for MODEL_DIR when it beats the "
        "base model (or the held-back photos cannot tell; --force writes it anyway).",
    )
    finetune.add_argument("source", help="a folder (one subfolder per product) or s3://bucket/prefix")
    finetune.add_argument(
        "--out", help="the model folder to write (with --sagemaker --wait: where the job's model is unpacked)"
    )
    finetune.add_argument("--epochs", type=_int_in(0, 100), help="training epochs (default 4)")
    finetune.add_argument(
        "--image-size", type=_int_in(32, 1024), help="input px (default: the current model's)"
    )
    finetune.add_argument("--seed", type=int, default=0, help="seed of the split, order and augmentation")
    finetune.add_argument("--device", choices=["cpu", "cuda"], help="default: CUDA when present, else CPU")
    finetune.add_argument("--lr", type=float, help="peak learning rate (default 1e-4)")
    finetune.add_argument(
        "--shopper-views",
        metavar="PATTERNS",
        help="file names or keys matching these comma-separated patterns ('val_*,test_*', "
        "'shopper/*') are shoppers' photos: never trained on, the accept check decides on them "
        "(default: the shopper views shoppers' clicks left under shopper-views/ once there are "
        "30 of them from 3 products or more, else photos of each product held back)",
    )
    finetune.add_argument(
        "--force", action="store_true", help="write the model even when the accept check refuses it"
    )
    finetune.add_argument(
        "--int8",
        action="store_true",
        help="also write OUT-int8: the fine-tuned model statically quantised, calibrated on SOURCE",
    )
    finetune.add_argument("--reindex", action="store_true", help="then move the catalogue to the new model")
    finetune.add_argument(
        "--sagemaker",
        action="store_true",
        help="run the fine-tune as a SageMaker training job (AWS's PyTorch image, this trainer as entry "
        "point) on the photos of s3://bucket/prefix; needs --role and MODELS_BUCKET",
    )
    finetune.add_argument("--role", metavar="ARN", help="with --sagemaker: the job's execution role")
    finetune.add_argument(
        "--instance-type", default="ml.m5.2xlarge", help="with --sagemaker: the instance (ml.m5.2xlarge)"
    )
    finetune.add_argument(
        "--wait",
        action="store_true",
        help="with --sagemaker: follow the job, then publish its model to the registry when it beat the "
        "current one",
    )
    finetune.add_argument(
        "--then-reindex",
        metavar="QUEUE",
        help="with --sagemaker: then move the catalogue to the published model through this ingest queue",
    )
    finetune.add_argument("--job-name", help="with --sagemaker: the training job's name (default: by time)")
    finetune.add_argument(
        "--max-runtime",
        type=_int_in(60, 28 * 86400),
        default=86400,
        metavar="S",
        help="with --sagemaker: stop the job after S seconds (86400)",
    )
    finetune.add_argument("--quiet", action="store_true", help="no progress bars")
    finetune.set_defaults(func=cmd_finetune)

    model = sub.add_parser(
        "model", help="model folders: quantise; the registry: publish, list; model changes"
    )
    model_sub = model.add_subparsers(dest="model_command", required=True)
    quantize = model_sub.add_parser(
        "quantize",
        help="write a statically quantised (int8) copy of a model folder",
        description="onnxruntime static quantisation (QDQ, per-channel int8 weights, uint8 "
        "activations) calibrated on catalogue photos preprocessed as the service does; needs the "
        "onnx package (the train extra).",
    )
    quantize.add_argument("model_dir", help="the model folder to quantise (model.onnx + model.json)")
    quantize.add_argument(
        "--calibration", required=True, help="a catalogue folder (one subfolder per product) to calibrate on"
    )
    quantize.add_argument("--out", required=True, help="the int8 model folder to write")
    quantize.add_argument(
        "--images",
        type=_int_in(8, 10_000),
        default=256,
        help="calibration photos, spread over products (256)",
    )
    quantize.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax")
    quantize.add_argument(
        "--patterns", metavar="PATTERNS", help="only calibration files whose names match ('train_*')"
    )
    quantize.add_argument("--quiet", action="store_true", help="no progress bar")
    quantize.set_defaults(func=cmd_model_quantize)
    from .model_cli import add_commands as add_model_commands

    add_model_commands(model_sub)

    clicks = sub.add_parser(
        "eval-clicks",
        help="measure learning from shoppers' clicks through the API",
        description="Index the --catalogue photos, let a share of each product's --queries photos "
        "search and click through POST /search and POST /feedback, score the last half of them "
        "before and after (src/visual_search/dev/clicks.py).",
    )
    clicks.add_argument("folder", help="one folder per product (e.g. ../shared/datasets/grocery-dev-45)")
    clicks.add_argument("--catalogue", default="iconic_*", help="file patterns of the catalogue's photos")
    clicks.add_argument("--queries", default="val_*,test_*", help="file patterns of the shoppers' photos")
    clicks.add_argument("--share", type=float, default=0.5, help="share of each product's shoppers clicking")
    clicks.add_argument("--misclicks", type=float, default=0.0, help="share of clicks on a wrong product")
    clicks.add_argument("--seed", type=int, default=0)
    clicks.add_argument("--json", action="store_true", help="one JSON line")
    clicks.add_argument("--quiet", action="store_true", help="no progress bar")
    clicks.set_defaults(func=cmd_eval_clicks)

    from .shopper_views_cli import add_parser as add_shopper_views

    add_shopper_views(sub)

    bench = sub.add_parser("bench", help="measure decoding, inference and search speed")
    bench.add_argument("--repeat", type=_int_in(1), default=30, help="timed runs per case (default 30)")
    bench.add_argument("--json", action="store_true", help="print only JSON")
    bench.add_argument(
        "--only",
        help="comma-separated sections: embed, ingest, search, scale "
        "(the embedded engine at 10k/100k synthetic points, HNSW + int8), cold, int8 (the "
        "default int8 model against its float source: session.run at batch 1 and 8, query, ingest)",
    )
    bench.add_argument(
        "--scale-sizes",
        type=_sizes,
        default=(10_000, 100_000),
        help="comma-separated point counts for the scale section (default 10000,100000; "
        "1000000 takes about an hour on 2 cores, 5 GB of vectors in RAM and ~8 GB of disk)",
    )
    bench.add_argument(
        "--cold-runs",
        type=_int_in(1, 100),
        default=5,
        help="fresh processes of each side (floor, function) for the cold section, alternated "
        "(default 5; single ratios move by +-0.15 even on a quiet machine: use 15 or more to compare trees)",
    )
    bench.add_argument(
        "--scale-keep",
        metavar="DIR",
        help="keep each size's built store in DIR/scale-<size> and search it again in later runs "
        "with the same build settings (no rebuild): compare query-time settings such as "
        "QDRANT_FILTERED_HNSW_EF or QDRANT_QUANTIZATION_OVERSAMPLING",
    )
    bench.set_defaults(func=cmd_bench)
    return parser


def _store_in_use(args, exc: StoreUnavailableError) -> int:
    """The embedded catalogue is locked: through the local stack holding it, or what to run."""
    import os

    from .devstack.running import info_from, instead, running_stack

    stack = running_stack(os.environ.get("QDRANT_PATH", ".data/qdrant"))
    if stack is None or exc.code == "model_unavailable":
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.command == "info":
        print(json.dumps(info_from(stack), indent=2))
        return 0
    through = _through_stack(args, stack)
    if through is not None:
        return through
    print(f"error: {instead(args.command, getattr(args, 'source', None), stack)}", file=sys.stderr)
    return 1


def _through_stack(args, stack: dict) -> int | None:
    """A model change asked of the running local stack, which holds the store (None: not one)."""
    from ..ops.sync import parse_s3_url
    from .devstack.models import ask

    request: tuple[str, str, dict | None]
    if args.command == "reindex" and not args.via_queue:
        body = {
            "model": args.model,
            "keep_previous_h": args.keep_previous,
            "keep_old": args.keep_old,
            "sources": [list(parse_s3_url(s)) for s in args.source],
        }
        request = ("POST", "/_local/reindex", body)
    elif args.command == "model" and args.model_command == "status":
        request = ("GET", "/_local/model/status", None)
    elif args.command == "model" and args.model_command == "rollback":
        request = ("POST", "/_local/model/rollback", {"keep_previous_h": args.keep_previous})
    else:
        return None
    print(f"through the local stack at {stack['api']} (it holds the catalogue) ...", file=sys.stderr)
    try:
        answer = ask(stack, *request)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    answer.pop("usage", None)
    answer.pop("serving", None)
    print(json.dumps(answer, indent=2))
    return 0


def cmd_upload(args) -> int:
    from ..aws import s3_client
    from ..ops.sync import parse_s3_url
    from .folders import catalogue_gaps, scan
    from .upload import UploadReport, upload_folder

    bucket, prefix = parse_s3_url(args.target)
    folder = Path(args.folder)
    images = scan(folder)
    if args.strict:
        rows, folders = catalogue_gaps(folder, images)
        gaps = UploadReport(rows_without_photos=rows, folders_without_row=folders).gap_lines()
        if gaps:
            print("error: --strict: products.csv and the folders disagree; nothing uploaded", file=sys.stderr)
            print("\n".join(gaps), file=sys.stderr)
            return 1
    s3 = s3_client(endpoint_url=args.endpoint_url)
    bar = _progress(None, len(images), f"uploading to {args.target}", args.quiet)
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


def _wait_indexed(args, bucket: str, prefix: str, images) -> int:
    """``upload --wait``: through the local stack holding the catalogue (its backlog empty), or
    by asking the catalogue for every uploaded key and ETag."""
    import os
    import time

    from .devstack.running import running_stack
    from .upload import expected_objects, wait_until_indexed

    stack = running_stack(os.environ.get("QDRANT_PATH", ".data/qdrant"))
    if stack is not None and (args.endpoint_url or "").rstrip("/") == stack["s3"].rstrip("/"):
        deadline = time.monotonic() + args.timeout
        from .devstack.models import ask

        while time.monotonic() < deadline:
            health = ask(stack, "GET", "/health")
            backlog = health.get("backlog") or {}
            if not backlog.get("queued") and not backlog.get("in_flight"):
                points = health.get("points")
                print(f"indexed: the local stack's backlog is empty ({points} images in the catalogue)")
                return 0
            time.sleep(0.5)
        print(
            f"error: the local stack still indexes after {args.timeout:g} s ({stack['api']}/health)",
            file=sys.stderr,
        )
        return 1
    from ..catalog import get_catalog

    expected = expected_objects(images, bucket, prefix)
    catalog = get_catalog()
    bar = _progress(None, len(expected), "indexing", args.quiet)
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


def main(argv: Sequence[str] | None = None) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except StoreUnavailableError as exc:
        return _store_in_use(args, exc)
    except (VisualSearchError, ValueError, BotoCoreError, ClientError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a missing file, a folder given as an image, a data dir that is a file
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
