"""Models as data: the registry in S3 (``registry``) and the model that serves each
collection (``serving``). See docs/deploy.md, "Changing the model"."""

from ..errors import ModelUnavailableError, RegistryConflictError
from .registry import ModelRegistry, PublishedModel, base_model, check_model_id
from .serving import ModelSource, registry_from

__all__ = [
    "ModelRegistry",
    "ModelSource",
    "ModelUnavailableError",
    "PublishedModel",
    "RegistryConflictError",
    "base_model",
    "check_model_id",
    "registry_from",
]
