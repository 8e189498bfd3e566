"""``visual-search shopper-views list|purge``: the photos shoppers' clicks added to products."""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime


def _when(text: str) -> datetime:
    """A date or date-time (ISO 8601; UTC when no zone is given)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date or date-time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _views(args):
    from ...aws import s3_client
    from ...config import get_settings
    from ...feedback import ShopperViews

    bucket = args.bucket or os.environ.get("BUCKET")
    if not bucket:
        raise ValueError("give --bucket (or set BUCKET)")
    return ShopperViews(s3_client(endpoint_url=args.endpoint_url), bucket, get_settings().feedback)


def cmd_list(args) -> int:
    views = [v.as_dict() for v in _views(args).list_views(args.product, args.before)]
    if args.json:
        print(json.dumps(views, indent=2))
    else:
        for v in views:
            print(f"{v['modified']}  {v['product_id']}  {v['key']}  {v['size']:,} bytes")
        products = len({v["product_id"] for v in views})
        print(f"{len(views)} shopper views of {products} products")
    return 0


def cmd_purge(args) -> int:
    views = _views(args)
    if args.dry_run:
        keys = [v.key for v in views.list_views(args.product, args.before)]
        print(f"would delete {len(keys)} shopper views (their points follow through the ingest function)")
        return 0
    keys = views.purge(args.product, args.before)
    print(f"deleted {len(keys)} shopper views (their points follow through the ingest function)")
    return 0


def add(sub) -> None:
    views = sub.add_parser(
        "shopper-views",
        help="list or purge the photos shoppers' clicks added to products",
        description="Shopper views are the search photos shoppers picked a product for (POST "
        "/feedback), kept in the bucket under SHOPPER_VIEWS_PREFIX and indexed like catalogue photos.",
    )
    commands = views.add_subparsers(dest="views_command", required=True)
    for name, func, text in (
        ("list", cmd_list, "list shopper views"),
        ("purge", cmd_purge, "delete shopper views (the catalogue follows)"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("--bucket", help="the images bucket (default: $BUCKET)")
        command.add_argument("--endpoint-url", help="an S3 endpoint (e.g. the local stack's)")
        command.add_argument("--product", help="only this product's views")
        command.add_argument("--before", type=_when, help="only views older than this date (ISO 8601)")
        if name == "list":
            command.add_argument("--json", action="store_true", help="JSON instead of lines")
        else:
            command.add_argument("--dry-run", action="store_true", help="only count what would go")
        command.set_defaults(func=func)
