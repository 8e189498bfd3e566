"""What the commands share: argument types, the query options, progress bars, and the answer
when the embedded catalogue is held by a running local stack."""

from __future__ import annotations

import argparse
import json
import sys

from ...errors import StoreUnavailableError


def progress(iterable, total: int | None, desc: str, quiet: bool = False):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="img", disable=quiet, file=sys.stderr)


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def int_in(low: int, high: int | None = None):
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


def fraction(text: str) -> float:
    """An argparse type: a number from 0 to 1 (exclusive of 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{value} is out of range: give a fraction from 0 to below 1")
    return value


def sizes(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated point counts, each from 1,000 to 10,000,000."""
    parse = int_in(1000, 10_000_000)
    found = tuple(parse(part.strip().replace("_", "")) for part in text.split(",") if part.strip())
    if not found:
        raise argparse.ArgumentTypeError("give at least one size, e.g. 10000,100000")
    return found


def add_query_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--top-k", type=int_in(1, 100), default=5, help="results to return, 1..100 (default 5)"
    )
    parser.add_argument("--category", help="only this category")
    parser.add_argument("--brand", help="only this brand")
    parser.add_argument("--price-min", type=float, help="lowest price")
    parser.add_argument("--price-max", type=float, help="highest price")
    parser.add_argument("--no-group", action="store_true", help="return images, not one result per product")
    parser.add_argument("--json", action="store_true", help="print JSON")


def query_from_args(args):
    from ...domain import Filter, Query

    filters: dict = {}
    if args.category:
        filters["category"] = args.category
    if args.brand:
        filters["brand"] = args.brand
    if args.price_min is not None or args.price_max is not None:
        filters["price"] = {"gte": args.price_min, "lte": args.price_max}
    return Query(top_k=args.top_k, filters=Filter.of(filters), group_by_product=not args.no_group)


def print_hits(result, as_json: bool) -> None:
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


def running_local_stack() -> dict | None:
    """The local stack serving the embedded catalogue (QDRANT_PATH), if one runs."""
    import os

    from ..devstack.running import running_stack

    return running_stack(os.environ.get("QDRANT_PATH", ".data/qdrant"))


def store_in_use(args, exc: StoreUnavailableError) -> int:
    """The embedded catalogue is locked: through the local stack holding it, or what to run."""
    from ..devstack.running import info_from, instead

    stack = running_local_stack()
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


def _stack_request(args) -> tuple[str, str, dict | None] | None:
    """The local stack's request for a model change (None: the command is not one)."""
    from ...ops.sync import parse_s3_url

    if args.command == "reindex" and not args.via_queue:
        body = {
            "model": args.model,
            "keep_previous_h": args.keep_previous,
            "keep_old": args.keep_old,
            "sources": [list(parse_s3_url(s)) for s in args.source],
        }
        return ("POST", "/_local/reindex", body)
    if args.command == "model" and args.model_command == "status":
        return ("GET", "/_local/model/status", None)
    if args.command == "model" and args.model_command == "rollback":
        return ("POST", "/_local/model/rollback", {"keep_previous_h": args.keep_previous})
    return None


def _through_stack(args, stack: dict) -> int | None:
    """A model change asked of the running local stack, which holds the store (None: not one)."""
    from ..devstack.models import ask

    request = _stack_request(args)
    if request is None:
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
