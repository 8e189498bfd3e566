"""``visual-search eval DIR``: how often the right product comes first.

DIR holds one subfolder per product (folder name = product id). Two protocols:

- leave-one-out (default): every image is indexed into a temporary in-memory collection through
  the same code the functions use, then queries it (its own point dropped from the answer);
- split (``--queries 'val_*,test_*'``): images whose file name matches a pattern are the queries,
  the others the gallery; only the gallery is indexed.

We report recall@1/5/10 (a correct product among the first k images) and mAP@R (R = the
gallery images of the query's product), with indexing throughput and query latency. With
``--adapt`` the images are embedded once and ranked exactly in numpy (:mod:`retrieval`), raw and
in the catalogue-adapted space fitted on the gallery only (leave-one-out: k folds, so no query
is ever in its own fit).
"""

from __future__ import annotations

import fnmatch
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..catalog import Catalog, ImageSource
from ..config import StoreSettings
from ..domain import Hit, Query
from ..errors import ImageError
from ..model import Embedder
from ..store import CatalogStore
from .folders import LocalImage, scan
from .retrieval import Measured, measure

KS = (1, 5, 10)


class PixelEmbedder:
    """The raw-pixel baseline: a 32x32 greyscale thumbnail, mean-centred, as the vector."""

    side = 32

    def __init__(self):
        from ..config import ImageLimits

        self.limits = ImageLimits()
        self.model_id = "raw-pixels-32"
        self.dim = self.side * self.side

    def preprocess(self, data: bytes) -> np.ndarray:
        from ..images import open_image

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
    query_ms_median: float | None
    query_ms_p99: float | None
    protocol: str = "leave-one-out"
    queries: int = 0
    gallery: int = 0
    adapted: Measured | None = None  # --adapt: raw and adapted metrics and the fits

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            **self.metrics,
            "images": self.images,
            "products": self.products,
            "protocol": self.protocol,
            "queries": self.queries,
            "gallery": self.gallery,
            "index_images_per_s": self.index_images_per_s,
            "query_latency_ms": {"median": self.query_ms_median, "p99": self.query_ms_p99},
        }
        if self.adapted:
            out["raw"] = self.adapted.raw
            out["adapted"] = self.adapted.adapted
            out["fits"] = [vars(f) for f in self.adapted.fits]
            if self.adapted.confidence:
                out["confidence"] = self.adapted.confidence
        return out

    def lines(self, folder: str) -> list[str]:
        """The human-readable report."""
        out = self.as_json()
        split = f", {self.queries} queries against {self.gallery}" if self.protocol == "split" else ""
        lines = [
            f"{self.model} on {folder}: {self.images} images of {self.products} products "
            f"({self.protocol}{split})"
        ]
        keys = ("recall@1", "recall@5", "recall@10", "mAP@R")
        if self.adapted:
            lines.append(f"  {'':<10} {'raw':>7} {'adapted':>8}")
            adapted = self.adapted.adapted or {}
            lines += [
                f"  {k:<10} {self.adapted.raw[k]:>7.4f} {adapted.get(k, float('nan')):>8.4f}" for k in keys
            ]
            lines += [f"  fit{'' if f.fold is None else f' {f.fold}'}: {f.reason}" for f in self.adapted.fits]
            lines += [_confidence_line(name, c) for name, c in self.adapted.confidence.items()]
            lines.append(f"  embedding  {self.index_images_per_s} images/s")
            return lines
        lines += [f"  {k:<10} {out[k]:.4f}" for k in keys]
        lines.append(f"  indexing   {self.index_images_per_s} images/s")
        lines.append(f"  query      {self.query_ms_median} ms median, {self.query_ms_p99} ms p99")
        return lines


