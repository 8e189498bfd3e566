"""Measure what `visual-search adapt` costs per point, on synthetic vectors (no model, no photos).

    .venv/bin/python tools/measure_adapt.py --points 20000 [--dim 1280] [--products 2000]

Fills an embedded in-memory collection (or QDRANT_URL's server) with ``--points`` unit vectors in
``--products`` products, runs one adapt, and prints the seconds of each stage (label scan and
sample read, fit, copy with the adapted vector, catch-up), the points per second of the copy,
the same per 100k points, and the process's peak memory. It also times the parts that do not
depend on the store: the projection of 100k vectors, and JSON-encoding and decoding them (what
qdrant-client's REST path does to every vector it sends or reads).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from visual_search.adaptation.adapter import Adapter
from visual_search.catalog import Catalog
from visual_search.config import AdaptSettings, load_settings
from visual_search.model import get_embedder
from visual_search.store import CatalogStore, ImagePoint, open_client_backend


def fill(store: CatalogStore, points: int, products: int, dim: int, batch: int = 512) -> float:
    rng = np.random.default_rng(0)
    # photos of one product differ mostly along a few shared nuisance directions, as lighting
    # and shelves make them (so the fit finds something to gain, as on real catalogues)
    centres = rng.normal(size=(products, dim)).astype(np.float32) * 0.25
    nuisance = rng.normal(size=(12, dim)).astype(np.float32)
    started = time.perf_counter()
    for start in range(0, points, batch):
        n = min(batch, points - start)
        labels = rng.integers(0, products, n)
        x = centres[labels] + rng.normal(size=(n, 12)).astype(np.float32) @ nuisance * 0.35
        x += rng.normal(size=(n, dim)).astype(np.float32) * 0.05
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        store.upsert(
            [
                ImagePoint(
                    "bench",
                    f"catalog/{start + i}.jpg",
                    x[i],
                    {"product_id": f"p{labels[i]}", "key": f"{start + i}"},
                )
                for i in range(n)
            ]
        )
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--products", type=int, default=2_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    settings = load_settings()
    store_settings = settings.store
    if not store_settings.url:
        from dataclasses import replace

        store_settings = replace(store_settings, path=":memory:")
    from dataclasses import replace

    store_settings = replace(store_settings, collection=f"measure-{uuid.uuid4().hex[:8]}")
    embedder = get_embedder()
    store = CatalogStore(open_client_backend(store_settings), store_settings, embedder.model_id, args.dim)
    catalog = Catalog(embedder, store, projection_check_s=3600)
    filled = fill(store, args.points, args.products, args.dim)
    adapt_settings = AdaptSettings(batch=args.batch, grace_s=0.0, dims=(None,), sample=settings.adapt.sample)
    result = Adapter(catalog, adapt_settings, log=lambda m: None).run()
    x = np.random.default_rng(1).normal(size=(10_000, args.dim)).astype(np.float32)
    projection = catalog.spaces.current().projection
    t = time.perf_counter()
    if projection is not None:
        projection.apply(x)
    project_100k = (time.perf_counter() - t) * 10
    model_input = embedder.session.get_inputs()[0]
    pixels = np.zeros((1, *[int(d) for d in model_input.shape[1:]]), np.float32)
    embedder.session.run(None, {model_input.name: pixels})
    t = time.perf_counter()
    for _ in range(20):
        embedder.session.run(None, {model_input.name: pixels})
    session_run_ms = (time.perf_counter() - t) / 20 * 1000
    t = time.perf_counter()
    text = json.dumps([row.tolist() for row in x[:1000]])
    encode_100k = (time.perf_counter() - t) * 100
    t = time.perf_counter()
    json.loads(text)
    decode_100k = (time.perf_counter() - t) * 100
    copy_s = result.seconds.get("copy", 0.0)
    out = {
        "store": store_settings.mode,
        "points": args.points,
        "dim": args.dim,
        "status": result.status,
        "fill_s": round(filled, 1),
        "seconds": result.seconds,
        "copy_points_per_s": round(args.points / copy_s) if copy_s else None,
        "per_100k_points_s": {
            "copy": round(copy_s * 100_000 / args.points, 1),
            "total": round(result.seconds.get("total", 0.0) * 100_000 / args.points, 1),
            "projection_only": round(project_100k, 1),
            "json_encode_vectors": round(encode_100k, 1),
            "json_decode_vectors": round(decode_100k, 1),
        },
        "bare_session_run_ms": round(session_run_ms, 2),
        "copy_ms_per_point_as_session_runs": round(copy_s * 1000 / args.points / session_run_ms, 3)
        if copy_s
        else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
