"""The ingest function's router: which collections a change from the queue is written to.

A message from ``visual-search reindex --via-queue`` names the collection it fills (the SQS
message attribute ``TARGET_ATTRIBUTE``); an ordinary bucket notification goes to the live alias
and, while a re-index runs (alias ``<COLLECTION>.reindex``), to the collection being built too,
so no change made during a re-index is lost. The operator's side is ``ops/fleet.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import StoreUnavailableError
from .events import S3Change
from .pipeline import IngestBatch, Ingestor, Item, Outcome, Status

TARGET_ATTRIBUTE = "visual-search-collection"  # SQS message attribute: the collection to fill


def message_target(record: dict) -> str | None:
    """The collection an SQS record (as Lambda delivers it) names, if any."""
    value = (record.get("messageAttributes") or {}).get(TARGET_ATTRIBUTE) or {}
    text = value.get("stringValue") if isinstance(value, dict) else None
    return str(text) if text else None


class Router:
    """Where the ingest function applies each change: a change from a message naming a
    collection goes to that collection; any other goes to the live alias and, while a re-index
    runs (alias ``<COLLECTION>.reindex``), to the collection being built as well."""

    def __init__(self, ingestor: Ingestor):
        self.ingestor = ingestor
        self._targets: dict[str, Ingestor] = {}

    def _for(self, collection: str) -> Ingestor | None:
        """An ingestor writing to ``collection``; None when it does not exist (a re-index that
        was abandoned: its messages are dropped, never re-creating the collection)."""
        catalog = self.ingestor.catalog.for_collection(collection)
        if not catalog.exists():
            self._targets.pop(collection, None)
            return None
        if collection not in self._targets:
            if len(self._targets) > 4:
                self._targets.clear()
            self._targets[collection] = Ingestor(
                catalog, self.ingestor.s3, self.ingestor.settings, self.ingestor.limits
            )
        else:
            self._targets[collection].catalog = catalog
        return self._targets[collection]

    def apply_batch(self, changes: Sequence[S3Change], targets: Sequence[str | None]) -> IngestBatch:
        """The outcome of each change, in order, and the batch's timings; one transient failure
        in any of the collections a change goes to makes it transient (the message is retried)."""
        batch = IngestBatch([Item(change) for change in changes])
        groups: dict[str | None, list[int]] = {}
        for i, target in enumerate(targets):
            groups.setdefault(target, []).append(i)
        for target, indices in groups.items():
            part = [changes[i] for i in indices]
            try:
                outcomes = self._apply(part, target, batch)
            except StoreUnavailableError as exc:  # cannot tell where the changes go: retry them
                outcomes = [Outcome(c, Status.RETRY, str(exc)) for c in part]
            for i, outcome in zip(indices, outcomes, strict=True):
                batch.items[i].outcome = outcome
        return batch

    def _apply(self, part: list[S3Change], target: str | None, batch: IngestBatch) -> list[Outcome]:
        if target is None:
            # Looked at first: a re-index starting after this look lists these objects anyway.
            building = self.ingestor.catalog.reindex_target()
            also = self._for(building) if building else None
            results = self._timed(self.ingestor, part, batch)
            if also is not None:
                extra = also.apply_batch(part).outcomes
                if self.ingestor.catalog.reindex_target() != building:  # moved on meanwhile (its
                    # adaptation copy took over): the write may have missed the copy's catch-up
                    extra = [Outcome(c, Status.RETRY, f"the re-index moved on from {building}") for c in part]
                results = [_worse(a, b) for a, b in zip(results, extra, strict=True)]
            return results
        ingestor = self._for(target)
        if ingestor is None:
            return [
                Outcome(c, Status.SKIPPED, f"collection {target!r} is gone (re-index abandoned)")
                for c in part
            ]
        return self._timed(ingestor, part, batch)

    @staticmethod
    def _timed(ingestor: Ingestor, part: list[S3Change], batch: IngestBatch) -> list[Outcome]:
        done = ingestor.apply_batch(part)
        for name, ms in done.timings.items():
            batch.add_time(name, ms)
        return done.outcomes


def _worse(live: Outcome, building: Outcome) -> Outcome:
    return building if building.transient and not live.transient else live
