"""`visual-search adapt`: fit a projection on the catalogue and move the catalogue into it.

1. Read the product label of every point, pick a sample stratified by product
   (``ADAPT_SAMPLE`` photos at most) and read only those vectors.
2. ``whitening.choose``: cross-validate the shrinkage (and the dimensions) on that sample; keep
   the raw space when the catalogue is too small or nothing beats it.
3. Save the projection (``projections.py``), create a new physical collection recording its id,
   copy every point into it in batches of ``ADAPT_BATCH`` with its raw vector and its ``adapted``
   vector (the projection applied to the stored raw vector: no inference).
4. Switch the ``COLLECTION`` alias to it in one step, as ``reindex`` does, then catch up with what
   the live functions wrote or deleted meanwhile (compared point by point by ``indexed_at``),
   keep the old collection for ``ADAPT_GRACE_S`` (warm searches still read it until their next
   projection check) and drop it.

Queries never mix projections: each function reads and writes the physical collection it
resolved with its projection (``spaces.py``), and a write that lands in the old collection after
the switch is refused as stale and retried into the new one.

A run stopped by its deadline (the maintenance function's 15 minutes) leaves the new collection
marked ``adapt_state: building`` with the copy's position; the next run with the same projection
goes on from there.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from ..store import RERANK, VECTOR, CatalogStore, Record, StoredPoint, VectorSpec, slug
from . import calibration
from .calibration import Calibration
from .spaces import ADAPTED, CALIBRATION
from .whitening import FitReport, Projection, choose, sample_rows

if TYPE_CHECKING:  # pragma: no cover
    from ..catalog import Catalog
    from ..config import AdaptSettings

CHECKPOINT_BATCHES = 20  # batches between two saves of the copy's position
CLOCK_MARGIN_S = 5.0  # tolerated clock skew between the functions' indexed_at and this run


@dataclass
class AdaptResult:
    status: str  # adapted | unchanged | raw | incomplete | dry-run
    reason: str
    points: int = 0
    sampled: int = 0
    projection_id: str | None = None
    previous_projection_id: str | None = None
    collection: str | None = None
    previous: str | None = None
    copied: int = 0
    caught_up: int = 0
    removed: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    table: list[dict] = field(default_factory=list)
    cv_recall_raw: float | None = None
    cv_recall_adapted: float | None = None
    shrinkage: float | None = None
    calibration: dict | None = None  # the confidence calibration fitted with the projection

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def same_space(a: Projection, b: Projection, sample: np.ndarray, tolerance: float = 1e-3) -> bool:
    """Whether two projections give the catalogue the same geometry (a refit of an unchanged
    catalogue differs from the first fit only by float noise, e.g. of vectors re-normalised on
    copy): compared by the similarities they give a sample, which ignore rotations."""
    if a.id == b.id:
        return True
    if a.dim != b.dim or a.shrinkage != b.shrinkage or a.input_dim != b.input_dim or not len(sample):
        return False
    x = sample[:256]
    pa, pb = a.apply(x), b.apply(x)
    return float(np.abs(pa @ pa.T - pb @ pb.T).max()) <= tolerance


def _saved(offset: Any) -> Any:
    """A scroll position as collection metadata (JSON): engines give ids as str, int or UUID."""
    return {"uuid": str(offset)} if isinstance(offset, uuid.UUID) else offset


def _restored(saved: Any) -> Any:
    return uuid.UUID(saved["uuid"]) if isinstance(saved, dict) and "uuid" in saved else saved


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="microseconds")


def _seconds(started: float) -> float:
    return round(time.perf_counter() - started, 3)


class RawCollections:
    """The points and metadata of physical collections by name, as stored (no model checks):
    what copying a catalogue between collections needs of the store (its ``admin()``)."""

    def __init__(self, store: CatalogStore):
        self.store = store
        self.admin = store.admin()

    def collection_metadata(self, name: str) -> dict[str, Any]:
        return self.admin.collection_metadata(name)

    def update_collection_metadata(self, name: str, changes: dict[str, Any]) -> None:
        self.admin.update_metadata(name, changes)

    def create_physical(self, name: str, adapted_dim: int | None, metadata: dict[str, Any]) -> None:
        vectors = {}
        if adapted_dim:
            vectors[ADAPTED] = VectorSpec(adapted_dim, "cosine", on_disk=self.store.settings.vectors_on_disk)
        self.store.pinned(name, vectors, metadata).create_physical(name)

    def scroll_records(
        self, name: str, offset: Any, page: int, vectors: list[str] | None = None, payload: Any = True
    ) -> tuple[list[Record], Any]:
        return self.admin.scroll(name, page, offset, payload, vectors or [])

    def iter_records(
        self, name: str, payload: Any = True, vectors: list[str] | None = None, page: int = 256
    ) -> Iterator[Record]:
        offset = None
        while True:
            records, offset = self.scroll_records(name, offset, page, vectors, payload)
            yield from records
            if offset is None:
                return

    def get_records_by_id(self, name: str, ids: list[str], vectors: list[str]) -> list[Record]:
        return self.admin.retrieve(name, ids, vectors)

    def put_points(self, name: str, records: list[Record]) -> None:
        points = [
            StoredPoint(
                r.id,
                {k: np.asarray(v, dtype=np.float32) for k, v in r.vectors.items() if v is not None},
                r.payload,
            )
            for r in records
        ]
        self.admin.upsert(name, points)

    def delete_point_ids(self, name: str, ids: list[str]) -> None:
        self.admin.delete_ids(name, ids)

    def count_indexed_since(self, name: str, stamp: str) -> int:
        """Points indexed after the ISO time ``stamp``: a datetime-range count where the engine
        has one (a server), else a scan of the stamps (the embedded engine; small catalogues)."""
        try:
            return self.admin.count_indexed_after(name, stamp)
        except (TypeError, ValueError):
            return sum(
                1
                for r in self.iter_records(name, payload=["indexed_at"], page=2048)
                if str(r.payload.get("indexed_at", "")) > stamp
            )

    def building_collections(self, live: str) -> list[str]:
        """The collection an adapt run is filling for the live collection ``live`` (recorded in
        its metadata as ``adapt_building``), if it still exists and is not finished."""
        name = self.collection_metadata(live).get("adapt_building")
        if not name or name == live or not self.admin.collection_exists(str(name)):
            return []
        return [str(name)] if self.collection_metadata(str(name)).get("adapt_state") == "building" else []


class Adapter:
    """One adapt run over a catalogue (see the module docstring)."""

    def __init__(
        self,
        catalog: Catalog,
        settings: AdaptSettings,
        progress: Callable[[int], None] | None = None,
        log: Callable[[str], None] = print,
        sleep: Callable[[float], None] = time.sleep,
        source: str | None = None,
        on_switch: Callable[[str], None] | None = None,
    ):
        """``source``: fit and copy that collection instead of the one the alias points at (a
        model change's new collection, before the alias moves to it); ``on_switch(copy)`` then
        takes the place of the alias switch (the model change points its re-index target at the
        copy, so live changes follow it), and the caller moves the alias."""
        self.catalog = catalog
        self.source = source
        self.on_switch = on_switch
        self.store = catalog.adaptation_store_for(source) if source else catalog.adaptation_store
        self.raw = RawCollections(self.store)
        self.settings = settings
        self.progress = progress or (lambda n: None)
        self.log = log
        self.sleep = sleep
        self._calibration: Calibration | None = None  # fitted by this run, written with its space

    # -- fit ---------------------------------------------------------------------------------

    def sample(self, collection: str) -> tuple[np.ndarray, np.ndarray, int]:
        """(vectors, labels, points): a sample of the raw vectors stratified by product."""
        ids, labels = [], []
        for record in self.raw.iter_records(collection, payload=["product_id", "held"], page=2048):
            if record.payload.get("held"):  # a shopper view held back (visual_search.feedback)
                continue
            ids.append(record.id)
            labels.append(str(record.payload.get("product_id")))
        if not ids:
            return np.zeros((0, self.store.dim), np.float32), np.array([], str), 0
        y = np.asarray(labels)
        rows = sample_rows(y, self.settings.sample, np.random.default_rng(0))
        chosen = [ids[i] for i in rows]
        vectors: dict[str, np.ndarray] = {}
        for start in range(0, len(chosen), self.settings.batch):
            for record in self.raw.get_records_by_id(
                collection, chosen[start : start + self.settings.batch], vectors=[VECTOR]
            ):
                vectors[record.id] = np.asarray(record.vectors[VECTOR], np.float32)
        kept = [i for i, pid in zip(rows, chosen) if pid in vectors]  # deleted meanwhile: left out
        x = np.stack([vectors[ids[i]] for i in kept]) if kept else np.zeros((0, self.store.dim), np.float32)
        return x, y[kept], len(ids)

    def fit(self, collection: str) -> tuple[FitReport, int, np.ndarray, Calibration | None]:
        x, y, points = self.sample(collection)
        if len(x) == 0:
            reason = "the catalogue is empty: keeping the raw space"
            return FitReport(None, reason, [], float("nan"), None), points, x, None
        report = self._choose(x, y)
        return report, points, x, self.calibrate(x, y, report.projection)

    def _choose(self, x: np.ndarray, y: np.ndarray) -> FitReport:
        s = self.settings
        return choose(
            x,
            [str(label) for label in y],
            dims=s.dims,
            min_products=s.min_products,
            min_photos=s.min_photos,
            max_sample=s.sample,
        )

    def calibrate(self, x: np.ndarray, y: np.ndarray, projection: Projection | None) -> Calibration | None:
        """The confidence calibration of the chosen space (calibration.calibrate)."""
        try:
            fitted = calibration.calibrate(x, [str(v) for v in y], projection)
        except ValueError as exc:  # a round's gallery too small to refit the projection on
            self.log(f"no confidence calibration: {exc}")
            return None
        if fitted is None:
            self.log(
                "no confidence calibration: it needs products with two or more photos, and right "
                "and wrong answers among its cross-validation queries"
            )
        return fitted

    # -- run ---------------------------------------------------------------------------------

    def run(self, dry_run: bool = False, deadline: float | None = None) -> AdaptResult:
        """Fit, and unless ``dry_run`` move the catalogue into the chosen space.

        ``deadline`` (a ``time.monotonic()`` value): stop copying by then and leave the run to be
        resumed (status ``incomplete``).
        """
        started = time.perf_counter()
        space = self.catalog.spaces.reload()
        if self.source:
            space = self.catalog.spaces.space_of(self.source)
        old = space.collection
        if not dry_run and not self.source:
            resumed = self._resume(space, deadline, started)
            if resumed is not None:
                return resumed
        report, points, sample, calibrated = self.fit(old)
        sampled = len(sample)
        chosen = report.projection
        self._calibration = calibrated
        result = AdaptResult(
            status="dry-run" if dry_run else "raw",
            reason=report.reason,
            points=points,
            sampled=sampled,
            projection_id=chosen.id if chosen else None,
            previous_projection_id=space.projection_id,
            previous=old,
            table=report.table,
            cv_recall_raw=None if np.isnan(report.cv_recall_raw) else report.cv_recall_raw,
            cv_recall_adapted=report.cv_recall_adapted,
            shrinkage=chosen.shrinkage if chosen else None,
            calibration=calibrated.as_dict() if calibrated else None,
        )
        result.seconds["fit"] = _seconds(started)
        self.log(report.reason)
        if dry_run:
            return result
        if chosen is None and space.projection is None:
            result.status, result.collection = "raw", old
            self._note_attempt(old, points)
            return result
        if (
            chosen is not None
            and space.projection is not None
            and same_space(chosen, space.projection, sample)
        ):
            result.status, result.collection = "unchanged", old
            result.projection_id = space.projection_id
            if calibrated is not None:  # fitted in the chosen space: the same space, by its old id
                stats = {**calibrated.stats, "space": space.projection_id}
                self._calibration = replace(calibrated, stats=stats)
            result.reason += f" (the collection already uses projection {(space.projection_id or '')[:12]})"
            self._note_attempt(old, points)
            return result
        if chosen is None:
            self.log("the catalogue no longer supports its projection: moving it back to the raw space")
        return self.move(result, chosen, points, deadline, started)

    def _note_attempt(self, collection: str, points: int) -> None:
        """Record the catalogue size this fit looked at (the maintenance threshold's base) and
        the calibration refitted on it (the space is unchanged: the collection keeps serving)."""
        checked = {"adapt_checked_points": points, "adapt_checked_at": _iso(_now())}
        self.raw.update_collection_metadata(collection, {**checked, **self._calibration_metadata()})
        self.catalog.spaces.invalidate()

    def _calibration_metadata(self) -> dict[str, Any]:
        calibrated = self._calibration
        return {CALIBRATION: json.dumps(calibrated.as_dict())} if calibrated is not None else {}

    def _resume(self, space: Any, deadline: float | None, started: float) -> AdaptResult | None:
        """Go on with the copy an earlier run left half-done (its deadline, a crash), with the
        projection it chose; older half-done copies are dropped."""
        building = []
        for name in self.raw.building_collections(space.collection):
            if name != space.collection:
                building.append((str(self.raw.collection_metadata(name).get("adapt_started_at", "")), name))
        if not building:
            return None
        building.sort()
        for _, name in building[:-1]:
            self.log(f"dropping {name}, an older half-done copy")
            self.store.drop_collection(name)
        begun_at, name = building[-1]
        meta = self.raw.collection_metadata(name)
        pid = meta.get("projection_id")
        projection = self.catalog.spaces.projections.load(str(pid)) if pid else None
        stats = projection.stats if projection else {}
        result = AdaptResult(
            status="raw",
            reason=f"resuming the copy into {name} begun at {begun_at}",
            points=int(meta.get("adapt_checked_points") or 0),
            projection_id=pid,
            previous_projection_id=space.projection_id,
            previous=space.collection,
            cv_recall_raw=stats.get("cv_recall_raw"),
            cv_recall_adapted=stats.get("cv_recall_adapted"),
            shrinkage=projection.shrinkage if projection else None,
        )
        self.log(result.reason)
        target = (name, datetime.fromisoformat(begun_at), _restored(meta.get("adapt_offset")))
        return self.move(result, projection, result.points, deadline, started, target)

    def move(
        self,
        result: AdaptResult,
        projection: Projection | None,
        points: int,
        deadline: float | None,
        started: float,
        target: tuple[str, datetime, Any] | None = None,
    ) -> AdaptResult:
        store = self.store
        old = result.previous
        assert old is not None
        new, begun, offset = target or self._create(projection, points)
        result.collection = new
        copy_started = time.perf_counter()
        offset, copied = self.copy(old, new, projection, offset, deadline)
        result.copied = copied
        result.seconds["copy"] = _seconds(copy_started)
        if offset is not None:  # out of time: leave the position for the next run
            self.raw.update_collection_metadata(new, {"adapt_offset": _saved(offset)})
            result.status = "incomplete"
            result.reason += f"; copied {copied} points into {new}, to be resumed by the next run"
            self.log(result.reason)
            return result
        self.raw.update_collection_metadata(new, {"adapt_state": "ready", "adapt_offset": None})
        switched = _now()
        if self.on_switch is not None:  # a model change's collection: its caller moves the alias
            self.on_switch(new)
        else:
            if old == store.collection:  # a plain collection, not an alias: it must go for the alias
                store.drop_collection(old)
                switched = _now()
            store.point_alias(new)
            self.catalog.spaces.reload()  # this process's functions move at once
            self.log(f"alias {store.collection!r} now points at {new}")
        if old != store.collection:
            catch_started = time.perf_counter()
            result.caught_up, result.removed = self.catch_up(old, new, projection, begun, switched)
            result.seconds["catch_up"] = _seconds(catch_started)
            self._retire(old)
        # the projection of the collection now in use is the only one any function may load,
        # with that of the collection a model change keeps for a rollback
        self.catalog.spaces.projections.delete_except(
            ({projection.id} if projection else set()) | self._kept()
        )
        result.status = "adapted" if projection is not None else "raw"
        result.seconds["total"] = _seconds(started)
        return result

    def _kept(self) -> set[str]:
        """The projections of the collection serving now and of the one a model change keeps."""
        kept = set()
        for name in (self.catalog.physical_collection(), self.catalog.previous_collection()):
            pid = self.raw.collection_metadata(name).get("projection_id") if name else None
            if pid:
                kept.add(str(pid))
        return kept

    def _create(self, projection: Projection | None, points: int) -> tuple[str, datetime, Any]:
        """A new collection to copy into, recording the projection (saved first)."""
        store = self.store
        if projection is not None:
            self.catalog.spaces.projections.save(projection)
        begun = _now()
        new = f"{store.collection}-{slug(store.model_id)}-{begun.strftime('%Y%m%d%H%M%S%f')}"
        metadata: dict[str, Any] = {
            "adapt_state": "building",
            "adapt_started_at": _iso(begun),
            "adapt_offset": None,
            "adapt_checked_points": points,
            "adapt_checked_at": _iso(begun),
            **self._calibration_metadata(),
        }
        if projection is not None:
            stats = projection.stats
            metadata.update(
                projection_id=projection.id,
                projection_fitted_at=stats.get("fitted_at"),
                projection_products=stats.get("products"),
                projection_photos=stats.get("photos"),
                projection_cv_recall_raw=stats.get("cv_recall_raw"),
                projection_cv_recall_adapted=stats.get("cv_recall_adapted"),
                projection_points=points,
            )
        self.raw.create_physical(new, projection.dim if projection else None, metadata)
        # recorded on the live collection, so a run stopped half-way is found and resumed
        live = self.source or self.catalog.spaces.current().collection
        self.raw.update_collection_metadata(live, {"adapt_building": new})
        return new, begun, None

    # -- copying -------------------------------------------------------------------------------

    def _vector_names(self) -> list[str]:
        return [VECTOR, RERANK] if self.store.rerank_dim else [VECTOR]

    def copy(
        self,
        old: str,
        new: str,
        projection: Projection | None,
        offset: Any = None,
        deadline: float | None = None,
    ) -> tuple[Any, int]:
        """Copy every point of ``old`` into ``new`` with its adapted vector; (offset left, copied)."""
        copied = 0
        page = self.settings.batch
        for n in itertools.count(1):
            records, offset = self.raw.scroll_records(old, offset, page, vectors=self._vector_names())
            self._write(new, records, projection)
            copied += len(records)
            self.progress(len(records))
            if offset is None:
                return None, copied
            if deadline is not None and time.monotonic() >= deadline:
                return offset, copied
            if n % CHECKPOINT_BATCHES == 0:  # a crash resumes from here, not from the start
                self.raw.update_collection_metadata(new, {"adapt_offset": _saved(offset)})
        raise AssertionError("unreachable")

    def _write(self, new: str, records: list, projection: Projection | None) -> None:
        if not records:
            return
        if projection is not None:
            raw = np.asarray([r.vectors[VECTOR] for r in records], np.float32)
            for record, adapted in zip(records, projection.apply(raw)):
                record.vectors[ADAPTED] = adapted
        self.raw.put_points(new, records)

    def catch_up(
        self, old: str, new: str, projection: Projection | None, begun: datetime, switched: datetime
    ) -> tuple[int, int]:
        """Apply to ``new`` what the live functions did to ``old`` during the copy.

        A point of ``old`` newer than its copy (or absent from ``new`` and written since the copy
        began) is copied again; a point of ``new`` absent from ``old`` that predates the switch was
        deleted meanwhile and goes. Points the functions wrote into ``new`` after the switch are
        newer than anything in ``old`` and stay.
        """
        margin = timedelta(seconds=CLOCK_MARGIN_S)
        since, before = _iso(begun - margin), _iso(switched - margin)
        copies = dict(self._stamps(new))
        again, seen = [], set()
        for pid, stamp in self._stamps(old):
            seen.add(pid)
            have = copies.get(pid)
            if (have is None and stamp[0] >= since) or (
                have is not None and have != stamp and stamp[0] >= have[0]
            ):
                again.append(pid)
        gone = [pid for pid, stamp in copies.items() if pid not in seen and stamp[0] < before]
        for start in range(0, len(again), self.settings.batch):
            part = self.raw.get_records_by_id(
                old, again[start : start + self.settings.batch], vectors=self._vector_names()
            )
            self._write(new, part, projection)
        if gone:
            self.raw.delete_point_ids(new, gone)
        if again or gone:
            self.log(f"caught up: {len(again)} points copied again, {len(gone)} removed")
        return len(again), len(gone)

    def _stamps(self, collection: str) -> Iterator[tuple[str, tuple[str, str, str]]]:
        fields = ["indexed_at", "etag", "sequencer"]
        for record in self.raw.iter_records(collection, payload=fields, page=2048):
            p = record.payload
            yield (
                record.id,
                (str(p.get("indexed_at", "")), str(p.get("etag", "")), str(p.get("sequencer", ""))),
            )

    def _retire(self, old: str) -> None:
        grace = self.settings.grace_s
        if grace is None:  # warm functions elsewhere re-check within PROJECTION_CHECK_S
            grace = self.settings.check_s + CLOCK_MARGIN_S if self.store.is_server else 0.0
        if grace > 0:
            self.log(f"keeping {old} for {grace:.0f} s while warm functions move to the new projection")
            self.sleep(grace)
        self.store.drop_collection(old)
        self.log(f"dropped {old}")


def adapt(
    catalog: Catalog,
    settings: AdaptSettings | None = None,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
    log: Callable[[str], None] = print,
    deadline: float | None = None,
) -> AdaptResult:
    from ..config import get_settings

    adapter = Adapter(catalog, settings or get_settings().adapt, progress, log)
    return adapter.run(dry_run=dry_run, deadline=deadline)


def print_result(result: AdaptResult, as_json: bool = False) -> None:
    """`visual-search adapt`'s report: the choice, the recall before and after, what was written."""
    import json

    if as_json:
        print(json.dumps(result.as_dict(), indent=2, default=str))
        return
    print(f"catalogue: {result.points} images; fit on a sample of {result.sampled}")
    for row in result.table:
        print(f"  shrinkage {row['shrinkage']:<5} dims {row['dims']:<5} cv recall@1 {row['cv_recall@1']:.4f}")
    if result.cv_recall_raw is not None:
        adapted = f"{result.cv_recall_adapted:.4f}" if result.cv_recall_adapted is not None else "-"
        print(f"cross-validated recall@1: raw {result.cv_recall_raw:.4f} -> adapted {adapted}")
    if result.shrinkage is not None:
        print(f"chosen shrinkage {result.shrinkage}; projection {result.projection_id}")
    if result.calibration is not None:
        stats = result.calibration["stats"]
        print(
            f"confidence calibrated on {stats['queries']} cross-validation queries: expected calibration "
            f"error {stats['cv_ece']:.3f}, AUROC {stats['cv_auroc']:.3f}; no-match under "
            f"{result.calibration['no_match']:.3f}"
        )
    print(f"{result.status}: {result.reason}")
    if result.copied:
        print(f"wrote {result.copied} points into {result.collection} ({result.seconds})")