def _confidence_line(space: str, figures: dict[str, Any]) -> str:
    if not figures.get("calibrated"):
        return f"  confidence ({space}): not calibrated (no product has two or more gallery photos)"
    line = (
        f"  confidence ({space}): ECE {figures['ece']:.3f}, AUROC {figures['auroc']:.3f}, mean "
        f"{figures['mean_confidence']:.3f} vs recall@1 {figures['recall@1']:.3f}; no-match under "
        f"{figures['no_match_threshold']:.3f} keeps {figures['right_kept']:.3f} of right answers"
    )
    if "out_of_catalogue_no_match" in figures:
        line += (
            f", flags {figures['out_of_catalogue_no_match']:.3f} of "
            f"{figures['out_of_catalogue_queries']} photos of products left out"
        )
    return line


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
    queries: Sequence[str] | None = None,
    adapt: bool = False,
    folds: int = 5,
    gallery: Sequence[str] | None = None,
    leave_out: float = 0.0,
) -> EvalResult:
    """``leave_out``: with ``queries`` and ``adapt``, this share of the products (drawn with a
    fixed seed) loses its gallery photos: its queries then stand for shoppers' photos of
    products the shop does not carry (the confidence's open-set figures)."""
    if leave_out and not (queries and adapt):
        raise ValueError(
            "--leave-out needs --queries and --adapt (the open-set figures are the confidence's)"
        )
    images = scan(folder)
    if gallery:  # the split's gallery is these files only; the rest of the folder is left out
        wanted = query_mask(images, [*(queries or []), *gallery])
        images = [img for img, keep in zip(images, wanted) if keep]
    if limit:
        images = _subset(images, limit)
    products = {product_of(img) for img in images}
    if len(images) < 2 or len(products) < 2:
        raise ValueError(f"{folder} needs at least two products with images to evaluate")
    is_query = query_mask(images, queries) if queries else None
    if is_query is not None and (all(is_query) or not any(is_query)):
        raise ValueError(
            f"--queries {','.join(queries or [])}: {sum(is_query)} of {len(images)} file names match; "
            "the split needs both queries and a gallery"
        )
    if adapt:
        if reranker:
            raise ValueError("--adapt with a rerank model is not supported (the adaptation is of one space)")
        if leave_out and is_query is not None:
            images, is_query = _left_out(images, is_query, leave_out)
        return _evaluate_adapted(images, embedder, is_query, progress, batch, folds)
    if is_query is not None:
        return _evaluate_split(images, embedder, is_query, progress, batch, reranker)
    return _evaluate_leave_one_out(images, embedder, progress, batch, reranker)


def _left_out(
    images: list[LocalImage], is_query: list[bool], share: float
) -> tuple[list[LocalImage], list[bool]]:
    """The images without the gallery photos of ``share`` of the products (seed 0)."""
    products = sorted({product_of(img) for img in images})
    count = round(share * len(products))
    if not 1 <= count < len(products):
        raise ValueError(
            f"--leave-out {share}: {count} of {len(products)} products; leave out one or more, not all"
        )
    out = set(np.random.default_rng(0).choice(products, size=count, replace=False).tolist())
    keep = [q or product_of(img) not in out for img, q in zip(images, is_query)]
    return [i for i, k in zip(images, keep) if k], [q for q, k in zip(is_query, keep) if k]


def query_mask(images: Sequence[LocalImage], patterns: Sequence[str]) -> list[bool]:
    """True for the images whose file name matches one of the shell patterns (``val_*``)."""
    return [any(fnmatch.fnmatchcase(img.path.name, p) for p in patterns) for img in images]


def _open_catalog(embedder, reranker) -> Catalog:
    store = CatalogStore.open(
        StoreSettings(path=":memory:", collection="eval"),
        embedder.model_id,
        embedder.dim,
        rerank_model_id=reranker.model_id if reranker else None,
        rerank_dim=reranker.dim if reranker else None,
    )
    return Catalog(embedder, store, reranker)


def _index(catalog: Catalog, images: Sequence[LocalImage], batch: int, progress) -> float:
    """Index ``images`` through the catalogue; images per second."""
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
    return len(images) / (time.perf_counter() - started)


@dataclass
class _Scores:
    """Each query's ranked relevance and latency -> recall@k, mAP@R, median and p99 latency."""

    recalls: dict[int, list[bool]] = field(default_factory=lambda: {k: [] for k in KS})
    aps: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def add(self, relevant: list[bool], r: int, ms: float) -> None:
        """One query: ``relevant`` per ranked hit, ``r`` gallery images of its product."""
        for k in KS:
            self.recalls[k].append(any(relevant[:k]))
        if r:
            self.aps.append(average_precision_at_r(relevant, r))
        self.latencies.append(ms)

    def metrics(self) -> dict[str, float]:
        out = {f"recall@{k}": round(float(np.mean(v)), 4) for k, v in self.recalls.items()}
        out["mAP@R"] = round(float(np.mean(self.aps)), 4) if self.aps else 0.0
        return out

    def median_and_p99_ms(self) -> tuple[float, float]:
        latencies = sorted(self.latencies)
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        return round(statistics.median(latencies), 2), round(p99, 2)


