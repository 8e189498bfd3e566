"""``visual-search model publish|list|status|rollback``: the model registry and model changes.

``publish`` and ``list`` work on the registry (``MODELS_BUCKET``, or ``--bucket``); ``status``
and ``rollback`` on the catalogue (visual_search.ops.migration). The change itself is
``visual-search reindex --via-queue QUEUE --model MODEL_ID``.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _registry(args) -> Any:
    from ..aws import s3_client
    from ..config import get_settings
    from ..registry import ModelRegistry

    models = get_settings().models
    bucket = args.bucket or models.bucket
    if not bucket:
        raise ValueError("give --bucket (or set MODELS_BUCKET): the bucket of the model registry")
    return ModelRegistry(s3_client(endpoint_url=args.endpoint_url), bucket, models.prefix, models.cache_dir)


def cmd_publish(args) -> int:
    result = _registry(args).publish(args.model_dir)
    print(json.dumps(result, indent=2))
    if result["status"] == "published":
        print(
            f"move the catalogue to it: visual-search reindex --via-queue QUEUE --model {result['id']}",
            file=sys.stderr,
        )
    return 0


def usage(catalog: Any) -> tuple[dict[str, list[str]], str | None]:
    """Which collections each model (by registry id) fills, and the model serving now."""
    used: dict[str, list[str]] = {}
    current = catalog.physical_collection()
    serving = None
    for name in catalog.collections():
        meta = catalog.metadata_of(name)
        model = meta.get("model_card_id") or meta.get("model_id")
        if model:
            used.setdefault(str(model), []).append(name)
            if name == current:
                serving = str(model)
    return used, serving


def _usage(get_catalog) -> tuple[dict[str, list[str]], str | None]:
    """``usage`` of the catalogue, or of the running local stack's when it holds the store."""
    import os

    from ..errors import StoreUnavailableError

    try:
        return usage(get_catalog())
    except StoreUnavailableError:
        from .devstack.models import ask
        from .devstack.running import running_stack

        stack = running_stack(os.environ.get("QDRANT_PATH", ".data/qdrant"))
        if stack is None:
            raise
        answer = ask(stack, "GET", "/_local/model/status")
        return answer["usage"], answer["serving"]


def cmd_list(args) -> int:
    from ..catalog import get_catalog

    published = [m.as_dict() for m in _registry(args).models()]
    used, serving = _usage(get_catalog)
    for model in published:
        model["collections"] = used.get(model["id"], [])
        model["current"] = model["id"] == serving
    if args.json:
        print(json.dumps(published, indent=2))
        return 0
    for m in published:
        mark = "*" if m["current"] else " "
        print(
            f"{mark} {m['id']}  {m['created']}  {m['size'] / 1e6:.1f} MB  {m['precision']}  "
            f"base: {m['base_model'] or '-'}  collections: {', '.join(m['collections']) or '-'}"
        )
    print(f"{len(published)} models in {_registry(args).where()}" + ("; * serves now" if serving else ""))
    return 0


def cmd_status(args) -> int:
    from ..catalog import get_catalog
    from ..ops.migration import status

    print(json.dumps(status(get_catalog()), indent=2))
    return 0


def cmd_rollback(args) -> int:
    from ..catalog import get_catalog
    from ..ops.migration import rollback

    print(json.dumps(rollback(get_catalog(), args.keep_previous), indent=2))
    return 0


def add_commands(model_sub) -> None:
    """The registry's subcommands, under ``visual-search model``."""
    from ..ops.migration import KEEP_PREVIOUS_H

    def registry_options(parser) -> None:
        parser.add_argument("--bucket", help="the registry's bucket (default: MODELS_BUCKET)")
        parser.add_argument("--endpoint-url", help="an S3 endpoint (e.g. the local stack's)")

    publish = model_sub.add_parser(
        "publish",
        help="upload a model folder to the registry (s3://<bucket>/models/<id>/)",
        description="Check the card's sha256 against model.onnx and upload both under the card's "
        "id; publishing the same folder again changes nothing, another folder under a taken id is refused.",
    )
    publish.add_argument("model_dir", help="the model folder (model.onnx + model.json)")
    registry_options(publish)
    publish.set_defaults(func=cmd_publish)

    listing = model_sub.add_parser(
        "list", help="the registry's models: id, created, size, base model, collections, current"
    )
    registry_options(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_list)

    state = model_sub.add_parser(
        "status", help="the model serving the catalogue, a model change's progress (done / total, rate, ETA)"
    )
    state.set_defaults(func=cmd_status)

    back = model_sub.add_parser(
        "rollback",
        help="point the catalogue back at the collection the last model change left",
        description="The alias moves back atomically; the collection it leaves is kept in turn.",
    )
    back.add_argument(
        "--keep-previous",
        type=float,
        default=KEEP_PREVIOUS_H,
        metavar="HOURS",
        help=f"keep the collection left for this long (default {KEEP_PREVIOUS_H:.0f})",
    )
    back.set_defaults(func=cmd_rollback)
