"""Measuring learning from clicks end to end, through the search API (``visual-search eval-clicks``).

A catalogue (the photos matching ``--catalogue``) is uploaded to an emulated bucket (moto) and
indexed by the ingest pipeline into an in-memory Qdrant. The shoppers' photos (``--queries``) of
each product are shuffled and split: the first ``share`` give feedback in turn, the last half is
scored. A feedback photo is searched through ``POST /search`` (top 5); when its product is shown
the shopper clicks it through ``POST /feedback`` (or, with ``--misclicks``, another shown product
in that share of the clicks); the shopper view the click writes is indexed like any upload, and
the maintenance step (review, then refit when ADAPT_CHANGE_THRESHOLD of the catalogue changed)
runs as clicks arrive, as the scheduled function would. The scored half is searched before and
after, with nothing fitted on it.
"""

from __future__ import annotations

import base64
import csv
import fnmatch
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..observability import metrics

BUCKET = "clicks-eval"
PREFIX = "catalog/"
TOP = 5
MAINTENANCE_EVERY = 5  # clicks between two looks at whether a refit is due


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def _photos(folder: Path, patterns: Sequence[str]) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for product in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(f for f in product.iterdir() if f.is_file() and _matches(f.name, patterns))
        if files:
            out[product.name] = files
    return out


def _kinds(folder: Path) -> dict[str, str]:
    path = folder / "products.csv"
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        return {row["product_id"]: row.get("kind", "") for row in csv.DictReader(f)}


def _stack(s3: Any, embedder: Any) -> tuple[Any, Any, Any, Any]:
    """(settings, catalogue, ingest pipeline, search API) over the bucket and a memory Qdrant."""
    from ..api import SearchApi
    from ..catalog import Catalog
    from ..config import load_settings
    from ..ingest.pipeline import Ingestor
    from ..store import CatalogStore

    base = load_settings()
    settings = replace(
        base,
        store=replace(base.store, path=":memory:", url=None, collection="clicks"),
        ingest=replace(base.ingest, prefix=PREFIX),
        api=replace(base.api, bucket=BUCKET, upload_bucket=BUCKET, result_image_urls=False),
        feedback=replace(base.feedback, learn=True, views_prefix=f"{PREFIX}shopper-views/"),
        adapt=replace(base.adapt, auto=True),
    )
    store = CatalogStore.open(
        settings.store,
        embedder.model_id,
        embedder.dim,
        embedder.card.distance,
        model_fingerprint=embedder.fingerprint,
    )
    catalog = Catalog(embedder, store, projection_check_s=0.0)
    ingestor = Ingestor(catalog, s3, settings.ingest, catalog.image_limits, settings.feedback)
    return settings, catalog, ingestor, SearchApi(catalog, s3, settings)


class Run:
    """One simulated shop: the API calls, the bucket's changes delivered to the ingest pipeline."""

    def __init__(self, s3: Any, embedder: Any, log: Callable[[str], None]):
        from ..adaptation.refits import run_maintenance
        from ..feedback import reviewer
        from .devstack.gateway import to_event
        from .lambdas import LambdaContext

        self.s3 = s3
        self.settings, self.catalog, self.ingestor, self.api = _stack(s3, embedder)
        self.log = log
        self._event, self._context = to_event, LambdaContext()
        review = reviewer(self.catalog, self.settings.feedback, log)
        self._maintain = lambda threshold=None: run_maintenance(
            self.catalog, self.settings.adapt, threshold=threshold, log=log, review=review
        )
        self.refits = 0

    def changed(self, created: Sequence[str] = (), removed: Sequence[str] = ()) -> None:
        """Deliver the bucket's changes to the ingest pipeline, as its notifications would."""
        from ..ingest.events import S3Change
        from .devstack.bridge import next_sequencer

        changes = [S3Change(BUCKET, k, "created", "ObjectCreated:Put", next_sequencer()) for k in created]
        changes += [S3Change(BUCKET, k, "removed", "ObjectRemoved:Delete", next_sequencer()) for k in removed]
        from ..ingest.pipeline import OK_STATUSES

        for start in range(0, len(changes), 32):
            bad = [o for o in self.ingestor.apply(changes[start : start + 32]) if o.status not in OK_STATUSES]
            if bad:
                raise RuntimeError(f"ingest failed: {bad[0].status} {bad[0].reason}")

    def maintain(self, threshold: float | None = None) -> None:
        out = self._maintain(threshold)
        if "adapt" in out:
            self.refits += 1
        self.catalog.spaces.invalidate()

    def call(self, path: str, body: dict) -> tuple[int, dict]:
        event = self._event("POST", path, {"Content-Type": "application/json"}, json.dumps(body).encode())
        response = self.api.resolve(event, self._context)
        metrics.clear_metrics()  # not a Lambda invocation: nothing would flush them but a full buffer
        return int(response["statusCode"]), json.loads(response["body"])

    def search(self, photo: Path) -> tuple[list[str], str | None]:
        image = base64.b64encode(photo.read_bytes()).decode()
        status, body = self.call("/search", {"image": image, "top_k": TOP})
        if status != 200:
            raise RuntimeError(f"search answered {status}: {body}")
        return [r["product_id"] for r in body["results"]], body.get("search_id")

    def click(self, search_id: str, product_id: str) -> None:
        status, body = self.call("/feedback", {"search_id": search_id, "product_id": product_id})
        if status != 200:
            raise RuntimeError(f"feedback answered {status}: {body}")
        self.changed(created=[body["view"]["key"]], removed=body["dropped"])


