"""``visual-search eval DIR``: how often the right product comes first.

DIR holds one subfolder per product (folder name = product id). Every image is indexed into a
temporary in-memory collection through the same code the functions use; then each image queries
the collection (leave-one-out: its own point is dropped from the answer) and we report
recall@1/5/10 (a correct product among the first k others) and mAP@R (R = the number of other
images of the query's product), with indexing throughput and query latency.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from .catalog import Catalog, ImageSource
from .config import StoreSettings
from .domain import Query
from .folders import LocalImage, scan
from .model import Embedder
from .store import CatalogStore

KS = (1, 5, 10)


class PixelEmbedder:
    """The raw-pixel baseline: a 32x32 greyscale thumbnail, mean-centred, as the vector."""

    side = 32

    def __init__(self):
        from .config import ImageLimits

        self.limits = ImageLimits()
        self.model_id = "raw-pixels-32"
        self.dim = self.side * self.side

    def preprocess(self, data: bytes) -> np.ndarray:
        from .images import open_image

        image = open_image(data, self.limits).convert("L")
        array = np.asarray(
            image.resize((self.side, self.side), Image.Resampling.BILINEAR), np.float32
        ).ravel()
        array -= array.mean()
        return array / max(float(np.linalg.norm(array)), 1e-6)

    def preprocess_many(self, images: Sequence[bytes]) -> list:
        return [self.preprocess(d) for d in images]

    def embed_pixels(self, batch: np.ndarray) -> np.ndarray:
        return batch.reshape(len(batch), -1)

    def embed_prepared(self, decoded: Sequence[np.ndarray]) -> list:
        return list(decoded)

    def embed_many(self, images: Sequence[bytes]) -> list:
        return self.embed_prepared(self.preprocess_many(images))


@dataclass
class EvalResult:
    model: str
    images: int
    products: int
    metrics: dict[str, float]
    index_images_per_s: float
    query_ms_median: float
    query_ms_p99: float

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            **self.metrics,
            "images": self.images,
            "products": self.products,
            "index_images_per_s": self.index_images_per_s,
            "query_latency_ms": {"median": self.query_ms_median, "p99": self.query_ms_p99},
        }


def product_of(image: LocalImage) -> str:
    return image.key.split("/")[0]


def average_precision_at_r(relevant: list[bool], r: int) -> float:
    hits, total = 0, 0.0
    for i, rel in enumerate(relevant[:r], 1):
        if rel:
            hits += 1
            total += hits / i
    return total / r if r else 0.0


def evaluate(
    folder: Path,
    embedder: Embedder | PixelEmbedder,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
    batch: int = 32,
    reranker: Embedder | None = None,
) -> EvalResult:
    images = scan(folder)
    if limit:
        images = _subset(images, limit)
    products = {product_of(img) for img in images}
    if len(images) < 2 or len(products) < 2:
        raise ValueError(f"{folder} needs at least two products with images to evaluate")
    store = CatalogStore.open(
        StoreSettings(path=":memory:", collection="eval"),
        embedder.model_id,
        embedder.dim,
        rerank_model_id=reranker.model_id if reranker else None,
        rerank_dim=reranker.dim if reranker else None,
    )
    catalog = Catalog(embedder, store, reranker)  # type: ignore[arg-type]
    progress = progress or (lambda n: None)
    started = time.perf_counter()
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        sources = [
            ImageSource("eval", img.key, img.path.read_bytes(), {"product-id": product_of(img)})
            for img in chunk
        ]
        result = catalog.index(sources)
        for img, item in zip(chunk, result.results):
            if not item.ok:
                raise ValueError(f"{img.path}: {item.error}")
        progress(len(chunk))
    index_rate = len(images) / (time.perf_counter() - started)
    counts = {p: sum(1 for img in images if product_of(img) == p) for p in products}
    recalls = {k: [] for k in KS}
    aps, latencies = [], []
    for img in images:
        product, r = product_of(img), counts[product_of(img)] - 1
        top = min(len(images), max(max(KS), r) + 1)
        t0 = time.perf_counter()
        hits = _query(catalog, img.path.read_bytes(), top)
        latencies.append((time.perf_counter() - t0) * 1000)
        relevant = [h.payload["product_id"] == product for h in hits if h.payload["key"] != img.key]
        for k in KS:
            recalls[k].append(any(relevant[:k]))
        if r:
            aps.append(average_precision_at_r(relevant, r))
        progress(1)
    store.close()
    latencies.sort()
    metrics = {f"recall@{k}": round(float(np.mean(v)), 4) for k, v in recalls.items()}
    metrics["mAP@R"] = round(float(np.mean(aps)), 4) if aps else 0.0
    return EvalResult(
        store.space,
        len(images),
        len(products),
        metrics,
        round(index_rate, 1),
        round(statistics.median(latencies), 2),
        round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2),
    )


def _query(catalog: Catalog, data: bytes, top: int):
    return catalog.search_image(data, Query(top_k=top, group_by_product=False)).hits


def _subset(images: list[LocalImage], limit: int) -> list[LocalImage]:
    """An even subset: the same number of images from each product, up to ``limit`` in all."""
    by_product: dict[str, list[LocalImage]] = {}
    for img in images:
        by_product.setdefault(product_of(img), []).append(img)
    per = max(2, limit // max(1, len(by_product)))
    return [img for group in by_product.values() for img in group[:per]][:limit]
