"""``visual-search search``: find the products nearest to a photo."""

from __future__ import annotations

from pathlib import Path

from .common import add_query_options, print_hits, query_from_args


def add(sub) -> None:
    search = sub.add_parser("search", help="find the products nearest to a photo")
    search.add_argument("image", help="path of the query image")
    add_query_options(search)
    search.set_defaults(func=run)


def run(args) -> int:
    from ...catalog import get_catalog

    result = get_catalog().search_image(Path(args.image).read_bytes(), query_from_args(args))
    print_hits(result, args.json)
    return 0
