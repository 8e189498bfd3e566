"""Shopper views: photos shoppers picked a product for, kept in the bucket beside the catalogue.

A view is an object ``<SHOPPER_VIEWS_PREFIX><product>/<written at>-<search_id>.<ext>`` carrying the product's
own metadata (``product-id``, category, brand, title, price, the rest) and ``source: shopper``:
the ingest function indexes it like a catalogue photo, with ``source: "shopper"`` in its payload.
At most ``MAX_SHOPPER_VIEWS_PER_PRODUCT`` per product: the oldest go first.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import Header
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote, unquote

from ..config import FeedbackSettings

# Product fields a view copies from its product's catalogue payload, by S3 metadata name.
PRODUCT_FIELDS = {"category": "category", "brand": "brand", "title": "title", "price": "price"}
MAX_METADATA_BYTES = 2048  # S3's limit on an object's user metadata


def metadata_value(value: Any) -> str:
    """A metadata value S3 takes: ASCII as is, anything else as an RFC 2047 encoded-word (the
    ingest function decodes both)."""
    text = str(value)
    return text if text.isascii() else Header(text, "utf-8").encode()


def view_metadata(product_id: str, search_id: str, payload: Mapping[str, Any]) -> dict[str, str]:
    """The S3 metadata of a view: the product's, so filters find the view like its photos."""
    meta = {str(k).lower(): str(v) for k, v in (payload.get("metadata") or {}).items()}
    for name, field in PRODUCT_FIELDS.items():
        if payload.get(field) is not None:
            meta[name] = str(payload[field])
    meta.update({"product-id": product_id, "source": "shopper", "search-id": search_id})
    encoded = {k: metadata_value(v) for k, v in meta.items()}
    while sum(len(k) + len(v) for k, v in encoded.items()) > MAX_METADATA_BYTES:
        extra = [k for k in encoded if k not in ("product-id", "source", "search-id", *PRODUCT_FIELDS)]
        if not extra:
            break
        encoded.pop(extra[-1])  # S3 refuses more than 2 KB: free-form fields give way first
    return encoded


@dataclass(frozen=True)
class ShopperView:
    key: str
    product_id: str
    search_id: str
    modified: datetime
    size: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "product_id": self.product_id,
            "search_id": self.search_id,
            "modified": self.modified.isoformat(timespec="seconds"),
            "size": self.size,
        }


class ShopperViews:
    """The shopper views of one bucket (see the module docstring)."""

    def __init__(self, s3: Any, bucket: str, settings: FeedbackSettings):
        self.s3 = s3
        self.bucket = bucket
        self.settings = settings

    def folder(self, product_id: str) -> str:
        return f"{self.settings.views_prefix}{quote(product_id, safe='')}/"

    def add(
        self,
        product_id: str,
        search_id: str,
        photo: bytes,
        content_type: str,
        ext: str,
        payload: Mapping[str, Any],
    ) -> tuple[str, list[str]]:
        """Write the view (``ext``: the kept photo's extension); (its key, the keys of older views
        dropped to stay under the cap)."""
        # named by when it was written, so a product's views list oldest first (S3 lists by key;
        # its LastModified counts whole seconds)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        key = f"{self.folder(product_id)}{stamp}-{search_id}.{ext}"
        self.s3.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=photo,
            ContentType=content_type,
            Metadata=view_metadata(product_id, search_id, payload),
        )
        views = sorted(self.list_views(product_id), key=lambda v: v.key)
        excess = [v.key for v in views if v.key != key][: max(0, len(views) - self.settings.max_views)]
        self._delete(excess)
        return key, excess

    def list_views(
        self, product_id: str | None = None, before: datetime | None = None
    ) -> Iterator[ShopperView]:
        prefix = self.folder(product_id) if product_id is not None else self.settings.views_prefix
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                key = obj["Key"]
                rest = PurePosixPath(key[len(self.settings.views_prefix) :])
                if len(rest.parts) != 2 or (before is not None and obj["LastModified"] >= before):
                    continue
                search_id = rest.stem.rpartition("-")[2]
                yield ShopperView(key, unquote(rest.parts[0]), search_id, obj["LastModified"], obj["Size"])

    def purge(self, product_id: str | None = None, before: datetime | None = None) -> list[str]:
        """Delete views (of one product, older than ``before``); the keys deleted."""
        keys = [v.key for v in self.list_views(product_id, before)]
        self._delete(keys)
        return keys

    def _delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            objects = [{"Key": k} for k in keys[start : start + 1000]]
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
