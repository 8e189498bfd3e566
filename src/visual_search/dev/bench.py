"""``visual-search bench``: where the milliseconds of an embedding go.

Every timing is also given as a ratio of a bare onnxruntime ``session.run`` on an already
prepared tensor, measured in the same run, so numbers from different machines compare.
"""

from __future__ import annotations

import io
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..config import PACKAGE_DIR, available_cpus, get_settings
from ..model import get_embedder as load_embedder
from .folders import DEMO_CATALOG, scan
from .measure import bare_run_ms, markdown, prepared_batch, sample_image, samples_ms, scaled_photo, timed

SIZES = {"224px PNG": (224, "PNG"), "1000px JPEG": (1000, "JPEG"), "4000px JPEG": (4000, "JPEG")}


def naive_preprocess(data: bytes, prep) -> np.ndarray:
    """Full decode then resize, without draft()/reduce(): the baseline our decoder beats."""
    from ..images import to_pixels

    image = Image.open(io.BytesIO(data))
    image.load()
    return to_pixels(image.convert("RGB"), replace(prep, interpolation="bicubic"), fast=False)


def embed_breakdown(repeat: int) -> dict:
    embedder = load_embedder()
    card = embedder.card
    tensor = prepared_batch(embedder, 1)
    bare = bare_run_ms(embedder, repeat)
    rows = []
    for name, (side, fmt) in SIZES.items():
        data = sample_image(side, fmt)
        decode = timed(partial(embedder.preprocess, data), repeat)["median_ms"]
        naive = timed(partial(naive_preprocess, data, card.preprocess), repeat)["median_ms"]
        infer = timed(lambda: embedder.embed_pixels(tensor), repeat)["median_ms"]
        total = timed(partial(embedder.embed, data), repeat)["median_ms"]
        rows.append(
            {
                "image": name,
                "bytes": len(data),
                "decode_preprocess_ms": decode,
                "naive_decode_preprocess_ms": naive,
                "inference_ms": infer,
                "total_ms": total,
                "decode_vs_inference": round(decode / infer, 2),
                "total_vs_bare_run": round(total / bare, 2),
            }
        )
    return {
        "model": card.id,
        "bare_session_run_ms": bare,
        "threads": embedder.session.get_session_options().intra_op_num_threads,
        "embed": rows,
    }


def float_source(embedder) -> Path | None:
    """The folder of the float model an int8 model was quantised from (a sibling folder whose
    card has the recorded id and sha256); for a quantised blend whose float blend is not shipped,
    the blend's base (the same graph with other weights, so the same speed); or None."""
    raw = json.loads((embedder.model_dir / "model.json").read_text())
    wanted = [(raw.get("quantization") or {}).get("from") or {}, (raw.get("blend") or {}).get("base") or {}]
    siblings = {}
    for folder in sorted(embedder.model_dir.parent.iterdir()):
        card = folder / "model.json"
        if folder != embedder.model_dir and card.is_file():
            other = json.loads(card.read_text())
            siblings[(other.get("id"), other.get("sha256"))] = folder
    for source in wanted:
        found = siblings.get((source.get("id"), source.get("sha256")))
        if found is not None:
            return found
    return None


