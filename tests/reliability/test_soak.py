"""Soak: thousands of small images through the ingest handler under random faults; afterwards the
catalogue matches the bucket exactly.

~2000 distinct small JPEGs are uploaded to moto S3, then replaced, deleted and re-created at
random, interleaved with deliveries. Every S3 change becomes a notification in an emulated SQS
queue (standard queue semantics: batches of up to 10 picked at random from the visible messages,
so events are reordered within and across batches; S3's duplicate notifications; at-least-once
redelivery of messages already processed; failed messages come back after a visibility delay
and go to a dead-letter list after 10 receives). Faults are injected at random while the bucket
changes: S3 GetObject errors (SlowDown 503, InternalError 500), S3 bodies that fail mid-read,
Qdrant answering 503/502/429 through the REST path (the test shim), Qdrant too slow for the
configured 2 s timeout, and writes that Qdrant applied but reported as failed (the client timed
out). A few unreadable (poison) messages are mixed in.

Then the faults stop and the queue drains. What it proves: the dead-letter list holds exactly the
poison messages; the collection holds exactly the bucket's keys, each point with the object's
current ETag and the embedding of the object's current bytes. Nothing lost, nothing stale,
nothing orphaned. The figures go to test-artifacts/soak.json.

A last test plays a race between two concurrent consumers that the serial soak cannot produce.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import boto3
import numpy as np
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from tests.integration.test_ingest import BUCKET, World
from tests.reliability.conftest import report, write_artifact
from tests.reliability.samples import encode, noise_photo
from visual_search.catalog import get_catalog
from visual_search.config import get_settings
from visual_search.dev.lambdas import load_function
from visual_search.errors import StoreUnavailableError

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics")

N_IMAGES = 2000
N_REPLACE, N_DELETE, N_RECREATE = 500, 350, 120
N_POISON = 5
BATCH_SIZE = 10
MAX_RECEIVES = 10
SEED = 20240917
RATES = {  # probability per call
    "s3_slowdown": 0.04,
    "s3_internal_error": 0.02,
    "s3_read_error": 0.01,
    "qdrant_http_error": 0.03,
    "qdrant_applied_but_failed": 0.02,
}
MAX_SLOW = 2  # Qdrant slower than QDRANT_TIMEOUT: each costs ~3 s of wall time
DUPLICATE_NOTIFICATION = 0.08  # S3 sends the same event twice
REDELIVER_AFTER_SUCCESS = 0.03  # SQS delivers a processed message again (at-least-once)
VECTORS_CHECKED = 60


class Faults:
    """The dice and the tally, shared by the S3 and Qdrant wrappers (S3 calls come from the
    ingestor's download threads)."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.on = True
        self.injected: Counter = Counter()
        self.slow_left = MAX_SLOW
        self.slow_calls_s: list[float] = []  # how long a too-slow Qdrant call took to fail

    def roll(self, kind: str) -> bool:
        with self.lock:
            if self.on and self.rng.random() < RATES[kind]:
                self.injected[kind] += 1
                return True
            return False

    def roll_slow(self) -> bool:
        with self.lock:
            if self.on and self.slow_left and self.rng.random() < 0.01:
                self.slow_left -= 1
                self.injected["qdrant_slow"] += 1
                return True
            return False


class BrokenBody:
    def __init__(self, body):
        self.body = body

    def read(self, *args):
        raise ConnectionResetError("Connection reset by peer (injected)")

    def close(self):
        self.body.close()


class FaultyS3:
    """The ingestor's S3 client with injected GetObject failures."""

    def __init__(self, s3, faults: Faults):
        self.s3, self.faults = s3, faults

    def get_object(self, **kwargs):
        for kind, code, status in (
            ("s3_slowdown", "SlowDown", 503),
            ("s3_internal_error", "InternalError", 500),
        ):
            if self.faults.roll(kind):
                raise ClientError(
                    {
                        "Error": {"Code": code, "Message": "injected"},
                        "ResponseMetadata": {"HTTPStatusCode": status},
                    },
                    "GetObject",
                )
        response = self.s3.get_object(**kwargs)
        if self.faults.roll("s3_read_error"):
            response["Body"] = BrokenBody(response["Body"])
        return response

    def __getattr__(self, name):
        return getattr(self.s3, name)


def inject_qdrant_faults(monkeypatch, store, shim, faults: Faults) -> None:
    """Wrap the store's calls so that single calls fail through the real REST path: the shim
    answers an HTTP error, or sleeps past the client's timeout (and then refuses, so the write
    is not applied late); or the write is applied and then reported as failed. The class is
    wrapped (for the test's duration), so the views the catalogue pins to its physical
    collection fail too."""
    cls = type(store)

    def wrap(name: str, write: bool):
        real = getattr(cls, name)

        def call(self, *args, **kwargs):
            if faults.roll_slow():
                shim.delay_seconds, shim.fail_with = self.settings.timeout_s + 0.5, 503
                started = time.perf_counter()
                try:
                    return real(self, *args, **kwargs)
                finally:
                    faults.slow_calls_s.append(time.perf_counter() - started)
                    time.sleep(0.7)  # until the shim wakes up and refuses the request
                    shim.delay_seconds, shim.fail_with = 0.0, None
            if faults.roll("qdrant_http_error"):
                shim.fail_with = faults.rng.choice([503, 502, 429])
                try:
                    return real(self, *args, **kwargs)
                finally:
                    shim.fail_with = None
            result = real(self, *args, **kwargs)
            if write and faults.roll("qdrant_applied_but_failed"):
                raise StoreUnavailableError("Qdrant is unreachable: timed out (injected after the write)")
            return result

        monkeypatch.setattr(cls, name, call)

    for name, write in (("get_images", False), ("upsert", True), ("delete_images", True)):
        wrap(name, write)


@dataclass
class Message:
    id: str
    body: str
    receives: int = 0
    visible_at: int = 0


@dataclass
class Queue:
    """An SQS standard queue with a redrive policy, in logical time (one tick per receive)."""

    rng: random.Random
    messages: list[Message] = field(default_factory=list)
    dead: list[Message] = field(default_factory=list)
    tick: int = 0
    stats: Counter = field(default_factory=Counter)

    def send(self, body: str) -> Message:
        message = Message(uuid.uuid4().hex, body, visible_at=self.tick)
        self.messages.append(message)
        self.stats["sent"] += 1
        return message

    def receive(self) -> list[Message]:
        self.tick += 1
        visible = [m for m in self.messages if m.visible_at <= self.tick]
        batch, ids = [], set()
        for message in self.rng.sample(visible, len(visible)):
            if message.id not in ids:
                batch.append(message)
                ids.add(message.id)
            if len(batch) == BATCH_SIZE:
                break
        for message in batch:
            self.messages.remove(message)
            message.receives += 1
        self.stats["received"] += len(batch)
        return batch

    def settle(self, batch: list[Message], failed: set[str]) -> None:
        for message in batch:
            if message.id not in failed:
                self.stats["deleted"] += 1
                if self.rng.random() < REDELIVER_AFTER_SUCCESS:  # at-least-once: it comes back
                    self.messages.append(
                        Message(
                            message.id, message.body, message.receives, self.tick + self.rng.randint(1, 20)
                        )
                    )
                    self.stats["redelivered after success"] += 1
            elif message.receives >= MAX_RECEIVES:
                self.dead.append(message)
            else:
                message.visible_at = self.tick + self.rng.randint(1, 8)  # visibility timeout
                self.messages.append(message)
                self.stats["redelivered after failure"] += 1

    def visible(self) -> bool:
        return any(m.visible_at <= self.tick for m in self.messages)


class Bucket:
    """The S3 side of the soak: distinct small JPEGs, and the changes made to them."""

    def __init__(self, world: World, rng: random.Random):
        self.world, self.rng = world, rng
        self.live: list[str] = []
        self.gone: list[str] = []
        self.images = 0
        self.ops: Counter = Counter()

    def photo(self) -> bytes:
        self.images += 1
        size = (self.rng.randint(64, 96), self.rng.randint(64, 96))
        return encode(noise_photo(size, seed=self.rng.randrange(2**32)), "JPEG", quality=85)

    def key(self, n: int) -> str:
        name = f"café crème {n:04d}.jpg" if n % 97 == 0 else f"img-{n:04d}.jpg"  # some URL-encoding
        return f"soak/p{n % 250:03d}/{name}"

    def metadata(self, n: int) -> dict:
        return {
            "category": ["Milk", "Juice", "Yoghurt", "Oat", "Soy"][n % 5],
            "brand": f"Brand-{n % 17}",
            "price": f"{1 + (n % 40) / 10:.2f}",
        }

    def create(self, n: int) -> dict:
        key = self.key(n)
        self.live.append(key)
        self.ops["create"] += 1
        return self.world.put(key, self.photo(), self.metadata(n))

    def replace(self) -> dict:
        key = self.rng.choice(self.live)
        self.ops["replace"] += 1
        return self.world.put(
            key, self.photo(), self.metadata(int(key[-8:-4]) if key[-8:-4].isdigit() else 0)
        )

    def delete(self) -> dict:
        key = self.live.pop(self.rng.randrange(len(self.live)))
        self.gone.append(key)
        self.ops["delete"] += 1
        return self.world.delete(key)

    def recreate(self) -> dict:
        key = self.gone.pop(self.rng.randrange(len(self.gone)))
        self.live.append(key)
        self.ops["recreate"] += 1
        return self.world.put(key, self.photo(), {"category": "Recreated"})


def operations(rng: random.Random) -> list[str]:
    """The order of changes: every create, with replacements, deletions and re-creations mixed
    in once there is something to replace, delete or re-create."""
    plan = ["create"] * N_IMAGES + ["replace"] * N_REPLACE + ["delete"] * N_DELETE + ["recreate"] * N_RECREATE
    rng.shuffle(plan)
    ordered, live, gone, waiting = [], 0, 0, []
    for op in plan:
        waiting.append(op)
        progress = True
        while progress:
            progress = False
            for i, pending in enumerate(waiting):
                ok = (
                    pending == "create"
                    or (pending == "replace" and live)
                    or (pending == "delete" and live > 1)
                    or (pending == "recreate" and gone)
                )
                if ok:
                    ordered.append(waiting.pop(i))
                    live += {"create": 1, "recreate": 1, "delete": -1}.get(pending, 0)
                    gone += {"delete": 1, "recreate": -1}.get(pending, 0)
                    progress = True
                    break
    return ordered + waiting


POISON = [
    "{not json",
    "[]",
    '{"Records": "not a list"}',
    '{"Records": [42]}',
    '{"Type": "Notification", "Message": "{broken"}',
]


@pytest.fixture
def soak_world(monkeypatch, embedder, qdrant_shim):
    monkeypatch.setenv("QDRANT_URL", qdrant_shim.url)
    monkeypatch.setenv("COLLECTION", f"soak-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("QDRANT_TIMEOUT", "2")
    monkeypatch.setenv("EMBED_BATCH_SIZE", "16")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        app = load_function("ingest")
        world = World(app, s3)
        try:
            yield world, qdrant_shim
        finally:
            qdrant_shim.fail_with, qdrant_shim.delay_seconds = None, 0.0
            physical = world.store.physical_collection()
            if physical:
                world.store.drop_collection(physical)
            world.store.close()
            get_settings.cache_clear()  # the next user of the cached catalogue loads its own
            get_catalog.cache_clear()


def test_soak_catalogue_matches_bucket(soak_world, monkeypatch):
    world, shim = soak_world
    rng = random.Random(SEED)
    faults = Faults(SEED + 1)
    world.app.ingestor.s3 = FaultyS3(world.s3, faults)
    inject_qdrant_faults(monkeypatch, world.store, shim, faults)
    queue, bucket = Queue(random.Random(SEED + 2)), Bucket(world, random.Random(SEED + 3))
    poison_ids: set[str] = set()
    batches = Counter()
    started = time.perf_counter()

    def deliver_one_batch() -> None:
        batch = queue.receive()
        if not batch:
            return
        event = {
            "Records": [
                {
                    "messageId": m.id,
                    "receiptHandle": m.id,
                    "body": m.body,
                    "attributes": {"ApproximateReceiveCount": str(m.receives)},
                    "messageAttributes": {},
                    "eventSource": "aws:sqs",
                    "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:ingest",
                }
                for m in batch
            ]
        }
        result = world.invoke(event)  # never raises: a crash would fail the soak
        failed = {f["itemIdentifier"] for f in result["batchItemFailures"]}
        assert failed <= {m.id for m in batch}
        batches["total"] += 1
        batches["with failures"] += bool(failed)
        queue.settle(batch, failed)

    plan = operations(rng)
    poison_at = set(rng.sample(range(len(plan)), N_POISON))
    n = 0
    for step, op in enumerate(plan):
        if op == "create":
            record = bucket.create(n)
            n += 1
        else:
            record = getattr(bucket, op)()
        body = json.dumps({"Records": [record]})
        queue.send(body)
        if rng.random() < DUPLICATE_NOTIFICATION:
            queue.send(body)
            queue.stats["duplicate notifications"] += 1
        if step in poison_at:
            poison_ids.add(queue.send(POISON[len(poison_ids)]).id)
        if rng.random() < 0.12:  # deliveries run while the bucket keeps changing
            for _ in range(rng.randint(1, 3)):
                deliver_one_batch()

    faults.on = False  # the faults stop; retries drain
    while queue.messages:
        if queue.visible():
            deliver_one_batch()
        else:
            queue.tick += 1
    duration = time.perf_counter() - started

    # -- the verdict -------------------------------------------------------------------------
    listed = {
        o["Key"]: o["ETag"]
        for page in world.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for o in page.get("Contents", [])
    }
    points = {h.payload["key"]: h.payload for h in world.store.scroll({"bucket": BUCKET})}
    lost = sorted(set(listed) - set(points))
    orphaned = sorted(set(points) - set(listed))
    stale = sorted(k for k in set(listed) & set(points) if points[k].get("etag") != listed[k])
    checked = rng.sample(sorted(listed), min(VECTORS_CHECKED, len(listed)))
    stored = {
        key: np.asarray(vector, np.float32)
        for (_, key), vector in world.store.vectors_of([(BUCKET, k) for k in checked]).items()
    }
    wrong_vectors = []
    for key in checked:
        body = world.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        expected = world.app.ingestor.catalog.embedder.embed(body)
        if key not in stored or float(stored[key] @ expected) < 0.999:
            wrong_vectors.append(key)
    dead_ids = {m.id for m in queue.dead}

    figures = {
        "images_generated": bucket.images,
        "objects_in_bucket": len(listed),
        "points_in_collection": len(points),
        "s3_changes": dict(bucket.ops),
        "notifications_sent": queue.stats["sent"],
        "messages_received": queue.stats["received"],
        "batches": batches["total"],
        "batches_with_item_failures": batches["with failures"],
        "duplicate_notifications": queue.stats["duplicate notifications"],
        "redelivered_after_success": queue.stats["redelivered after success"],
        "redelivered_after_failure": queue.stats["redelivered after failure"],
        "faults_injected": dict(sorted(faults.injected.items())),
        "faults_injected_total": sum(faults.injected.values()),
        "poison_messages": len(poison_ids),
        "dead_letters": len(dead_ids),
        "images_lost": len(lost),
        "points_orphaned": len(orphaned),
        "points_stale": len(stale),
        "vectors_checked": len(checked),
        "vectors_wrong": len(wrong_vectors),
        "slow_qdrant_calls_failed_after_s": [round(t, 2) for t in faults.slow_calls_s],
        "duration_s": round(duration, 1),
        "max_receives": MAX_RECEIVES,
        "seed": SEED,
    }
    write_artifact("soak.json", figures)
    report("\nsoak: " + ", ".join(f"{k}={v}" for k, v in figures.items()))

    assert dead_ids == poison_ids, f"dead letters {len(dead_ids)}, poison {len(poison_ids)}"
    assert not lost, f"{len(lost)} images never indexed, e.g. {lost[:5]}"
    assert not orphaned, f"{len(orphaned)} points without an object, e.g. {orphaned[:5]}"
    assert not stale, f"{len(stale)} points with an old ETag, e.g. {stale[:5]}"
    assert not wrong_vectors, f"{len(wrong_vectors)} points whose vector is not their image's"
    assert set(listed) == set(points) and len(listed) > N_IMAGES // 2
    timeout = world.store.settings.timeout_s  # QDRANT_TIMEOUT=2, not the client's default
    assert all(t < timeout + 0.4 for t in faults.slow_calls_s), "a slow Qdrant was waited out"
    for kind in [*RATES, "qdrant_slow"]:  # every kind of fault was exercised
        assert faults.injected[kind] > 0, f"no {kind} fault was injected"
    assert queue.stats["redelivered after failure"] > 0 and queue.stats["duplicate notifications"] > 0


# -- what a serial soak cannot see: concurrent consumers ------------------------------------------


@pytest.mark.parametrize("b_change", ["replace", "delete"])
def test_concurrent_changes_of_one_key_end_with_the_newest(embedder, monkeypatch, demo_images, b_change):
    """Two invocations handle two changes of one key at once, in a deterministic interleaving:
    A has fetched the old image, B replaces (or deletes) the object and is acknowledged, then
    A's upsert of the old image lands. The catalogue must still end as the bucket is: the new
    image's point (ETag and vector), or no point.

    Regression, fixed in 09fb913 (ingest.py re-reads the object's ETag after writing). Was: the
    sequencer check (get_images, then fetch, embed, upsert) is not atomic, so the older image
    written last stayed in the catalogue while the newer event was already acknowledged: a
    stale or orphaned point until the next change or a reconcile, with IngestMaxConcurrency > 1
    and two changes of one key within about a second. A serial soak cannot see it."""
    monkeypatch.setenv("QDRANT_PATH", ":memory:")
    monkeypatch.delenv("QDRANT_URL", raising=False)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        world = World(load_function("ingest"), s3)
        key = "race/p1/front.jpg"
        old, new = (img.path.read_bytes() for img in (demo_images[0], demo_images[30]))
        first = world.put(key, old)
        store = world.store
        # on the class: the catalogue writes through a store pinned to the physical collection
        real_upsert = type(store).upsert
        state = {"raced": False}

        def upsert_after_b(pinned, points):
            if not state["raced"]:  # invocation A is about to write the old image: B runs first
                state["raced"] = True
                change = world.put(key, new) if b_change == "replace" else world.delete(key)
                state["b"] = world.deliver(change)
            return real_upsert(pinned, points)

        monkeypatch.setattr(type(store), "upsert", upsert_after_b)
        a = world.deliver(first)
        if not state["raced"] or a != state["b"] or a != {"batchItemFailures": []}:
            raise RuntimeError(f"precondition: both invocations acknowledged ({a}, {state})")
        stored = world.payload(key)
        vectors = store.vectors_of([(BUCKET, key)])
        store.close()
        get_settings.cache_clear()
        get_catalog.cache_clear()
        if b_change == "delete":
            assert stored is None, "an orphaned point: its object was deleted"
            return
        assert stored is not None, "the newest image is missing"
        assert stored["etag"] == s3.head_object(Bucket=BUCKET, Key=key)["ETag"], (
            "the point holds the older image"
        )
        vector = np.asarray(vectors[(BUCKET, key)], np.float32)
        assert float(vector @ embedder.embed(new)) > 0.999, "the vector is not the newest image's"
