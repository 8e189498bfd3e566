"""``visual-search audit DIR``: photos nearer to another product than to their own.

Such photos are likely mislabelled, or the same item under two product ids; both hurt search
and the catalogue adaptation (which learns from the labels). Every image of DIR (one subfolder
per product) is embedded once; for each photo we compare its most similar photo of its own
product with its most similar photo of any other product, and list the photos where the other
product wins, worst first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ImageError
from ..model import Embedder
from .folders import scan


@dataclass(frozen=True)
class Suspect:
    key: str  # the photo, relative to DIR
    product_id: str
    own_best: float  # cosine to the most similar other photo of its own product
    other_product: str
    other_key: str
    other_best: float

    @property
    def margin(self) -> float:
        return round(self.other_best - self.own_best, 4)

    def as_json(self) -> dict:
        return {**asdict(self), "margin": self.margin}


def suspects(keys: list[str], labels: list[str], vectors: np.ndarray) -> list[Suspect]:
    """Photos whose nearest other-product photo is more similar than any photo of their own."""
    x = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    y = np.asarray(labels)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    found = []
    for i in range(len(y)):
        own = np.where(y == y[i], sims[i], -np.inf)
        other = np.where(y != y[i], sims[i], -np.inf)
        j = int(other.argmax())
        if not np.isfinite(own.max()) or not np.isfinite(other[j]):
            continue  # a product's only photo, or a catalogue of one product
        if other[j] > own.max():
            found.append(
                Suspect(
                    keys[i],
                    str(y[i]),
                    round(float(own.max()), 4),
                    str(y[j]),
                    keys[j],
                    round(float(other[j]), 4),
                )
            )
    return sorted(found, key=lambda s: -s.margin)


def audit(
    folder: Path, embedder: Embedder, progress: Callable[[int], None] | None = None, batch: int = 32
) -> tuple[int, list[Suspect]]:
    """(photos audited, suspects) for an image folder."""
    images = scan(folder)
    progress = progress or (lambda n: None)
    vectors, keys, labels = [], [], []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        for img, item in zip(chunk, embedder.embed_many([img.path.read_bytes() for img in chunk])):
            if isinstance(item, ImageError):
                continue  # unreadable photos are ingest's business, not a label problem
            vectors.append(item)
            keys.append(img.key)
            labels.append(img.key.split("/")[0])
        progress(len(chunk))
    if not vectors:
        return 0, []
    return len(vectors), suspects(keys, labels, np.stack(vectors))
