"""Holding back shopper views the catalogue disowns, before each refit.

A shopper sometimes picks a look-alike: the view then carries the wrong product and, once the
adaptation is refitted with it, pulls that product towards another's photos. Such a view is found
by its neighbours: leave it out, and the product it is labelled with is not the nearest product to
it (another product's photos, catalogue or shopper, are nearer than every photo of its own). A
held view keeps its point with ``held`` in its payload: it answers no search and is left out of
the fit. Every review judges every view again (a second pass without the first pass's suspects),
so a right view held while its product had few photos comes back once the product has more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ..catalog import Catalog
    from ..config import FeedbackSettings

NEIGHBOURS = 64  # images looked at around each view
REASON = "its neighbours disown it: another product's photos are nearer than its own product's"


@dataclass
class ReviewResult:
    checked: int = 0
    held: int = 0
    released: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "held": self.held, "released": self.released}


def disowned(view_id: str, product_id: str, neighbours: list[Any], ignored: set[str]) -> bool:
    """Whether another product is nearer to the view than every other photo of its own."""
    for hit in neighbours:
        if hit.id == view_id or hit.id in ignored:
            continue
        return str(hit.payload.get("product_id")) != product_id
    return False  # nothing else near: nothing disowns it


def review_views(catalog: Catalog, log: Callable[[str], None] = print) -> ReviewResult:
    """Hold back every shopper view its neighbours disown, release the others."""
    views = [v for v in catalog.shopper_views() if v.vector is not None]
    near = {v.id: catalog.nearest_images(np.asarray(v.vector, np.float32), NEIGHBOURS) for v in views}
    suspects: set[str] = set()
    for _ in range(2):  # the second pass judges without the first pass's suspects
        suspects = {
            v.id for v in views if disowned(v.id, str(v.payload.get("product_id")), near[v.id], suspects)
        }
    changes: dict[str, str | None] = {}
    for v in views:
        was = bool(v.payload.get("held"))
        if (v.id in suspects) != was:
            changes[v.id] = REASON if v.id in suspects else None
    catalog.hold_views(changes)
    held = sum(1 for why in changes.values() if why)
    result = ReviewResult(len(views), held, len(changes) - held)
    if views:
        log(
            f"shopper views: {len(views)} checked, {len(suspects)} held back "
            f"({held} newly, {result.released} released)"
        )
    return result


def reviewer(
    catalog: Catalog, settings: FeedbackSettings, log: Callable[[str], None] = print
) -> Callable[[], dict[str, Any]] | None:
    """The ``review`` step of ``run_maintenance`` (None when learning from clicks is off)."""
    if not settings.learn:
        return None
    return lambda: review_views(catalog, log).as_dict()
