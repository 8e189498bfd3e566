"""Which embedding space this process reads and writes: the physical collection behind the alias,
and the projection that collection's ``adapted`` vectors were made with (or none: raw space).

Both are resolved together and kept for ``PROJECTION_CHECK_S`` seconds of wall-clock time (a
SnapStart-restored or long-warm function looks again on its first call after that), so a warm
function picks up a new projection within that bound. Reads and writes go to the resolved
*physical* collection, never through the alias, so a query is never projected with one
projection and compared with another's vectors; after a write, the alias is looked at again and
a switch in the meantime raises ``StaleProjectionError`` (transient: the space is reloaded and
the write retried into the new collection), see ``Catalog.index``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..store import VECTOR, VectorSpec
from .calibration import Calibration
from .projections import ProjectionRepository
from .whitening import Projection

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Embedder
    from ..registry import ModelSource
    from ..store import CatalogStore

ADAPTED = "adapted"  # the named vector of the adapted space
CALIBRATION = "calibration"  # the collection metadata holding its confidence calibration (JSON)


@dataclass(frozen=True)
class Space:
    collection: str  # the physical collection the alias pointed at
    projection: Projection | None  # None: the raw model space
    store: CatalogStore  # pinned to ``collection``, with the ``adapted`` vector when projected
    calibration: Calibration | None = None  # what a score means in this space (calibration.py)
    embedder: Embedder | None = None  # the model that built the collection (registry.serving)

    @property
    def using(self) -> str:
        """The named vector queries compare with."""
        return VECTOR if self.projection is None else ADAPTED

    @property
    def projection_id(self) -> str | None:
        return self.projection.id if self.projection is not None else None

    def project(self, vectors: np.ndarray) -> np.ndarray | None:
        """Model vectors -> adapted vectors (None in the raw space)."""
        return None if self.projection is None else self.projection.apply(vectors)

    def calibration_summary(self) -> dict[str, Any] | None:
        """What /health reports about the confidence: its no-match threshold and evidence."""
        if self.calibration is None:
            return None
        stats = self.calibration.stats
        return {
            "no_match_threshold": self.calibration.no_match,
            **{k: stats.get(k) for k in ("fitted_at", "queries", "cv_recall_at_1", "cv_ece", "cv_auroc")},
        }

    def summary(self) -> dict[str, Any] | None:
        """What /health and `visual-search info` report about the projection."""
        if self.projection is None:
            return None
        stats = self.projection.stats
        raw, adapted = stats.get("cv_recall_raw"), stats.get("cv_recall_adapted")
        return {
            "id": self.projection.id,
            "fitted_at": stats.get("fitted_at"),
            "products": stats.get("products"),
            "photos": stats.get("photos"),
            "dims": self.projection.dim,
            "shrinkage": self.projection.shrinkage,
            "cv_recall_raw": raw,
            "cv_recall_adapted": adapted,
            "cv_gain": round(adapted - raw, 4) if raw is not None and adapted is not None else None,
        }


def _calibration(metadata: dict[str, Any]) -> Calibration | None:
    """The collection's calibration, if it has one fitted in its own space."""
    raw = metadata.get(CALIBRATION)
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return None
    found = Calibration.from_dict(data)
    if found is None or found.stats.get("space") != (metadata.get("projection_id") or "raw"):
        return None  # fitted for another space (a collection moved since): not this one's meaning
    return found


class SpaceTracker:
    """The current ``Space`` of a store, re-read every ``check_s`` seconds or on demand."""

    def __init__(
        self,
        store: CatalogStore,
        check_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        models: ModelSource | None = None,
        projections: ProjectionRepository | None = None,
    ):
        self.store = store
        self.models = models
        # the catalogue's projections (beside its alias), shared by the views of its other
        # collections (Catalog.for_collection: a re-index's or a model change's collection)
        self.projections = projections or ProjectionRepository(store)
        self.check_s = check_s
        self.clock = clock
        self._space: Space | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()

    def current(self) -> Space:
        space = self._space
        if space is not None and self.clock() - self._checked_at < self.check_s:
            return space
        return self.reload()

    def reload(self) -> Space:
        with self._lock:
            self._space = self.resolve()
            self._checked_at = self.clock()
            return self._space

    def resolve(self) -> Space:
        """The space behind the alias now (one alias and one collection lookup)."""
        self.store.ensure_collection()
        physical = self.store.physical_collection() or self.store.collection
        return self.space_of(physical)

    def space_of(self, physical: str) -> Space:
        """The space of one physical collection: its model, its projection, and the store
        pinned to it."""
        info = self.store.admin().collection_info(physical)
        embedder = self.models.for_collection(physical, info.metadata) if self.models else None
        layer = embedder is None or self.models is None or embedder is self.models.layer
        store = self.store if layer or embedder is None else self.store.for_model(embedder.fields)
        pid = info.metadata.get("projection_id")
        projection = self.projections.load(str(pid)) if pid else None
        vectors = {}
        if ADAPTED in info.vectors:
            on_disk = self.store.settings.vectors_on_disk
            vectors[ADAPTED] = VectorSpec(info.vectors[ADAPTED], "cosine", on_disk=on_disk)
        calibration = _calibration(info.metadata)
        return Space(physical, projection, store.pinned(physical, vectors), calibration, embedder)

    def invalidate(self) -> None:
        self._space = None

    def still_current(self, space: Space) -> bool:
        """Whether the alias still points at ``space``'s collection (asked of the store now)."""
        return self.store.physical_collection() == space.collection
