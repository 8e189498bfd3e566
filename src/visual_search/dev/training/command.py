"""The ``visual-search finetune`` command: options -> finetune -> model folder (-> reindex)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import TrainingUnavailable, require_torch

EXIT_NO_GAIN = 3  # trained, but not better than the base: nothing written


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args: Any, bar: Callable[[str, int], Any]) -> int:
    """``bar(desc, total)`` makes a progress bar (tqdm-like: ``update``, ``close``)."""
    try:
        require_torch()
    except TrainingUnavailable as exc:
        _log(f"error: {exc}")
        return 2
    from ...config import get_settings
    from .finetune import FinetuneOptions, NoImprovement, finetune
    from .trainer import Interrupted, Recipe

    settings = get_settings()
    recipe = Recipe() if args.epochs is None else Recipe(epochs=args.epochs)
    if args.lr is not None:
        from dataclasses import replace

        recipe = replace(recipe, peak_lr=args.lr)
    options = FinetuneOptions(
        source=args.source,
        out=Path(args.out),
        model_dir=settings.model_dir,
        image_size=args.image_size,
        seed=args.seed,
        device=args.device,
        recipe=recipe,
        shopper_views=tuple(p.strip() for p in (args.shopper_views or "").split(",") if p.strip()),
        force=args.force,
    )
    bars: list[Any] = []

    def progress(desc: str, total: int) -> Callable[[int], None]:
        for old in bars:
            old.close()
        bars[:] = [bar(desc, total)]
        return bars[0].update

    try:
        result = finetune(options, log=_log, progress=progress)
    except NoImprovement as exc:
        _log(f"refused: {exc}")
        return EXIT_NO_GAIN
    except Interrupted as exc:
        _log(str(exc))
        return 130
    finally:
        for old in bars:
            old.close()
    card = result.card
    summary: dict[str, Any] = {
        "model": card["id"],
        "out": str(result.out),
        "base_model": card["training"]["base_model"]["id"],
        "train_seconds": round(result.train_seconds, 1),
        "validation": result.validation.as_dict(),
    }
    _log(f"wrote {result.out} ({card['id']}); serve it with MODEL_DIR={result.out}")
    if args.int8:
        summary["int8"] = _quantized(result.out, args.source, result.photos)
    if args.reindex:
        summary["reindex"] = _reindex(result.out, args.source)
    print(json.dumps(summary, indent=2))
    return 0


def _quantized(model_dir: Path, source: str, photos: list) -> dict[str, Any]:
    """The fine-tuned model quantised to int8 beside it, calibrated on the catalogue it learned."""
    from .quantize import QuantizeOptions, quantize

    out = model_dir.with_name(model_dir.name + "-int8")
    shots = [(p.product_id, p.read) for p in photos]  # listed once, by the fine-tune
    card = quantize(QuantizeOptions(model_dir, Path(source), out), log=_log, shots=shots)
    _log(f"serve the int8 model with MODEL_DIR={out}")
    return {"model": card["id"], "out": str(out)}


def _reindex(model_dir: Path, source: str) -> dict[str, Any]:
    """Move the catalogue behind the COLLECTION alias to the new model (as ``reindex`` does)."""
    from ...aws import s3_client
    from ...catalog import Catalog
    from ...config import get_settings
    from ...model import Embedder
    from ...ops.sync import parse_s3_url, reindex

    settings = get_settings()
    embedder = Embedder(
        model_dir, threads=settings.ort_threads, max_batch=settings.max_batch, limits=settings.images
    )
    catalog = Catalog.open(settings, embedder=embedder)
    sources = None
    if not catalog.physical_collection() and source.startswith("s3://"):
        sources = [parse_s3_url(source)]  # nothing indexed yet: index the training source
    result = reindex(catalog, s3_client(), sources, log=_log)
    _log(f"the catalogue now uses {embedder.model_id}: deploy MODEL_DIR={model_dir} with it")
    return result
