"""The collection a model change leaves: kept as ``<COLLECTION>.previous`` for a while, for
``visual-search model rollback``, then dropped (by the maintenance function).

Only the catalogue's own methods: the maintenance function imports this at its cold start
without the fleet's and the pipeline's modules.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ..catalog import Catalog

KEEP_PREVIOUS_H = 72.0


def keep_as_previous(
    catalog: Catalog, old: str, new: str, hours: float, log: Callable[[str], None] = print
) -> str:
    """Keep ``old`` as ``<COLLECTION>.previous`` for ``hours`` after the alias moved to ``new``,
    dropping the one kept from the change before; until when."""
    until = (datetime.now(UTC) + timedelta(hours=hours)).isoformat(timespec="seconds")
    superseded = catalog.previous_collection()
    catalog.update_metadata_of(old, {"previous_kept_until": until})
    catalog.set_previous(old)
    if superseded and superseded not in (old, new):
        catalog.drop_collection(superseded)
        log(f"dropped {superseded}, the collection kept from the change before")
    log(f"kept {old} until {until} for `visual-search model rollback`")
    return until


def retire_previous(catalog: Catalog, now: datetime | None = None) -> str | None:
    """Drop the collection kept for a rollback once its time is up; returns its name."""
    previous = catalog.previous_collection()
    if not previous:
        return None
    until = catalog.metadata_of(previous).get("previous_kept_until")
    if not until or datetime.fromisoformat(str(until)) > (now or datetime.now(UTC)):
        return None
    catalog.set_previous(None)
    catalog.drop_collection(previous)
    return previous
