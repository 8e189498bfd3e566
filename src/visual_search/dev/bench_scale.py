"""``visual-search bench --only scale``: the embedded engine (qdrant-edge) at 10k and 100k points.

Synthetic clustered vectors stand in for a catalogue of that size (embedding 100k photos would
take longer than the benchmark): 1280-d, products of 4 photos each around a product centre,
products grouped in clusters of look-alikes, with category / brand / price payloads. The store is
configured as for servers (HNSW m=16, ef_construct=128, int8 scalar quantisation in RAM with
rescoring, original vectors on disk) in a temporary folder on disk. Measured per size: build
time (upserts, then the HNSW build), median / p90 latency of top-10, filtered top-10,
one-per-product and filtered one-per-product searches, recall@10 of each against exact
(numpy) search, the store's RSS and its real bytes on disk. One row of qdrant-client's local
mode (the previous embedded engine) at 10k is kept for comparison.
"""

from __future__ import annotations

import gc
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

DIM = 1280
PER_PRODUCT = 4
CATEGORIES = 20
BRANDS = 25
SEED = 7  # of the synthetic catalogue every size is built from
QUERIES = 100
FILTER = {"category": "cat-3", "price": {"gte": 5, "lte": 30}}


@dataclass
class Synthetic:
    vectors: np.ndarray  # (n, DIM) float32, unit length
    products: np.ndarray  # product index of each vector
    category: np.ndarray
    price: np.ndarray


