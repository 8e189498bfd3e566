"""The feedback flow: keep a search, take a shopper's click on one of its products."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from ..config import FeedbackSettings
from ..errors import NotFoundError, NotShownError, StoreUnavailableError
from .searches import PendingSearch, SearchLog
from .views import ShopperViews

if TYPE_CHECKING:  # pragma: no cover
    from ..catalog import Catalog


@dataclass(frozen=True)
class FeedbackResult:
    search_id: str
    product_id: str
    key: str  # the shopper view written
    dropped: list[str]  # older views of the product dropped to stay under the cap


class Feedback:
    """Searches kept and clicks taken for one bucket."""

    def __init__(self, s3: Any, bucket: str, settings: FeedbackSettings):
        self.settings = settings
        self.searches = SearchLog(s3, bucket, settings)
        self.views = ShopperViews(s3, bucket, settings)

    def begin(self, photo: bytes) -> PendingSearch:
        return self.searches.begin(photo)

    def finish(self, pending: PendingSearch, shown: Sequence[str]) -> str | None:
        return self.searches.finish(pending, shown)

    def click(self, catalog: Catalog, search_id: str, product_id: str) -> FeedbackResult:
        """The shopper picked ``product_id`` for search ``search_id``: its photo becomes a view."""
        record = self.searches.get(search_id)
        if product_id not in record.shown:
            raise NotShownError(
                f"product {product_id[:80]!r} was not among the {len(record.shown)} products "
                f"search {search_id} showed"
            )
        payload = catalog.product_payload(product_id)
        if payload is None:
            raise NotFoundError(f"product {product_id[:80]!r} is no longer in the catalogue")
        photo = self.searches.photo(record)
        self.searches.claim(search_id, product_id)
        try:
            ext = PurePosixPath(record.photo_key).suffix.lstrip(".")  # as the search kept it
            key, dropped = self.views.add(product_id, search_id, photo, record.content_type, ext, payload)
        except Exception as exc:
            self.searches.release(search_id)  # the shopper may try again
            raise StoreUnavailableError(f"the shopper view could not be written: {exc}") from exc
        return FeedbackResult(search_id, product_id, key, dropped)
