"""``visual-search dev``: the whole system on this machine (the local stack, ../devstack/)."""

from __future__ import annotations

import sys
from pathlib import Path

from .common import int_in


def add(sub) -> None:
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
        type=int_in(0, 65535),
        default=8000,
        help="port of the REST API and search page (default 8000; 0 = any free)",
    )
    dev.add_argument(
        "--s3-port",
        type=int_in(0, 65535),
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
    dev.set_defaults(func=run)


def run(args) -> int:
    from ..devstack.stack import DevStack, StackError, StackOptions

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
