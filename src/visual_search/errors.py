"""Typed errors the domain raises. Each has a stable ``code``; the HTTP layer maps its type to
a status code in one table (``visual_search.api.statuses``)."""

from __future__ import annotations


class VisualSearchError(Exception):
    """Base class: ``code`` is a stable name clients can act on."""

    code = "internal_error"


class ImageError(VisualSearchError):
    """The bytes are not an image we can use. Permanent: retrying never helps."""

    code = "invalid_image"


class EmptyImageError(ImageError):
    code = "empty_image"


class UnsupportedImageError(ImageError):
    code = "unsupported_image"


class CorruptImageError(ImageError):
    code = "corrupt_image"


class ImageTooLargeError(ImageError):
    code = "image_too_large"


class ModelError(VisualSearchError):
    code = "model_error"


class ModelMismatchError(VisualSearchError):
    """A collection built by one model is being used with another's embeddings."""

    code = "model_mismatch"

    def __init__(self, collection: str, collection_model: str, model: str):
        super().__init__(
            f"collection {collection!r} holds embeddings of model {collection_model!r} but the "
            f"loaded model is {model!r}; embedding spaces cannot be mixed. Point COLLECTION at "
            f"another collection or re-index with `visual-search reindex`."
        )
        self.collection_model = collection_model
        self.model = model


class StoreUnavailableError(VisualSearchError):
    """Qdrant could not be reached or timed out. Transient: retry later."""

    code = "store_unavailable"


class StaleProjectionError(StoreUnavailableError):
    """This instance holds another projection than the collection's (``visual-search adapt``
    switched it meanwhile). Transient, like an outage: the space is reloaded and the work retried,
    so no write ever mixes two projections in one collection."""

    code = "stale_projection"


class ModelUnavailableError(StoreUnavailableError, ModelError):
    """The model a collection names cannot be served now: not in the registry, or its file does
    not match its card (visual_search.registry). Never replaced by another model's vectors;
    transient like an outage (a search answers 503, an ingest change is retried) until the
    model is published again."""

    code = "model_unavailable"


class RegistryConflictError(ModelError):
    """Another model is already published under this id."""

    code = "model_conflict"


class NotFoundError(VisualSearchError):
    code = "not_found"


class RequestError(VisualSearchError):
    """The HTTP request itself is wrong (shape, encoding, missing parts)."""

    code = "bad_request"

    def __init__(self, message: str, code: str | None = None, details: list | None = None):
        super().__init__(message)
        if code:
            self.code = code
        self.details = details


class BodyTooLargeError(RequestError):
    code = "body_too_large"


class UnsupportedMediaTypeError(RequestError):
    code = "unsupported_media_type"


class InvalidOptions(RequestError):
    """Options that parse but are not acceptable (field-level ``details``)."""

    code = "invalid_options"

    def __init__(self, message: str, details: list | None = None):
        super().__init__(message, details=details)


class FeedbackError(RequestError):
    """A shopper's click that cannot be taken (see ``visual_search.feedback``)."""

    code = "feedback_refused"


class FeedbackDisabledError(FeedbackError):
    code = "feedback_disabled"


class UnknownSearchError(FeedbackError):
    code = "unknown_search"


class SearchExpiredError(FeedbackError):
    code = "search_expired"


class NotShownError(FeedbackError):
    code = "not_shown"


class FeedbackGivenError(FeedbackError):
    code = "feedback_given"
