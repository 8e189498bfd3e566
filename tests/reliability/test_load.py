"""Load: a bounded load test against the local stack's REST API, while ingestion runs.

The stack is ``visual-search dev`` in a subprocess (the e2e suite's ``stack`` fixture), on
127.0.0.1 only: S3 emulator, notification bridge, ingest function, API gateway, embedded Qdrant
with the demo catalogue (60 photos of 10 products). THREADS client threads send a fixed number
of POST /search requests (real demo photos as raw image bodies; a third unfiltered, the rest
filtered by category, brand, price range or a mix) while a background thread keeps uploading
photos to the stack's bucket and deleting them again, so the ingest function works on the same
catalogue and CPUs throughout. It stops by itself.

What it proves: zero errors (every response 200 with results, and every filtered result obeys
its filter), ingestion keeps up during the load (the catalogue reaches the bucket's count), and
the catalogue is back to the demo's 60 images once the uploads are deleted. It reports
throughput and latency percentiles and writes test-artifacts/load.json.
"""

from __future__ import annotations

import json
import queue
import random
import statistics
import threading
import time
import urllib.error
import urllib.request

import boto3

from tests.reliability.conftest import report, write_artifact

THREADS = 4
REQUESTS = 400
BUCKET = "product-images"
UPLOAD_EVERY_S = 0.1
FILTERS = [  # (query string, predicate on a result's metadata)
    ("top_k=5", None),
    ("top_k=10&group_by_product=false", None),
    ("", None),
    ("category=Milk", lambda m: m["category"] == "Milk"),
    ("category=Juice,Yoghurt&top_k=4", lambda m: m["category"] in ("Juice", "Yoghurt")),
    ("brand=Arla,Oatly", lambda m: m["brand"] in ("Arla", "Oatly")),
    ("brand=Valio&group_by_product=false", lambda m: m["brand"] == "Valio"),
    ("price_min=1.5&price_max=2.3", lambda m: 1.5 <= m["price"] <= 2.3),
    ("category=Milk&price_max=1.6", lambda m: m["category"] == "Milk" and m["price"] <= 1.6),
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def post(api: str, body: bytes, query: str) -> tuple[int, dict | str, float]:
    request = urllib.request.Request(
        f"{api}/search?{query}", data=body, method="POST", headers={"Content-Type": "image/jpeg"}
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    elapsed = time.perf_counter() - started
    try:
        return status, json.loads(raw), elapsed
    except ValueError:
        return status, raw.decode("utf-8", "replace")[:300], elapsed


def wait_for_points(stack, expected: int, timeout: float = 90.0) -> float:
    started = time.monotonic()
    while True:
        points = stack.get("/health")["points"]
        if points == expected:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"{points} points, expected {expected}"
        time.sleep(0.2)


class Uploader(threading.Thread):
    """Keeps the bucket changing: uploads a photo, and deletes an earlier upload every other
    time, until told to stop; then reports how many objects of its own are left."""

    def __init__(self, stack, photos: list[bytes]):
        super().__init__(name="load-uploader", daemon=True)
        self.s3 = boto3.client(
            "s3",
            endpoint_url=stack.s3_url,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )
        self.photos, self.stop = photos, threading.Event()
        self.live: list[str] = []
        self.uploads = self.deletes = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = random.Random(5)
        try:
            n = 0
            while not self.stop.wait(UPLOAD_EVERY_S):
                key = f"load/sku-{n % 40}/photo-{n}.jpg"
                self.s3.put_object(
                    Bucket=BUCKET,
                    Key=key,
                    Body=rng.choice(self.photos),
                    ContentType="image/jpeg",
                    Metadata={"category": "LoadTest", "brand": "Load", "price": "9.99"},
                )
                self.live.append(key)
                self.uploads += 1
                if n % 2 and len(self.live) > 1:
                    self.s3.delete_object(Bucket=BUCKET, Key=self.live.pop(rng.randrange(len(self.live) - 1)))
                    self.deletes += 1
                n += 1
        except BaseException as exc:  # reported by the test
            self.error = exc

    def delete_all(self) -> None:
        for key in self.live:
            self.s3.delete_object(Bucket=BUCKET, Key=key)
            self.deletes += 1
        self.live.clear()


def test_concurrent_searches_while_ingesting(stack, demo_images):
    wait_for_points(stack, 60)  # the demo catalogue is fully indexed before the load starts
    photos = [img.path.read_bytes() for img in demo_images]
    metadata = {img.metadata["product-id"]: img.metadata for img in demo_images}
    rng = random.Random(42)
    work: queue.Queue = queue.Queue()
    for n in range(REQUESTS):
        work.put((n, rng.choice(photos), *FILTERS[n % len(FILTERS)]))
    results: list[tuple] = []
    lock = threading.Lock()

    def client() -> None:
        while True:
            try:
                n, photo, query, allowed = work.get_nowait()
            except queue.Empty:
                return
            try:
                status, body, elapsed = post(stack.api, photo, query)
            except Exception as exc:  # connection refused/reset, timeout
                status, body, elapsed = 0, f"{type(exc).__name__}: {exc}", 0.0
            with lock:
                results.append((n, query, allowed, status, body, elapsed))

    uploader = Uploader(stack, photos)
    uploader.start()
    started = time.perf_counter()
    clients = [threading.Thread(target=client, name=f"load-client-{i}") for i in range(THREADS)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(timeout=600)
    wall = time.perf_counter() - started
    uploader.stop.set()
    uploader.join(timeout=30)
    assert uploader.error is None, f"the background uploads failed: {uploader.error!r}"
    catch_up = wait_for_points(stack, 60 + len(uploader.live))  # ingestion kept up
    uploader.delete_all()
    drain = wait_for_points(stack, 60)

    errors, leaks = [], []
    for n, query, allowed, status, body, _ in results:
        if status != 200 or not isinstance(body, dict) or not body.get("results"):
            errors.append((n, query, status, str(body)[:200]))
            continue
        if allowed:
            for hit in body["results"]:
                if not allowed({**metadata.get(hit["product_id"], {}), **hit["metadata"]}):
                    leaks.append((n, query, hit["product_id"]))
    latencies = [r[5] * 1000 for r in results if r[3] == 200]
    figures = {
        "threads": THREADS,
        "requests": len(results),
        "errors": len(errors),
        "filter_leaks": len(leaks),
        "filtered_requests": sum(1 for r in results if r[2] is not None),
        "wall_s": round(wall, 2),
        "throughput_rps": round(len(results) / wall, 1),
        "latency_ms": {
            "p50": round(percentile(latencies, 50), 1),
            "p90": round(percentile(latencies, 90), 1),
            "p99": round(percentile(latencies, 99), 1),
            "max": round(max(latencies), 1),
            "mean": round(statistics.fmean(latencies), 1),
        }
        if latencies
        else {},
        "uploads_during_load": uploader.uploads,
        "deletes": uploader.deletes,
        "ingest_catch_up_after_load_s": round(catch_up, 1),
        "drain_after_deletes_s": round(drain, 1),
        "final_points": 60,
    }
    write_artifact("load.json", figures)
    report("\nload: " + json.dumps(figures))
    assert len(results) == REQUESTS
    assert not errors, f"{len(errors)} failed requests, e.g. {errors[:3]}"
    assert not leaks, f"{len(leaks)} results outside their filter, e.g. {leaks[:3]}"
    assert uploader.uploads >= 10, "too few uploads ran during the load to call it concurrent"
    assert "Traceback" not in stack.output(), stack.output()[-3000:]
