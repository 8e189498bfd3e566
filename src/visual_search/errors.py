"""Typed errors the domain raises; the HTTP layer maps each to its status code."""

from __future__ import annotations


class VisualSearchError(Exception):
    """Base class: ``status`` is the HTTP status an API answers with, ``code`` a stable name."""

    status = 500
    code = "internal_error"


class ImageError(VisualSearchError):
    """The bytes are not an image we can use. Permanent: retrying never helps."""

    status = 400
    code = "invalid_image"


class EmptyImageError(ImageError):
    code = "empty_image"


class UnsupportedImageError(ImageError):
    code = "unsupported_image"


class CorruptImageError(ImageError):
    code = "corrupt_image"


class ImageTooLargeError(ImageError):
    status = 413
    code = "image_too_large"


class ModelError(VisualSearchError):
    code = "model_error"


class ModelMismatchError(VisualSearchError):
    """A collection built by one model is being used with another's embeddings."""

    status = 409
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

    status = 503
    code = "store_unavailable"


class NotFoundError(VisualSearchError):
    status = 404
    code = "not_found"


class RequestError(VisualSearchError):
    """The HTTP request itself is wrong (shape, size, media type)."""

    status = 400
    code = "bad_request"

    def __init__(
        self, message: str, status: int | None = None, code: str | None = None, details: list | None = None
    ):
        super().__init__(message)
        if status:
            self.status = status
        if code:
            self.code = code
        self.details = details


class InvalidOptions(RequestError):
    status = 422
    code = "invalid_options"

    def __init__(self, message: str, details: list | None = None):
        super().__init__(message, details=details)