def _timed_query(catalog: Catalog, image: LocalImage, top: int) -> tuple[list[Hit], float]:
    """The ``top`` nearest images (not grouped by product) and the query's milliseconds."""
    t0 = time.perf_counter()
    hits = catalog.search_image(image.path.read_bytes(), Query(top_k=top, group_by_product=False)).hits
    return hits, (time.perf_counter() - t0) * 1000


def _evaluate_leave_one_out(images, embedder, progress, batch, reranker) -> EvalResult:
    progress = progress or (lambda n: None)
    catalog = _open_catalog(embedder, reranker)
    index_rate = _index(catalog, images, batch, progress)
    counts = Counter(product_of(img) for img in images)
    scores = _Scores()
    for img in images:
        product, r = product_of(img), counts[product_of(img)] - 1
        hits, ms = _timed_query(catalog, img, min(len(images), max(max(KS), r) + 1))
        relevant = [h.payload["product_id"] == product for h in hits if h.payload["key"] != img.key]
        scores.add(relevant, r, ms)
        progress(1)
    catalog.close()
    return EvalResult(
        catalog.space,
        len(images),
        len(counts),
        scores.metrics(),
        round(index_rate, 1),
        *scores.median_and_p99_ms(),
    )


def _evaluate_split(images, embedder, is_query, progress, batch, reranker) -> EvalResult:
    progress = progress or (lambda n: None)
    gallery = [img for img, q in zip(images, is_query) if not q]
    queries = [img for img, q in zip(images, is_query) if q]
    catalog = _open_catalog(embedder, reranker)
    index_rate = _index(catalog, gallery, batch, progress)
    counts = Counter(product_of(img) for img in gallery)
    scores = _Scores()
    for img in queries:
        product, r = product_of(img), counts[product_of(img)]
        hits, ms = _timed_query(catalog, img, min(len(gallery), max(max(KS), r)))
        scores.add([h.payload["product_id"] == product for h in hits], r, ms)
        progress(1)
    catalog.close()
    return EvalResult(
        catalog.space,
        len(images),
        len({product_of(img) for img in images}),
        scores.metrics(),
        round(index_rate, 1),
        *scores.median_and_p99_ms(),
        "split",
        len(queries),
        len(gallery),
    )


def _evaluate_adapted(images, embedder, is_query, progress, batch, folds) -> EvalResult:
    """Embed every image once; raw and adapted metrics in numpy (the fit never sees a query)."""
    progress = progress or (lambda n: None)
    started = time.perf_counter()
    vectors = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        embedded = embedder.embed_many([img.path.read_bytes() for img in chunk])
        bad = [f"{img.path}: {item}" for img, item in zip(chunk, embedded) if isinstance(item, ImageError)]
        if bad:
            raise ValueError(bad[0])
        vectors.extend(embedded)
        progress(len(chunk))
    rate = len(images) / (time.perf_counter() - started)
    labels = [product_of(img) for img in images]
    measured = measure(
        np.stack(vectors), labels, None if is_query is None else np.asarray(is_query), True, folds
    )
    keys = [f"recall@{k}" for k in KS] + ["mAP@R"]
    return EvalResult(
        embedder.model_id,
        len(images),
        len(set(labels)),
        {k: (measured.adapted or measured.raw)[k] for k in keys},
        round(rate, 1),
        None,
        None,
        measured.protocol,
        measured.queries,
        measured.gallery,
        measured,
    )


def _subset(images: list[LocalImage], limit: int) -> list[LocalImage]:
    """An even subset: the same number of images from each product, up to ``limit`` in all."""
    by_product: dict[str, list[LocalImage]] = {}
    for img in images:
        by_product.setdefault(product_of(img), []).append(img)
    per = max(2, limit // max(1, len(by_product)))
    return [img for group in by_product.values() for img in group[:per]][:limit]