def _score(run: Run, scored: list[tuple[str, Path]], kinds: dict[str, str], tick) -> dict[str, Any]:
    rows = []
    for product, photo in scored:
        shown, _ = run.search(photo)
        rows.append((product, shown))
        tick(1)

    def recall(subset, k):
        return round(sum(p in s[:k] for p, s in subset) / len(subset), 4) if subset else None

    out: dict[str, Any] = {"queries": len(rows), "recall@1": recall(rows, 1), "recall@5": recall(rows, 5)}
    for kind in sorted({k for k in kinds.values() if k}):
        subset = [r for r in rows if kinds.get(r[0]) == kind]
        out[f"recall@1_{kind}"] = recall(subset, 1)
    packaged = [r for r in rows if kinds.get(r[0]) == "packaged"]
    produce = [r for r in rows if kinds.get(r[0]) and kinds.get(r[0]) != "packaged"]
    if packaged and produce:
        out["recall@1_packaged"], out["recall@1_produce"] = recall(packaged, 1), recall(produce, 1)
    return out


def simulate(
    folder: Path,
    catalogue: Sequence[str],
    queries: Sequence[str],
    share: float = 0.5,
    misclicks: float = 0.0,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    total: Callable[[int], None] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the protocol of the module docstring; the recalls before and after, and the clicks."""
    import boto3
    from moto import mock_aws

    from ..model import get_embedder

    if not 0.0 < share <= 0.5:
        raise ValueError("share must be in (0, 0.5]: the last half of each product's photos is scored")
    if not 0.0 <= misclicks < 1.0:
        raise ValueError("misclicks must be in [0, 1)")
    tick = progress or (lambda n: None)
    rng = random.Random(seed)
    gallery, shoppers, kinds = _photos(folder, catalogue), _photos(folder, queries), _kinds(folder)
    if not gallery or not shoppers:
        raise ValueError(f"no photos in {folder} match {list(catalogue)} and {list(queries)}")
    feedback: list[tuple[str, Path]] = []
    scored: list[tuple[str, Path]] = []
    for product, photos in shoppers.items():
        if product not in gallery:
            continue
        photos = photos[:]
        rng.shuffle(photos)
        feedback += [(product, p) for p in photos[: round(len(photos) * share)]]
        scored += [(product, p) for p in photos[len(photos) // 2 :]]
    rng.shuffle(feedback)
    if total:
        total(sum(len(v) for v in gallery.values()) + len(feedback) + 2 * len(scored))
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        run = Run(s3, get_embedder(), log)
        keys = []
        for product, photos in gallery.items():
            for photo in photos:
                key = f"{PREFIX}{product}/{photo.name}"
                s3.put_object(Bucket=BUCKET, Key=key, Body=photo.read_bytes())
                keys.append(key)
        run.changed(created=keys)
        tick(len(keys))
        run.maintain()
        before = _score(run, scored, kinds, tick)
        clicks = wrong = 0
        clicked: set[str] = set()
        for product, photo in feedback:
            shown, search_id = run.search(photo)
            tick(1)
            if product not in shown or search_id is None:
                continue
            pick = product
            others = [p for p in shown if p != product]
            if others and rng.random() < misclicks:
                pick, wrong = rng.choice(others), wrong + 1
            run.click(search_id, pick)
            clicks += 1
            clicked.add(pick)
            if clicks % MAINTENANCE_EVERY == 0:
                run.maintain()
        run.maintain(threshold=0.0)  # the next scheduled run after the last click
        after = _score(run, scored, kinds, tick)
        held = sum(1 for v in run.catalog.shopper_views() if v.payload.get("held"))
    return {
        "catalogue": list(catalogue),
        "queries": list(queries),
        "share": share,
        "misclicks": misclicks,
        "seed": seed,
        "products": len(gallery),
        "catalogue_photos": len(keys),
        "feedback_searches": len(feedback),
        "clicks": clicks,
        "wrong_clicks": wrong,
        "products_clicked": len(clicked),
        "views_held": held,
        "refits": run.refits,
        "before": before,
        "after": after,
    }
