"""``visual-search demo``: index the demo catalogue in memory and answer a sample query."""

from __future__ import annotations

from pathlib import Path

from ..folders import ingest_folder
from .common import add_query_options, print_hits, query_from_args


def add(sub) -> None:
    demo = sub.add_parser("demo", help="index the demo catalogue in memory and answer a sample query")
    demo.add_argument(
        "--persist",
        action="store_true",
        help="index into the configured store (QDRANT_PATH) instead of memory",
    )
    demo.add_argument("--folder", help="catalogue folder (default: data/demo-catalog)")
    demo.add_argument("--bucket", default="demo-catalog", help="bucket name recorded per image")
    demo.add_argument("--query", help="query image (default: the folder's first image)")
    add_query_options(demo)
    demo.set_defaults(func=run)


def run(args) -> int:
    import os

    from ...catalog import get_catalog
    from ..folders import DEMO_CATALOG, scan

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
    result = catalog.search_image(query_image.read_bytes(), query_from_args(args))
    print_hits(result, args.json)
    return 0
