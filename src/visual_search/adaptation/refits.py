"""Refitting the catalogue's projection as the catalogue changes.

Deployed, the maintenance function (``functions/maintenance/app.py``, on a schedule) calls
``run_maintenance``; the local stack runs ``SettledRefit``, a thread that does the same once the
bucket's changes have settled. Both refit (``adaptation.Adapter``, the code behind
``visual-search adapt``) only when the catalogue changed by ``ADAPT_CHANGE_THRESHOLD`` since
the last fit looked at it: images added or removed (the point count) or replaced (points
indexed since), as a share of the catalogue then. A copy left half-done by an earlier run's
deadline is always resumed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .adapter import Adapter, AdaptResult, RawCollections

if TYPE_CHECKING:  # pragma: no cover
    from ..catalog import Catalog
    from ..config import AdaptSettings


@dataclass(frozen=True)
class RefitDecision:
    due: bool
    reason: str
    points: int = 0
    changed: int = 0


def refit_due(catalog: Catalog, settings: AdaptSettings, threshold: float | None = None) -> RefitDecision:
    if not settings.auto:
        return RefitDecision(
            False, "automatic refits are off (ADAPT=false); `visual-search adapt` still works"
        )
    store = catalog.adaptation_store
    space = catalog.spaces.reload()
    raw = RawCollections(store)
    if raw.building_collections(space.collection):
        return RefitDecision(True, "an earlier adapt run left its copy half-done: resuming it")
    meta = raw.collection_metadata(space.collection)
    points = store.count()
    base, checked_at = meta.get("adapt_checked_points"), meta.get("adapt_checked_at")
    if base is None or not checked_at:
        return RefitDecision(
            points > 0, "never adapted" if points else "the catalogue is empty", points, points
        )
    changed = max(abs(points - int(base)), raw.count_indexed_since(space.collection, str(checked_at)))
    limit = (settings.change_threshold if threshold is None else threshold) * max(int(base), 1)
    due = changed > 0 and changed >= limit
    reason = (
        f"{changed} image changes (added, replaced or removed) since {checked_at}, when the "
        f"catalogue held {base} images ({'at or over' if due else 'under'} the threshold of {limit:.0f})"
    )
    return RefitDecision(due, reason, points, changed)


def run_maintenance(
    catalog: Catalog,
    settings: AdaptSettings,
    deadline: float | None = None,
    threshold: float | None = None,
    log: Callable[[str], None] = print,
    review: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Refit if due; returns what was decided and, if it ran, the adapt result.

    ``review`` runs first when a refit is due: the shopper views the catalogue disowns are held
    back (``visual_search.feedback.review_views``), so they do not steer the fit."""
    decision = refit_due(catalog, settings, threshold)
    out: dict[str, Any] = {"due": decision.due, "reason": decision.reason, "changed": decision.changed}
    if not decision.due:
        return out
    if review is not None:
        out["shopper_views"] = review()
    log(f"refitting: {decision.reason}")
    result: AdaptResult = Adapter(catalog, settings, log=log).run(deadline=deadline)
    out["adapt"] = result.as_dict()
    return out


class SettledRefit:
    """The local stack's refit: once nothing changed for ``ADAPT_SETTLE_S`` (no notification
    waiting, the point count steady), run the maintenance step in this thread."""

    def __init__(
        self,
        catalog: Catalog,
        settings: AdaptSettings,
        busy: Callable[[], bool],
        log: Callable[[str], None] = print,
        interval_s: float = 2.0,
        review: Callable[[], dict[str, Any]] | None = None,
    ):
        self.review = review
        self.catalog = catalog
        self.settings = settings
        self.busy = busy
        self.log = log
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="settled-refit", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)

    def _loop(self) -> None:
        last_count, quiet_since, checked = -1, time.monotonic(), False
        while not self._stop.wait(self.interval_s):
            try:
                count = self.catalog.count()
                if self.busy() or count != last_count:
                    last_count, quiet_since, checked = count, time.monotonic(), False
                    continue
                if checked or time.monotonic() - quiet_since < self.settings.settle_s:
                    continue
                checked = True  # once per quiet period
                out = run_maintenance(self.catalog, self.settings, log=self.log, review=self.review)
                if "adapt" in out:
                    self.runs += 1
                    self.log(f"catalogue adaptation: {out['adapt']['status']}: {out['adapt']['reason']}")
            except Exception as exc:
                self.log(f"catalogue adaptation failed: {type(exc).__name__}: {exc}")
