"""Which model serves a collection: the one that built it, as its metadata records.

A collection records its model's id, fingerprint, registry id and sha256 when it is created
(``Embedder.fields``). ``ModelSource.for_collection`` gives the embedder that writes and
queries it: the layer's own model when the collection names it, otherwise the registry's copy,
fetched once into the cache folder, its file checked against its card, its fingerprint against
the collection's. At most ``keep`` registry models stay loaded (least recently used dropped).
Without a registry a collection of another model is refused, as it always was.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from ..config import Settings
from ..errors import ModelMismatchError, ModelUnavailableError
from ..model import Embedder
from .registry import ModelRegistry

FLIP = "+flip"  # Embedder.model_id's mark of flip test-time augmentation


class ModelSource:
    def __init__(
        self,
        layer: Embedder,
        registry: ModelRegistry | None = None,
        settings: Settings | None = None,
        keep: int = 2,
        layer_space: tuple[str, str | None] | None = None,
    ):
        self.layer = layer
        # the model id and fingerprint collections of the layer's model record (the embedder's own,
        # unless the store it serves was opened under another name for it)
        self.layer_space = layer_space or (layer.model_id, layer.fingerprint)
        self.registry = registry
        self.settings = settings
        self.keep = max(1, keep)
        self._loaded: OrderedDict[tuple[str, str | None, bool], Embedder] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def follows(self) -> bool:
        """Whether collections of other models are served (there is a registry to load them from)."""
        return self.registry is not None

    def is_layer(self, metadata: Mapping[str, Any]) -> bool:
        built_with = metadata.get("model_fingerprint")
        model_id, fingerprint = self.layer_space
        return metadata.get("model_id") == model_id and (
            not built_with or not fingerprint or built_with == fingerprint
        )

    def for_collection(self, collection: str, metadata: Mapping[str, Any]) -> Embedder:
        """The embedder of the model that built ``collection`` (its metadata given)."""
        if self.is_layer(metadata) or not metadata.get("model_id"):
            return self.layer
        model_id = str(metadata["model_id"])
        if self.registry is None:
            raise ModelMismatchError(collection, model_id, self.layer.model_id)
        flip = model_id.endswith(FLIP)
        registry_id = str(metadata.get("model_card_id") or model_id.removesuffix(FLIP))
        sha256 = metadata.get("model_sha256")
        key = (registry_id, sha256, flip)
        with self._lock:
            embedder = self._loaded.get(key)
            if embedder is None:
                embedder = self._load(collection, registry_id, sha256, flip, metadata)
                self._loaded[key] = embedder
                while len(self._loaded) > self.keep:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(key)
            return embedder

    def published(self, model_id: str) -> Embedder:
        """A registry model by id (fetched and checked), as it would serve a new collection."""
        if self.registry is None:
            raise ModelUnavailableError(
                f"no model registry is configured (MODELS_BUCKET): model {model_id!r} cannot be loaded"
            )
        return self.for_collection("(new)", {"model_id": model_id, "model_card_id": model_id})

    def _load(
        self, collection: str, model_id: str, sha256: str | None, flip: bool, metadata: Mapping[str, Any]
    ) -> Embedder:
        assert self.registry is not None
        folder = self.registry.fetch(model_id, sha256)
        layer = self.layer
        embedder = Embedder(
            folder,
            threads=self.settings.ort_threads if self.settings else 1,
            max_batch=layer.max_batch,
            limits=layer.limits,
            flip_tta=flip,
        )
        built_with = metadata.get("model_fingerprint")
        if built_with and embedder.fingerprint != built_with:
            raise ModelUnavailableError(
                f"collection {collection!r} was built by model {model_id!r} with fingerprint {built_with}; "
                f"the registry's {model_id!r} has fingerprint {embedder.fingerprint}: not the same model"
            )
        return embedder

    def loaded(self) -> list[str]:
        """The registry models in memory now, least recently used first."""
        with self._lock:
            return [embedder.model_id for embedder in self._loaded.values()]


def registry_from(settings: Settings) -> ModelRegistry | None:
    """The registry the settings name (``MODELS_BUCKET``), or None."""
    models = settings.models
    if not models.bucket:
        return None
    from ..aws import s3_client

    return ModelRegistry(s3_client, models.bucket, models.prefix, models.cache_dir)