def synthetic(count: int, seed: int = SEED) -> Synthetic:
    """Clustered unit vectors: cluster centre + product offset + photo noise."""
    rng = np.random.default_rng(seed)
    n_products = count // PER_PRODUCT
    clusters = rng.normal(size=(max(1, n_products // 50), DIM)).astype(np.float32)
    of_cluster = rng.integers(0, len(clusters), n_products)
    centres = clusters[of_cluster] + 0.8 * rng.normal(size=(n_products, DIM)).astype(np.float32)
    products = np.arange(count) // PER_PRODUCT
    vectors = np.empty((count, DIM), np.float32)
    for start in range(0, count, 10000):  # in chunks: no second full-size temporary
        part = products[start : start + 10000]
        chunk = centres[part] + 0.6 * rng.normal(size=(len(part), DIM)).astype(np.float32)
        vectors[start : start + len(part)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    category = (products * 7) % CATEGORIES
    price = 1.0 + (products * 13) % 50
    return Synthetic(vectors, products, category, price)


def payload(data: Synthetic, n: int) -> dict:
    product = int(data.products[n])
    return {
        "product_id": f"sku-{product}",
        "bucket": "bench",
        "key": f"sku-{product}/{n}.jpg",
        "category": f"cat-{int(data.category[n])}",
        "brand": f"brand-{product % BRANDS}",
        "price": float(data.price[n]),
    }


def queries(data: Synthetic, seed: int = 11) -> np.ndarray:
    """Other photos of stored products: stored vectors moved by fresh noise."""
    rng = np.random.default_rng(seed)
    picked = data.vectors[rng.choice(len(data.vectors), QUERIES, replace=False)]
    moved = picked + 0.03 * rng.normal(size=picked.shape).astype(np.float32)
    return moved / np.linalg.norm(moved, axis=1, keepdims=True)


def exact(data: Synthetic, qs: np.ndarray, filtered: bool, grouped: bool, k: int = 10) -> list[list[str]]:
    """The true top-k point ids (or product ids when grouped) of each query, by brute force.

    One matrix product over the vectors in chunks (at 1M points the vectors are 5 GB), then the
    best ``k * PER_PRODUCT`` images of each query: a product has at most ``PER_PRODUCT`` photos,
    so they hold the ``k`` nearest products."""
    from ..domain import point_id

    keep = k * PER_PRODUCT
    mask = (data.category == 3) & (data.price >= 5) & (data.price <= 30) if filtered else None
    best_scores = np.full((len(qs), 0), -np.inf, np.float32)
    best_ids = np.zeros((len(qs), 0), np.int64)
    for start in range(0, len(data.vectors), 50_000):
        scores = qs @ data.vectors[start : start + 50_000].T
        if mask is not None:
            scores = np.where(mask[start : start + 50_000], scores, -np.inf)
        ids = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_ids = np.concatenate([best_ids, ids], axis=1)
        if best_scores.shape[1] > keep:
            top = np.argpartition(-best_scores, keep, axis=1)[:, :keep]
            best_scores = np.take_along_axis(best_scores, top, axis=1)
            best_ids = np.take_along_axis(best_ids, top, axis=1)
    answers = []
    for scores, ids in zip(best_scores, best_ids, strict=True):
        order = [int(ids[n]) for n in np.argsort(-scores) if np.isfinite(scores[n])]
        if not grouped:
            answers.append([point_id("bench", payload(data, n)["key"]) for n in order[:k]])
            continue
        seen: list[str] = []
        for n in order:
            product = f"sku-{int(data.products[n])}"
            if product not in seen:
                seen.append(product)
        answers.append(seen[:k])
    return answers


def build_state(folder: Path) -> str:
    """What the HNSW build has done so far, read from the shard folders: segments with a graph,
    segments in all, and the bytes of the segment being built."""
    from ..store import disk_bytes

    segments = [d for d in folder.glob("collections/*/segments/*") if d.is_dir()]
    graphs = sum(1 for d in segments if any(d.glob("vector_index-*")))
    building = sum(disk_bytes(d) for d in folder.glob("collections/*/temp_segments/*"))
    return f"{graphs}/{len(segments)} segments with HNSW, {building / 2**20:.0f} MB being built"


def watch_build(folder: str, every_s: float) -> None:
    """Print the build's progress every ``every_s`` seconds until killed. Runs in a child
    process: ``optimize`` holds the GIL, so no thread of the benchmark can report meanwhile."""
    started = time.monotonic()
    while True:
        time.sleep(every_s)
        print(f"  HNSW build: {time.monotonic() - started:.0f} s, {build_state(Path(folder))}", flush=True)


@contextmanager
def build_progress(folder: str, every_s: float = 30.0):
    """Report the build in ``folder`` to stderr every ``every_s`` seconds while the block runs."""
    code = f"from visual_search.dev.bench_scale import watch_build; watch_build({folder!r}, {every_s})"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=sys.stderr)
    try:
        yield
    finally:
        child.kill()
        child.wait()


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


CASES = {
    "top10": (False, False),
    "filtered": (True, False),
    "one_per_product": (False, True),
    "filtered_one_per_product": (True, True),
}


def measure_store(store, data: Synthetic, qs: np.ndarray, truth: dict) -> dict:
    from ..domain import Filter, Query

    row: dict = {}
    for case, (filtered, grouped) in CASES.items():
        query = Query(top_k=10, group_by_product=grouped, filters=Filter.of(FILTER if filtered else {}))
        store.search(qs[0], query)  # warm-up
        times, recalls = [], []
        for n, vector in enumerate(qs):
            started = time.perf_counter()
            hits = store.search(vector, query)
            times.append((time.perf_counter() - started) * 1000.0)
            got = [h.payload["product_id"] if grouped else h.id for h in hits]
            want = truth[case][n]
            recalls.append(len(set(got) & set(want)) / max(1, len(want)))
        times.sort()
        row[f"{case}_median_ms"] = round(statistics.median(times), 2)
        row[f"{case}_p90_ms"] = round(times[int(0.9 * (len(times) - 1))], 2)
        row[f"{case}_recall@10"] = round(float(np.mean(recalls)), 4)
    return row


BUILD_STAMP = "bench-scale-build.json"


def build_signature(size: int, settings) -> dict:
    """What a built folder must match to be reused: the data and the build-time settings."""
    return {
        "points": size,
        "dim": DIM,
        "per_product": PER_PRODUCT,
        "categories": CATEGORIES,
        "brands": BRANDS,
        "seed": SEED,
        "hnsw_m": settings.hnsw_m,
        "hnsw_ef_construct": settings.hnsw_ef_construct,
        "quantization": settings.quantization,
        "vectors_on_disk": settings.vectors_on_disk,
    }


def reusable(folder: Path, signature: dict) -> dict | None:
    """The build times of a kept folder built with ``signature``, or None."""
    import json

    try:
        stamp = json.loads((folder / BUILD_STAMP).read_text())
    except (OSError, ValueError):
        return None
    return stamp if stamp.get("signature") == signature else None


def build(store, data: Synthetic, folder: str, log) -> tuple[float, float]:
    """Upsert every synthetic point, then build the HNSW graph: (upsert s, build s)."""
    from ..domain import ImagePoint

    size = len(data.vectors)
    started = time.perf_counter()
    for start in range(0, size, 1000):
        store.upsert(
            [
                ImagePoint("bench", payload(data, n)["key"], data.vectors[n], payload(data, n))
                for n in range(start, min(size, start + 1000))
            ]
        )
        if (start + 1000) % 100_000 == 0 and start + 1000 < size:
            log(f"  upserted {start + 1000:,} in {time.perf_counter() - started:.0f} s")
    upsert_s = time.perf_counter() - started
    log(f"scale {size}: upserted in {upsert_s:.1f} s; building the HNSW graph ...")
    started = time.perf_counter()
    with build_progress(folder):
        store.optimize()
    log(f"scale {size}: HNSW built in {time.perf_counter() - started:.0f} s ({build_state(Path(folder))})")
    return upsert_s, time.perf_counter() - started


def search_settings(settings) -> dict:
    """The query-time settings a row was measured with (environment: QDRANT_*)."""
    return {
        "search_hnsw_ef": settings.search_hnsw_ef,
        "filtered_hnsw_ef": settings.filtered_hnsw_ef,
        "filtered_acorn": settings.filtered_acorn,
        "oversampling": settings.quantization_oversampling,
    }


def edge_row(size: int, log, keep: str | None = None) -> dict:
    """One size on the embedded engine. With ``keep``, the built store stays in
    ``keep/scale-<size>`` and a later run with the same build settings searches it again instead
    of rebuilding (at 1M the build is most of an hour): query-time settings can be compared."""
    import json

    from ..config import get_settings
    from ..store import disk_bytes, open_store

    data = synthetic(size)
    qs = queries(data)
    truth = {case: exact(data, qs, *flags) for case, flags in CASES.items()}
    base = get_settings().store
    folder = str(Path(keep) / f"scale-{size}") if keep else tempfile.mkdtemp(prefix=f"bench-scale-{size}-")
    settings = replace(base, url=None, path=folder, collection="scale")  # server defaults: HNSW, int8
    signature = build_signature(size, settings)
    stamp = reusable(Path(folder), signature) if keep else None
    if stamp is None:
        shutil.rmtree(folder, ignore_errors=True)
        log(f"scale {size}: synthetic vectors and exact answers ready; upserting ...")
        store = open_store(settings, "synthetic-clustered", DIM)
        upsert_s, optimize_s = build(store, data, folder, log)
        store.close()
        if keep:
            stamp = {"signature": signature, "upsert_s": upsert_s, "hnsw_build_s": optimize_s}
            (Path(folder) / BUILD_STAMP).write_text(json.dumps(stamp))
    else:
        log(f"scale {size}: searching the store kept in {folder} (built before; build times from then)")
        upsert_s, optimize_s = stamp["upsert_s"], stamp["hnsw_build_s"]
    del data.vectors
    gc.collect()
    before = rss_mb()
    started = time.perf_counter()
    store = open_store(settings, "synthetic-clustered", DIM)
    store.count()
    reopen_s = time.perf_counter() - started
    data.vectors = np.zeros((0, DIM), np.float32)
    row = {
        "points": size,
        "engine": "qdrant-edge (HNSW, int8)",
        "upsert_s": round(upsert_s, 1),
        "hnsw_build_s": round(optimize_s, 1),
        "reopen_s": round(reopen_s, 2),
        **search_settings(settings),
        **measure_store(store, data, qs, truth),
        "store_rss_mb": round(rss_mb() - before, 1),
        "disk_mb": round(disk_bytes(Path(folder)) / 2**20, 1),
    }
    store.close()
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
    return row


def local_mode_row(size: int, log) -> dict:
    """The previous embedded engine, qdrant-client's local mode in memory, for comparison."""
    from ..config import StoreSettings
    from ..domain import ImagePoint
    from ..store import CatalogStore, open_client_backend

    data = synthetic(size)
    qs = queries(data)[:20]
    truth = {case: exact(data, qs, *flags) for case, flags in CASES.items()}
    gc.collect()
    before = rss_mb()
    settings = StoreSettings(path=":memory:", collection="scale-local")
    backend = open_client_backend(settings)  # qdrant-client's local mode
    store = CatalogStore(backend, settings, "synthetic-clustered", DIM)
    started = time.perf_counter()
    for start in range(0, size, 1000):
        store.upsert(
            [
                ImagePoint("bench", payload(data, n)["key"], data.vectors[n], payload(data, n))
                for n in range(start, min(size, start + 1000))
            ]
        )
    upsert_s = time.perf_counter() - started
    log(f"scale {size} (local mode): upserted in {upsert_s:.1f} s")
    row = {
        "points": size,
        "engine": "qdrant-client local mode (exact, Python)",
        "upsert_s": round(upsert_s, 1),
        "hnsw_build_s": None,
        "reopen_s": None,
        **measure_store(store, data, qs, truth),
        "store_rss_mb": round(rss_mb() - before, 1),
        "disk_mb": None,
    }
    store.close()
    return row


def store_scaling(sizes=(10_000, 100_000), log=print, keep: str | None = None) -> dict:
    from ..model import get_embedder
    from .measure import bare_run_ms

    bare = bare_run_ms(get_embedder(), 30)
    import json

    rows = []
    for size in sizes:
        rows.append(edge_row(size, log, keep))
        log(f"scale row: {json.dumps(rows[-1])}")  # kept even if a later, bigger size is cut short
    if not keep:  # comparing search settings on kept stores: the slow local mode is not rebuilt
        rows.append(local_mode_row(10_000, log))
        log(f"scale row: {json.dumps(rows[-1])}")
    for row in rows:
        row["filtered_one_per_product_vs_bare_run"] = round(
            row["filtered_one_per_product_median_ms"] / bare, 2
        )
    return {"scale": rows, "scale_bare_session_run_ms": bare, "scale_vectors": "synthetic clustered, 1280-d"}


def print_scale(report: dict) -> None:
    from .measure import markdown

    print(
        f"\nembedded store, vector search only ({report['scale_vectors']}; "
        f"bare session.run {report['scale_bare_session_run_ms']} ms)"
    )
    headers = (
        "points",
        "engine",
        "build s (upsert + HNSW)",
        "top-10 ms",
        "filtered ms",
        "one per product ms",
        "filtered, one per product ms",
        "recall@10 (top-10 / filtered / grouped / filtered grouped)",
        "store RSS MB",
        "disk MB",
    )
    rows = []
    for r in report["scale"]:
        build = (
            f"{r['upsert_s']} + {r['hnsw_build_s']}" if r["hnsw_build_s"] is not None else f"{r['upsert_s']}"
        )
        rows.append(
            (
                r["points"],
                r["engine"],
                build,
                r["top10_median_ms"],
                r["filtered_median_ms"],
                r["one_per_product_median_ms"],
                r["filtered_one_per_product_median_ms"],
                " / ".join(str(r[f"{c}_recall@10"]) for c in CASES),
                r["store_rss_mb"],
                r["disk_mb"] if r["disk_mb"] is not None else "-",
            )
        )
    print(markdown(headers, rows))
