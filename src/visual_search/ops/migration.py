"""Changing a deployed catalogue's model with no downtime.

``visual-search reindex --via-queue QUEUE --model MODEL_ID`` builds a new collection with a
model of the registry (visual_search.registry) through the deployed ingest functions
(``fleet.reindex_via_queue``): every message names the new collection, whose metadata names
its model, so the functions embed for it with that model, and every ordinary change meanwhile
goes to both collections, each embedded with its own model. Searches keep being answered from
the current collection with its own model until the alias moves. Before it moves, the
registry's file is downloaded again and checked against its card (a corrupt model never
serves) and the adaptation is fitted for the new model and copied with its adapted vectors
(``refit``), so the alias moves once, to the adapted collection; warm functions follow within
``PROJECTION_CHECK_S``. The collection
left behind stays under the alias ``<COLLECTION>.previous`` for ``--keep-previous`` hours, for
``visual-search model rollback``; the maintenance function drops it after that.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..errors import ModelError
from .fleet import enqueue, reindex_via_queue
from .previous import KEEP_PREVIOUS_H, keep_as_previous
from .queues import queue_url, waiting
from .sync import sources_in

if TYPE_CHECKING:  # pragma: no cover
    from ..catalog import Catalog
    from ..config import AdaptSettings
    from ..registry import ModelRegistry

# Wall seconds of an ingest invocation per image at 2048 MB, by precision (docs/deploy.md,
# "Backfilling a large bucket"); Lambda's x86 price per GB-second; S3 (GET + HEAD), SQS and
# log lines per image (docs/deploy.md, "What a million images cost to ingest").
SECONDS_PER_IMAGE = {"int8": 0.029, "fp32": 0.048}
GB_SECOND_USD = 0.0000166667
OTHER_USD_PER_IMAGE = 0.00000102
DEFAULT_MEMORY_MB = 2048
DEFAULT_CONCURRENCY = 5


@dataclass(frozen=True)
class Estimate:
    images: int
    precision: str
    memory_mb: int
    concurrency: int
    lambda_seconds: float
    dollars: float
    wall_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate(
    images: int,
    precision: str,
    memory_mb: int = DEFAULT_MEMORY_MB,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> Estimate:
    """What re-embedding ``images`` through the fleet costs: CPU grows with memory, so the
    seconds per image shrink as the GB grow and the GB-seconds stay about the same."""
    per_image = SECONDS_PER_IMAGE.get(precision, SECONDS_PER_IMAGE["fp32"]) * DEFAULT_MEMORY_MB / memory_mb
    seconds = images * per_image
    dollars = seconds * memory_mb / 1024 * GB_SECOND_USD + images * OTHER_USD_PER_IMAGE
    return Estimate(
        images,
        precision,
        memory_mb,
        concurrency,
        round(seconds, 1),
        round(dollars, 6),
        round(seconds / max(1, concurrency), 1),
    )


def _registry(catalog: Catalog) -> ModelRegistry:
    registry = catalog.registry
    if registry is None:
        raise ModelError(
            "no model registry is configured: set MODELS_BUCKET (the template sets it to the "
            "images bucket, or to ModelsBucket)"
        )
    return registry


def migrate(
    catalog: Catalog,
    s3: Any,
    sqs: Any,
    queue: str,
    model_id: str,
    adapt: AdaptSettings,
    sources: list[tuple[str, str]] | None = None,
    *,
    dry_run: bool = False,
    keep_previous_h: float = KEEP_PREVIOUS_H,
    memory_mb: int = DEFAULT_MEMORY_MB,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: Callable[[int], None] = lambda n: None,
    log: Callable[[str], None] = print,
    **fleet: Any,
) -> dict[str, Any]:
    """Move the catalogue to registry model ``model_id`` through the fleet (or, ``dry_run``, say
    what that would do and cost). Bad input (an unknown model, a missing queue, a model whose
    file does not match its card) fails before anything is made."""
    registry = _registry(catalog)
    card = registry.card(model_id)
    assert card is not None
    url = queue_url(sqs, queue)
    waiting(sqs, url)  # a queue that does not exist fails here
    if catalog.reindex_target():
        raise ModelError(
            f"a re-index is already building {catalog.reindex_target()} (visual-search model status)"
        )
    current = catalog.physical_collection()
    if sources is None:
        sources = sources_in(catalog, current) if current else []
    if dry_run:
        return _plan(
            catalog, s3, sqs, url, model_id, card, current, sources, memory_mb, concurrency, progress
        )
    model = catalog.registry_model(model_id)  # fetched and checked now, as the functions will

    adapted: dict[str, Any] = {}

    def verify_and_adapt(new: str) -> str:
        log(f"checking {registry.where(model_id)} against its card before the switch")
        registry.verify(model_id, card.get("sha256"))
        if not adapt.auto:
            return new
        adapted.update(refit(catalog, new, adapt, log).as_dict())
        return str(adapted.get("collection") or new)

    result = reindex_via_queue(
        catalog,
        s3,
        sqs,
        url,
        sources,
        model=model,
        keep_previous_h=keep_previous_h,
        before_switch=verify_and_adapt,
        progress=progress,
        log=log,
        **fleet,
    )
    catalog.spaces.reload()
    if adapted:
        result["adapt"] = adapted
    return result


def refit(catalog: Catalog, new: str, adapt: AdaptSettings, log: Callable[[str], None]) -> Any:
    """The adaptation fitted on the new model's collection before the alias moves: a copy with
    its adapted vectors; the re-index target follows the copy (with the change's progress), so
    live changes reach it, and the copy catches up with what reached ``new`` meanwhile."""
    from ..adaptation.adapter import Adapter

    def follow(copy: str) -> None:
        progress = {k: v for k, v in catalog.metadata_of(new).items() if k.startswith("migration_")}
        catalog.update_metadata_of(copy, {**progress, "migration_state": "adapting"})
        catalog.set_reindex_target(copy)

    log(f"fitting the adaptation for the new model on {new} before the switch")
    return Adapter(catalog, adapt, log=log, source=new, on_switch=follow).run()


def _plan(catalog, s3, sqs, url, model_id, card, current, sources, memory_mb, concurrency, progress) -> dict:
    from ..ingest.pipeline import Ingestor

    ingestor = Ingestor.configured(catalog, s3)
    images = 0
    for bucket, prefix in sources:
        report = enqueue(ingestor, sqs, url, bucket, prefix, force=True, dry_run=True, progress=progress)
        images += report.queued
    precision = str(card.get("precision") or "fp32")
    return {
        "dry_run": True,
        "model": model_id,
        "from_model": catalog.model_id,
        "collection": current,
        "queue": url,
        "sources": [f"s3://{b}/{p}" for b, p in sources],
        "images": images,
        "estimate": estimate(images, precision, memory_mb, concurrency).as_dict(),
        "steps": [
            f"check {model_id} in the registry against its card",
            f"create a collection for {model_id} and send {images} images to {url}",
            "ingest functions embed them with the new model; live changes go to both collections",
            "wait for the queue to drain and the counts to match",
            "check the registry's file against its card again",
            "fit the adaptation for the new model and copy the collection with it (ADAPT)",
            "move the alias, once, atomically",
            "keep the previous collection for `visual-search model rollback`",
        ],
    }


def status(catalog: Catalog, clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """Which collection and model serve the catalogue, the migration under way (done / total,
    rate, ETA) and the collection kept for a rollback."""
    current = catalog.physical_collection()
    meta = catalog.metadata_of(current) if current else {}
    out: dict[str, Any] = {
        "collection": catalog.collection,
        "current": current,
        "model": meta.get("model_id"),
        "state": "idle",
    }
    building = catalog.reindex_target()
    if building and building in catalog.collections():
        out.update(state="building", migration=_progress(catalog, building, clock))
    elif meta.get("migration_switched_at"):
        out["switched_at"] = meta["migration_switched_at"]
    previous = catalog.previous_collection()
    if previous:
        kept = catalog.metadata_of(previous)
        out["previous"] = {
            "collection": previous,
            "model": kept.get("model_id"),
            "kept_until": kept.get("previous_kept_until"),
        }
    return out


def _progress(catalog: Catalog, building: str, clock: Callable[[], float]) -> dict[str, Any]:
    meta = catalog.metadata_of(building)
    done = catalog.count_in(building)
    total = meta.get("migration_total")
    started = meta.get("migration_started_at")
    elapsed = clock() - datetime.fromisoformat(started).timestamp() if started else None
    rate = done / elapsed if elapsed and elapsed > 0 else None
    left = max(0, int(total) - done) if total is not None else None
    return {
        "collection": building,
        "model": meta.get("model_id"),
        "started_at": started,
        "done": done,
        "total": total,  # None until every image is queued
        "rate_per_s": round(rate, 2) if rate else None,
        "eta_s": round(left / rate) if rate and left is not None else None,
    }


def rollback(
    catalog: Catalog, keep_previous_h: float = KEEP_PREVIOUS_H, log: Callable[[str], None] = lambda m: None
) -> dict[str, Any]:
    """The alias back to the collection the last model change left; the one it leaves is kept
    in turn (a second rollback goes forward again). Its model is loaded and checked first."""
    previous = catalog.previous_collection()
    if not previous:
        raise ModelError("there is no previous collection to roll back to (none kept, or it was dropped)")
    if catalog.reindex_target():
        raise ModelError(f"a re-index is building {catalog.reindex_target()}: let it finish or stop it first")
    model = catalog.model_for(previous)  # a model that cannot serve is refused before the switch
    current = catalog.physical_collection()
    catalog.switch_to(previous)
    if current and current != previous:
        keep_as_previous(catalog, current, previous, keep_previous_h, log)
    catalog.spaces.reload()
    return {"collection": previous, "model": model.model_id, "previous": current}
