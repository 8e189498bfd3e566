"""The top-level ``visual-search`` parser, built from the command modules."""

from __future__ import annotations

import argparse

from . import (
    adapt,
    bench,
    demo,
    evaluate,
    finetune,
    info,
    ingest,
    local,
    model,
    reindex,
    search,
    shopper_views,
    upload_command,
)

# Each registers its subcommand, in the order ``visual-search --help`` lists them.
COMMANDS = (
    demo.add,
    ingest.add_ingest,
    ingest.add_reconcile,
    ingest.add_redrive,
    reindex.add_reindex,
    adapt.add,
    search.add,
    local.add,
    upload_command.add,
    evaluate.add_eval,
    evaluate.add_audit,
    reindex.add_optimize,
    reindex.add_migrate_store,
    info.add,
    finetune.add,
    model.add,
    evaluate.add_eval_clicks,
    shopper_views.add,
    bench.add,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visual-search",
        description="Visual product search: index product photos and find products by photo. "
        "The store is chosen by QDRANT_URL / QDRANT_PATH / COLLECTION (see docs/configuration.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser
