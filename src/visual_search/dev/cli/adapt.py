"""``visual-search adapt``: fit the catalogue's projection and move the catalogue into it."""

from __future__ import annotations

from .common import log_to_stderr, progress


def add(sub) -> None:
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
    adapt.set_defaults(func=run)


def run(args) -> int:
    from ...adaptation.adapter import adapt, print_result
    from ...catalog import get_catalog

    catalog = get_catalog()
    total = None if args.dry_run else catalog.count()  # the copy writes every point once
    bar = progress(None, total, "writing adapted vectors", args.quiet or args.dry_run)
    result = adapt(catalog, dry_run=args.dry_run, progress=bar.update, log=log_to_stderr)
    bar.close()
    print_result(result, as_json=args.json)
    return 0 if result.status != "incomplete" else 1
