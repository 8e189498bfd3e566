"""Collection lifecycle: the ``COLLECTION`` alias over physical collections, what built them
(model id, fingerprint and any other metadata), their payload indexes, creating and dropping.

A collection's metadata is an open dict written at creation (``CatalogStore.metadata``) and
readable / updatable later (``CatalogStore.collection_metadata``, ``update_metadata``). The
model id, the reranker's id and the model fingerprint are checked here on every open; other
keys (e.g. a projection id) are for their owners to check.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ModelMismatchError
from .backend import FLOAT_FIELDS, KEYWORD_FIELDS, CollectionExists, CollectionInfo, StoreBackend, VectorSpec


def slug(text: str) -> str:
    """A collection-name-safe form of a model id."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text.lower())[:48]


class Lifecycle:
    """Creates, finds and checks the collections of one store configuration."""

    def __init__(
        self,
        backend: StoreBackend,
        alias: str,
        vectors: Mapping[str, VectorSpec],
        metadata: Mapping[str, Any],
        space: str,
        check_models: bool = True,
    ):
        self.check_models = check_models
        self.backend = backend
        self.alias = alias
        self.vectors = vectors
        self.metadata = metadata
        self.space = space  # the model (and reranker) in words, for errors

    def ensure(self, model_id: str) -> None:
        """Find COLLECTION (alias or plain) and check it; else create ``<alias>-<model>`` and
        point the alias at it. A creation race lost to another process is looked at again."""
        for attempt in range(3):
            try:
                self._ensure(model_id)
                return
            except CollectionExists:
                if attempt == 2:
                    raise

    def _ensure(self, model_id: str) -> None:
        if self.exists(self.alias):
            self.check(self.alias)
            return
        physical = f"{self.alias}-{slug(model_id)}"
        if not self.backend.collection_exists(physical):
            self.create(physical)
        else:
            self.check(physical)
        self.backend.set_alias(self.alias, physical)

    def exists(self, name: str) -> bool:
        return name in self.backend.aliases() or self.backend.collection_exists(name)

    def physical(self) -> str | None:
        """The collection behind the alias (itself if it is not an alias), or None."""
        target = self.backend.aliases().get(self.alias)
        if target:
            return target
        return self.alias if self.backend.collection_exists(self.alias) else None

    def create(self, name: str) -> None:
        """A collection with this configuration's named vectors, metadata and payload indexes."""
        self.backend.create_collection(name, self.vectors, self.metadata)
        self.backend.create_indexes(name, KEYWORD_FIELDS + FLOAT_FIELDS)

    def check(self, name: str) -> None:
        """Refuse another model's collection; add payload indexes a failed creation left out."""
        info = self.backend.collection_info(name)
        if self.check_models:
            self.check_model(info)
        missing = [f for f in KEYWORD_FIELDS + FLOAT_FIELDS if f not in info.indexed_fields]
        if missing and self.backend.is_server:
            self.backend.create_indexes(name, missing)

    def check_model(self, info: CollectionInfo) -> None:
        metadata = info.metadata
        built_by = metadata.get("model_id")
        if built_by is None:
            size = info.vectors.get("image")
            built_by = f"unknown model ({size}-d)" if size else "unknown model"
        reranker = metadata.get("rerank_model_id")
        if built_by != self.metadata.get("model_id") or reranker != self.metadata.get("rerank_model_id"):
            space = str(built_by) + (f" (rerank: {reranker})" if reranker else "")
            raise ModelMismatchError(self.alias, space, self.space)
        built_with = metadata.get("model_fingerprint")  # absent in collections made before it
        fingerprint = self.metadata.get("model_fingerprint")
        if built_with and fingerprint and built_with != fingerprint:
            raise ModelMismatchError(
                self.alias,
                f"{built_by} (fingerprint {built_with})",
                f"{self.space} (fingerprint {fingerprint})",
            )
        absent = sorted(set(self.vectors) - set(info.vectors)) if info.vectors else []
        if absent:
            raise ModelMismatchError(
                self.alias,
                f"{built_by} (vectors {sorted(info.vectors)})",
                f"{self.space} (vectors {sorted(self.vectors)}: {', '.join(absent)} missing)",
            )