def precision_compare(repeat: int) -> dict:
    """The int8 model against its float source in one process: session creation, session.run
    at batch 1 and 8, a query (decode + run) and ingest per image (decode + run, batches of 8);
    every time also as a ratio of the float model's bare session.run at batch 1."""
    from ..model import Embedder

    default = load_embedder()
    source = float_source(default)
    if source is None:
        return {"int8": {"skipped": f"{default.model_id} is not a quantised model with its source beside it"}}
    settings = get_settings()
    photos = sample_photos(8)
    rows: dict[str, dict[str, Any]] = {}
    for name, folder in (("fp32", source), ("int8", default.model_dir)):
        started = time.perf_counter()
        model = Embedder(
            folder, threads=settings.ort_threads, max_batch=settings.max_batch, limits=settings.images
        )
        created = (time.perf_counter() - started) * 1000
        rows[name] = {
            "model": model.model_id,
            "load_ms": round(created, 1),
            "run_b1_ms": bare_run_ms(model, repeat, 1),
            "run_b8_ms": bare_run_ms(model, max(3, repeat // 4), 8),
            "query_ms": timed(partial(model.embed, photos[0]), repeat)["median_ms"],
            "ingest_per_image_ms": round(
                timed(partial(model.embed_many, photos), max(3, repeat // 4))["median_ms"] / len(photos), 2
            ),
        }
    floor = float(rows["fp32"]["run_b1_ms"])
    for row in rows.values():
        row["query_vs_fp32_run"] = round(float(row["query_ms"]) / floor, 2)
    timings = ("run_b1_ms", "run_b8_ms", "query_ms", "ingest_per_image_ms")
    speedup = {k: round(float(rows["fp32"][k]) / float(rows["int8"][k]), 2) for k in timings}
    return {"int8": {"rows": rows, "fp32_over_int8": speedup}}


def print_int8(report: dict) -> None:
    c = report["int8"]
    if "skipped" in c:
        print(f"\nint8: {c['skipped']}")
        return
    keys = ("load_ms", "run_b1_ms", "run_b8_ms", "query_ms", "ingest_per_image_ms", "query_vs_fp32_run")
    print()
    print(
        markdown(
            ("precision", "model", *keys),
            [(name, r["model"], *(r[k] for k in keys)) for name, r in c["rows"].items()],
        )
    )
    print(f"fp32 / int8: {', '.join(f'{k} {v}x' for k, v in c['fp32_over_int8'].items())}")


def sample_photos(count: int, side: int = 1000) -> list[bytes]:
    """``count`` different demo photos as ~``side`` px JPEGs (quality 90)."""
    images = scan(DEMO_CATALOG)
    return [scaled_photo(images[n % len(images)].path, side, "JPEG") for n in range(count)]


def bare_throughput(embedder, batch: int, repeat: int) -> float:
    """Images per second of session.run alone on a prepared batch."""
    return batch / (bare_run_ms(embedder, repeat, batch) / 1000.0)


S3_LATENCY_MS = {"GET": 20.0, "HEAD": 10.0}  # a same-region S3's typical time to first byte


def with_s3_latency(s3, latency_ms: dict[str, float]) -> None:
    """Let each S3 request of this client wait like a network round trip before moto answers
    it: the wait costs no CPU, as in AWS, while moto's own CPU is still paid in process."""

    def wait(request, **_):
        time.sleep(latency_ms.get(request.method, 0.0) / 1000.0)

    s3.meta.events.register_first("before-send.s3", wait)


def cpu_ms(fn: Callable[[], object], repeat: int) -> float:
    """Median process CPU time (all threads) of ``fn``, in core-milliseconds."""
    return round(statistics.median(samples_ms(fn, repeat, time.process_time)), 1)


def ingest_throughput(repeat: int) -> dict:
    """One ingest invocation (S3 GETs from moto, decode, chunked embed, upsert, after-write
    checks) per batch size, next to the bare model; and where the CPU of a batch of 32 goes."""
    import os

    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    from moto import mock_aws

    from ..aws import s3_client
    from ..catalog import Catalog
    from ..config import StoreSettings
    from ..ingest.events import S3Change
    from ..ingest.pipeline import Ingestor
    from ..store import CatalogStore

    embedder = load_embedder()
    photos = sample_photos(32)
    runs = max(5, repeat // 3)
    rows = []
    with mock_aws():
        s3, slow_s3 = s3_client(), s3_client()
        with_s3_latency(slow_s3, S3_LATENCY_MS)
        s3.create_bucket(Bucket="bench")
        for n, photo in enumerate(photos):
            s3.put_object(Bucket="bench", Key=f"p{n}/img.jpg", Body=photo, ContentType="image/jpeg")
        store = CatalogStore.open(
            StoreSettings(path=":memory:", collection="bench"), embedder.model_id, embedder.dim
        )
        catalog = Catalog(embedder, store)
        settings = get_settings().ingest
        one_chunk = replace(settings, embed_chunk=32)  # no pipeline: all downloads, then embed
        for batch, client, ingest in (
            (1, s3, settings),
            (10, s3, settings),
            (32, s3, settings),
            (32, slow_s3, settings),
            (32, slow_s3, one_chunk),
        ):
            ingestor = Ingestor(catalog, client, ingest, embedder.limits)
            changes = [
                S3Change("bench", f"p{n}/img.jpg", "created", "ObjectCreated:Put") for n in range(batch)
            ]
            median = timed(partial(ingestor.apply, changes), runs)["median_ms"]  # bound now, not late
            bare = bare_throughput(embedder, batch, runs)
            got = batch / (median / 1000.0)
            rows.append(
                {
                    "batch": batch,
                    "s3": "moto + latency" if client is slow_s3 else "moto",
                    "embed_chunk": ingest.embed_chunk,
                    "images_per_s": round(got, 1),
                    "bare_model_images_per_s": round(bare, 1),
                    "ratio_to_bare": round(got / bare, 2),
                }
            )
        ingestor = Ingestor.configured(catalog, s3)
        refs = [("bench", f"p{n}/img.jpg") for n in range(32)]
        changes = [S3Change(*ref, "created", "ObjectCreated:Put") for ref in refs]
        tensor = prepared_batch(embedder, 32)
        cpu = {
            "model": cpu_ms(lambda: embedder.embed_pixels(tensor), runs),
            "decode": cpu_ms(lambda: list(ingestor.pool.map(embedder.preprocess, photos)), runs),
            "s3_get": cpu_ms(lambda: list(ingestor.pool.map(lambda r: ingestor.fetch(*r), refs)), runs),
            "s3_head": cpu_ms(lambda: list(ingestor.pool.map(ingestor.current_etag, refs)), runs),
            "whole_apply": cpu_ms(lambda: ingestor.apply(changes), runs),
        }
        cpu["ceiling_ratio"] = round(cpu["model"] / cpu["whole_apply"], 2)
    return {"ingest": rows, "ingest_cpu_core_ms_32": cpu, "s3_latency_ms": S3_LATENCY_MS}


def synthetic_catalog(embedder, count: int, seed: int = 7):
    """``count`` points near the real demo embeddings (small noise), with product metadata:
    a stand-in for a catalogue of that size without embedding that many photos."""
    from ..catalog import ImageSource, build_payload
    from ..domain import ImagePoint

    rng = np.random.default_rng(seed)
    images = scan(DEMO_CATALOG)
    base = np.stack(embedder.embed_many([img.path.read_bytes() for img in images]))
    categories = sorted({img.metadata.get("category", "") for img in images})
    points = []
    for n in range(count):
        vector = base[n % len(base)] + np.asarray(rng.normal(0, 0.02, base.shape[1]), np.float32)
        vector /= np.linalg.norm(vector)
        metadata = {
            "product-id": f"sku-{n // 4}",
            "category": categories[(n // 4) % len(categories)],
            "brand": f"brand-{(n // 4) % 25}",
            "price": f"{1 + (n // 4) % 50:.2f}",
        }
        source = ImageSource("bench", f"sku-{n // 4}/{n}.jpg", b"", metadata)
        points.append(ImagePoint("bench", source.key, vector, build_payload(source, embedder.model_id)))
    return points


def search_latency(repeat: int, sizes=(1000, 10000)) -> dict:
    """Warm search-function latency through the API handler (REST proxy event, JSON base64)."""
    import base64
    import os

    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    from ..api import SearchApi
    from ..aws import s3_client
    from ..catalog import Catalog
    from ..config import StoreSettings, load_settings
    from ..observability import metrics
    from ..store import CatalogStore

    embedder = load_embedder()
    bare = bare_run_ms(embedder, repeat)
    query = base64.b64encode(sample_photos(1)[0]).decode()
    settings = load_settings()
    rows = []
    for size in sizes:
        store = CatalogStore.open(
            StoreSettings(path=":memory:", collection=f"bench{size}"), embedder.model_id, embedder.dim
        )
        points = synthetic_catalog(embedder, size)
        for start in range(0, len(points), 1000):
            store.upsert(points[start : start + 1000])
        api = SearchApi(Catalog(embedder, store), s3_client(), settings)
        for label, filters in (
            ("none", {}),
            ("category+price", {"category": "Milk", "price": {"gte": 5, "lte": 30}}),
        ):
            event = {
                "httpMethod": "POST",
                "path": "/search",
                "resource": "/search",
                "headers": {"Content-Type": "application/json"},
                "body": json.dumps({"image": query, "top_k": 10, "filters": filters}),
                "isBase64Encoded": False,
                "requestContext": {"stage": "bench"},
            }
            totals: list[float] = []
            parts: dict[str, list[float]] = {"decode": [], "embed": [], "search": []}
            api.resolve(event, None)
            for _ in range(repeat):
                started = time.perf_counter()
                response = api.resolve(event, None)
                body = json.loads(response["body"])
                if response["statusCode"] != 200:
                    raise RuntimeError(f"search failed: {body}")
                totals.append((time.perf_counter() - started) * 1000)
                metrics.clear_metrics()  # a Lambda invocation flushes them; here, drop them
                for part in parts:
                    parts[part].append(body["timings_ms"][part])
            totals.sort()
            median = statistics.median(totals)
            rows.append(
                {
                    "points": size,
                    "filter": label,
                    "median_ms": round(median, 2),
                    "p99_ms": round(totals[min(len(totals) - 1, int(0.99 * len(totals)))], 2),
                    **{f"{k}_ms": round(statistics.median(v), 2) for k, v in parts.items()},
                    "median_vs_bare_run": round(median / bare, 2),
                }
            )
        store.close()
    return {"search": rows, "search_bare_session_run_ms": bare}


# Each child process measures one phase from its first line to its last, in wall-clock time and
# in CPU time (all its threads; steadier than the wall clock on a machine other work shares);
# peak RSS from VmHWM (this process's own peak: ru_maxrss would count the forked parent).
_COLD_PRELUDE = r"""
import json, os, sys, time, base64
t0 = time.perf_counter()
c0 = time.process_time()
def cpu_ms():
    return round((time.process_time() - c0) * 1000, 1)
def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
os.environ.setdefault("QDRANT_PATH", ":memory:")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
os.environ["POWERTOOLS_TRACE_DISABLED"] = "true"
"""

# The floor: only what any search function must pay, importing the libraries a search runs
# through and creating the ONNX session the same way (threads, options) as the service. The
# X-Ray SDK is one of them: the deployed function traces (Tracing: Active), and importing it
# makes its recorder.
_FLOOR = (
    _COLD_PRELUDE
    + r"""
import numpy, onnxruntime, PIL.Image, boto3, aws_lambda_powertools, pydantic, aws_xray_sdk.core
from qdrant_client import QdrantClient, models
t1 = time.perf_counter()
from pathlib import Path
model_dir = Path(sys.argv[2])
options = onnxruntime.SessionOptions()
options.intra_op_num_threads = len(os.sched_getaffinity(0))
options.inter_op_num_threads = 1
options.add_session_config_entry("session.intra_op.allow_spinning", "0")
session = onnxruntime.InferenceSession(str(model_dir / "model.onnx"), options,
                                       providers=["CPUExecutionProvider"])
t2 = time.perf_counter()
print(json.dumps({"imports_ms": round((t1 - t0) * 1000, 1), "session_ms": round((t2 - t1) * 1000, 1),
                  "total_ms": round((t2 - t0) * 1000, 1), "cpu_ms": cpu_ms(), "peak_rss_mb": peak_mb()}))
"""
)

# The cold start: import the search function as Lambda's init does, answer one search.
_COLD = (
    _COLD_PRELUDE
    + r"""
from visual_search.dev.lambdas import load_function
app = load_function("search")
t1 = time.perf_counter()
body = json.dumps({"image": base64.b64encode(open(sys.argv[1], "rb").read()).decode()})
event = {"httpMethod": "POST", "path": "/search", "resource": "/search", "body": body,
         "headers": {"Content-Type": "application/json"}, "isBase64Encoded": False,
         "requestContext": {"stage": "bench"}}
response = app.api.resolve(event, None)
t2 = time.perf_counter()
assert response["statusCode"] == 200, response
results = json.loads(response["body"])["results"]
assert results and results[0]["image"]["url"], "the first search should find products and sign URLs"
print(json.dumps({"init_ms": round((t1 - t0) * 1000, 1), "first_answer_ms": round((t2 - t1) * 1000, 1),
                  "total_ms": round((t2 - t0) * 1000, 1), "cpu_ms": cpu_ms(), "peak_rss_mb": peak_mb()}))
"""
)


def _child(code: str, *argv: str, env: dict | None = None) -> dict:
    import os
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _demo_store(folder: str) -> None:
    """The demo catalogue indexed into an embedded Qdrant folder, so the measured first search
    finds products and signs their image URLs, as a deployed one does."""
    from ..catalog import Catalog
    from .folders import ingest_folder

    settings = get_settings()
    settings = replace(settings, store=replace(settings.store, url=None, path=folder))
    catalog = Catalog.open(settings)
    try:
        ingest_folder(catalog, DEMO_CATALOG, "demo-catalog", quiet=True)
    finally:
        catalog.close()


def _compile_package() -> None:
    """The package's bytecode, as the code layer ships it (tools/app_layer.py): where none is
    written (PYTHONDONTWRITEBYTECODE, or a read-only tree) each run would otherwise compile
    every module from source again, which no deployed cold start does. The libraries of both
    sides have theirs from their install."""
    import compileall

    compileall.compile_dir(str(PACKAGE_DIR), quiet=2)


def cold_start(runs: int = 5) -> dict:
    """The search function's cold start (a fresh process imports it and answers one search on
    the indexed demo catalogue) against the floor (a fresh process imports the libraries and
    creates the ONNX session), alternating the two ``runs`` times; medians, and their ratio."""
    import tempfile

    photo = str(scan(DEMO_CATALOG)[0].path)
    model_dir = str(get_settings().model_dir)
    floors, colds = [], []
    _compile_package()
    with tempfile.TemporaryDirectory(prefix="vs-cold-") as folder:
        _demo_store(folder)
        env = {
            "QDRANT_PATH": folder,
            "QDRANT_URL": "",
            "BUCKET": "demo-catalog",
            "AWS_ACCESS_KEY_ID": "bench",  # presigning needs credentials, not a network
            "AWS_SECRET_ACCESS_KEY": "bench",
            # What Lambda's runtime sets: the function's init then ends as it does in Lambda
            # (snapstart.finish_init).
            "AWS_LAMBDA_FUNCTION_NAME": "visual-search-bench",
        }
        for _ in range(runs):
            floors.append(_child(_FLOOR, photo, model_dir, env=env))
            colds.append(_child(_COLD, photo, env=env))

    def median(rows: list[dict]) -> dict:
        return {k: round(statistics.median(r[k] for r in rows), 1) for k in rows[0]}

    floor, cold = median(floors), median(colds)
    return {
        "cold_start": {
            **cold,
            "floor": floor,
            "vs_floor": round(cold["total_ms"] / floor["total_ms"], 2),
            "cpu_vs_floor": round(cold["cpu_ms"] / floor["cpu_ms"], 2),
            # each cold start against the floor measured just before it: the spread of one run
            "cpu_vs_floor_pairs": [round(c["cpu_ms"] / f["cpu_ms"], 2) for f, c in zip(floors, colds)],
        },
        "cold_start_runs": runs,
    }


def machine() -> dict:
    import onnxruntime

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": available_cpus(),
        "onnxruntime": onnxruntime.__version__,
    }


def print_table(report: dict) -> None:
    print(
        f"model {report['model']}, bare session.run {report['bare_session_run_ms']} ms "
        f"({report['threads']} threads)"
    )
    print(
        markdown(
            (
                "image",
                "bytes",
                "decode+prep ms",
                "naive decode+prep ms",
                "inference ms",
                "total ms",
                "decode/infer",
                "total/bare run",
            ),
            [
                (
                    r["image"],
                    r["bytes"],
                    r["decode_preprocess_ms"],
                    r["naive_decode_preprocess_ms"],
                    r["inference_ms"],
                    r["total_ms"],
                    r["decode_vs_inference"],
                    r["total_vs_bare_run"],
                )
                for r in report["embed"]
            ],
        )
    )


def print_ingest(report: dict) -> None:
    print()
    print(
        markdown(
            ("batch", "S3", "embed chunk", "ingest images/s", "bare model images/s", "ratio"),
            [
                (
                    r["batch"],
                    r["s3"],
                    r["embed_chunk"],
                    r["images_per_s"],
                    r["bare_model_images_per_s"],
                    r["ratio_to_bare"],
                )
                for r in report["ingest"]
            ],
        )
    )
    cpu = report["ingest_cpu_core_ms_32"]
    print(
        f"\nCPU (core-ms) for 32 images: model {cpu['model']}, decode {cpu['decode']}, "
        f"S3 GET {cpu['s3_get']}, S3 HEAD {cpu['s3_head']}; a whole apply {cpu['whole_apply']} "
        f"-> ratio ceiling with every core busy {cpu['ceiling_ratio']}"
    )


def print_search(report: dict) -> None:
    print(f"\nbare session.run {report['search_bare_session_run_ms']} ms")
    print(
        markdown(
            ("points", "filter", "median ms", "p99 ms", "decode", "embed", "search", "median/bare run"),
            [
                (
                    r["points"],
                    r["filter"],
                    r["median_ms"],
                    r["p99_ms"],
                    r["decode_ms"],
                    r["embed_ms"],
                    r["search_ms"],
                    r["median_vs_bare_run"],
                )
                for r in report["search"]
            ],
        )
    )


def print_cold(report: dict) -> None:
    c = report["cold_start"]
    f = c["floor"]
    print(
        f"\ncold start (median of {report['cold_start_runs']} fresh processes): search function init "
        f"{c['init_ms']} ms + first answer {c['first_answer_ms']} ms = {c['total_ms']} ms, "
        f"peak RSS {c['peak_rss_mb']} MB\nfloor (library imports {f['imports_ms']} ms + ONNX session "
        f"{f['session_ms']} ms) {f['total_ms']} ms -> cold start / floor {c['vs_floor']} "
        f"(CPU time {c['cpu_ms']} / {f['cpu_ms']} ms: {c['cpu_vs_floor']}; "
        f"each pair: {', '.join(str(r) for r in c['cpu_vs_floor_pairs'])})"
    )


def _scale():
    from . import bench_scale

    return bench_scale


def _stderr(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)


# section: (measure it, print its table)
SECTIONS = {
    "embed": (lambda args: embed_breakdown(args.repeat), print_table),
    "ingest": (lambda args: ingest_throughput(args.repeat), print_ingest),
    "search": (lambda args: search_latency(args.repeat), print_search),
    "scale": (
        lambda args: _scale().store_scaling(
            getattr(args, "scale_sizes", (10_000, 100_000)),
            log=_stderr,
            keep=getattr(args, "scale_keep", None),
        ),
        lambda report: _scale().print_scale(report),
    ),
    "cold": (lambda args: cold_start(getattr(args, "cold_runs", 5)), print_cold),
    "int8": (lambda args: precision_compare(args.repeat), print_int8),
}


def run_bench(args) -> int:
    import os

    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    get_settings()
    wanted = {name.strip() for name in args.only.split(",") if name.strip()} if args.only else set(SECTIONS)
    unknown = sorted(wanted - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown bench section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    report: dict = {"machine": machine()}
    for name, (measure, show) in SECTIONS.items():
        if name in wanted:
            report.update(measure(args))
            if not args.json:
                show(report)
    print(json.dumps(report))
    return 0
