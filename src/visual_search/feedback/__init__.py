"""Learning from shoppers' clicks: a search's photo becomes a shopper view of the product the
shopper picked.

Every search answer carries a ``search_id``; the query photo and the products shown are kept in
the bucket under ``QUERY_PHOTO_PREFIX`` (never indexed, expired by a lifecycle rule) for
``QUERY_PHOTO_TTL_H`` hours (``searches.SearchLog``). ``POST /feedback`` with that id and one of
the products shown copies the photo under ``SHOPPER_VIEWS_PREFIX`` as a photo of that product
(``views.ShopperViews``), once per search. From there the ingest function indexes it like any
catalogue photo (payload ``source: "shopper"``), so the bucket stays the truth: re-index,
adaptation, fine-tuning and model changes carry shopper views like the catalogue's own photos,
and deleting a product's last catalogue photo deletes its shopper views.

A wrong click (a shopper picking a look-alike) would pull its product towards other products'
photos; before each refit, ``review.review_views`` holds back the views that the catalogue's
other photos disown (their labelled product is not the nearest to them), so they neither steer
the adaptation nor answer searches, and releases those it no longer doubts.
"""

from .learning import Feedback, FeedbackResult
from .review import ReviewResult, review_views, reviewer
from .searches import SearchLog, SearchRecord
from .views import ShopperView, ShopperViews

__all__ = [
    "Feedback",
    "FeedbackResult",
    "ReviewResult",
    "SearchLog",
    "SearchRecord",
    "ShopperView",
    "ShopperViews",
    "review_views",
    "reviewer",
]
