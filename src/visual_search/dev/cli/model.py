"""``visual-search model quantize|publish|list|status|rollback``: model folders, the model
registry and model changes.

``quantize`` works on a model folder; ``publish`` and ``list`` on the registry (``MODELS_BUCKET``,
or ``--bucket``); ``status`` and ``rollback`` on the catalogue (visual_search.ops.migration). The
change itself is ``visual-search reindex --via-queue QUEUE --model MODEL_ID``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .common import int_in, log_to_stderr, progress, running_local_stack


def add(sub) -> None:
    model = sub.add_parser(
        "model", help="model folders: quantise; the registry: publish, list; model changes"
    )
    model_sub = model.add_subparsers(dest="model_command", required=True)
    _add_quantize(model_sub)
    _add_publish(model_sub)
    _add_list(model_sub)
    _add_status(model_sub)
    _add_rollback(model_sub)


def _add_quantize(model_sub) -> None:
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
        type=int_in(8, 10_000),
        default=256,
        help="calibration photos, spread over products (256)",
    )
    quantize.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax")
    quantize.add_argument(
        "--patterns", metavar="PATTERNS", help="only calibration files whose names match ('train_*')"
    )
    quantize.add_argument("--quiet", action="store_true", help="no progress bar")
    quantize.set_defaults(func=run_quantize)


def _registry_options(parser) -> None:
    parser.add_argument("--bucket", help="the registry's bucket (default: MODELS_BUCKET)")
    parser.add_argument("--endpoint-url", help="an S3 endpoint (e.g. the local stack's)")


def _add_publish(model_sub) -> None:
    publish = model_sub.add_parser(
        "publish",
        help="upload a model folder to the registry (s3://<bucket>/models/<id>/)",
        description="Check the card's sha256 against model.onnx and upload both under the card's "
        "id; publishing the same folder again changes nothing, another folder under a taken id is refused.",
    )
    publish.add_argument("model_dir", help="the model folder (model.onnx + model.json)")
    _registry_options(publish)
    publish.set_defaults(func=run_publish)


def _add_list(model_sub) -> None:
    listing = model_sub.add_parser(
        "list", help="the registry's models: id, created, size, base model, collections, current"
    )
    _registry_options(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=run_list)


def _add_status(model_sub) -> None:
    state = model_sub.add_parser(
        "status", help="the model serving the catalogue, a model change's progress (done / total, rate, ETA)"
    )
    state.set_defaults(func=run_status)


def _add_rollback(model_sub) -> None:
    from ...ops.migration import KEEP_PREVIOUS_H

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
    back.set_defaults(func=run_rollback)


def run_quantize(args) -> int:
    from ..training.quantize import QuantizeOptions, quantize

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

    def progress_of(desc: str, total: int):
        bars.append(progress(None, total, desc, args.quiet))
        return bars[-1].update

    try:
        card = quantize(options, log=log_to_stderr, progress=progress_of)
    finally:
        for bar in bars:
            bar.close()
    print(json.dumps({"model": card["id"], "out": args.out, "quantization": card["quantization"]}, indent=2))
    return 0


def _registry(args) -> Any:
    from ...aws import s3_client
    from ...config import get_settings
    from ...registry import ModelRegistry

    models = get_settings().models
    bucket = args.bucket or models.bucket
    if not bucket:
        raise ValueError("give --bucket (or set MODELS_BUCKET): the bucket of the model registry")
    return ModelRegistry(s3_client(endpoint_url=args.endpoint_url), bucket, models.prefix, models.cache_dir)


def run_publish(args) -> int:
    result = _registry(args).publish(args.model_dir)
    print(json.dumps(result, indent=2))
    if result["status"] == "published":
        print(
            f"move the catalogue to it: visual-search reindex --via-queue QUEUE --model {result['id']}",
            file=sys.stderr,
        )
    return 0


def _usage(get_catalog) -> tuple[dict[str, list[str]], str | None]:
    """``usage`` of the catalogue, or of the running local stack's when it holds the store."""
    from ...errors import StoreUnavailableError
    from ..devstack.models import ask, usage

    try:
        return usage(get_catalog())
    except StoreUnavailableError:
        stack = running_local_stack()
        if stack is None:
            raise
        answer = ask(stack, "GET", "/_local/model/status")
        return answer["usage"], answer["serving"]


def run_list(args) -> int:
    from ...catalog import get_catalog

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


def run_status(args) -> int:
    from ...catalog import get_catalog
    from ...ops.migration import status

    print(json.dumps(status(get_catalog()), indent=2))
    return 0


def run_rollback(args) -> int:
    from ...catalog import get_catalog
    from ...ops.migration import rollback

    print(json.dumps(rollback(get_catalog(), args.keep_previous), indent=2))
    return 0
