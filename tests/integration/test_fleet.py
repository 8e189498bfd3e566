"""Backfill and re-index through the ingest queue: moto S3 and SQS, the real ingest function
(the real model, embedded Qdrant), the queue drained as Lambda's event source does it (batches
of 10 messages, failed messages left for a retry)."""

from __future__ import annotations

import io
import threading
import time

import boto3
import numpy as np
import pytest
from moto import mock_aws
from PIL import Image

from visual_search.catalog import get_catalog
from visual_search.dev.lambdas import LambdaContext, load_function
from visual_search.ingest.events import parse_sqs_body
from visual_search.ingest.pipeline import Ingestor
from visual_search.ingest.router import TARGET_ATTRIBUTE
from visual_search.ops.fleet import Sender, enqueue, reindex_via_queue
from visual_search.ops.queues import waiting

BUCKET = "product-images"


def tiny_jpeg(n: int) -> bytes:
    """A small distinct photo-like image per n (noise around a colour), fast to decode."""
    rng = np.random.default_rng(n)
    base = rng.integers(0, 255, 3)
    pixels = np.clip(base + rng.normal(0, 30, (48, 48, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


class Fleet:
    """moto S3 + SQS, the ingest function, and the event source mapping's part: receive,
    invoke, delete what succeeded."""

    def __init__(self, app, s3, sqs, url):
        self.app, self.s3, self.sqs, self.url = app, s3, sqs, url
        self.catalog = get_catalog()  # the one the function just loaded
        self.invocations = 0

    def put(self, key: str, n: int) -> None:
        self.s3.put_object(Bucket=BUCKET, Key=key, Body=tiny_jpeg(n), ContentType="image/jpeg")

    def ingestor(self) -> Ingestor:
        return Ingestor.configured(self.catalog, self.s3)

    def drain_once(self) -> int:
        """One invocation with up to 10 messages; returns how many were received."""
        got = self.sqs.receive_message(
            QueueUrl=self.url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], VisibilityTimeout=30
        ).get("Messages", [])
        if not got:
            return 0
        event = {
            "Records": [
                {
                    "messageId": m["MessageId"],
                    "receiptHandle": m["ReceiptHandle"],
                    "body": m["Body"],
                    "attributes": {"ApproximateReceiveCount": "1"},
                    "messageAttributes": {
                        name: {"stringValue": a["StringValue"], "dataType": a["DataType"]}
                        for name, a in m.get("MessageAttributes", {}).items()
                    },
                    "eventSource": "aws:sqs",
                    "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:ingest",
                }
                for m in got
            ]
        }
        failed = {f["itemIdentifier"] for f in self.app.handler(event, LambdaContext())["batchItemFailures"]}
        self.invocations += 1
        for m in got:
            if m["MessageId"] not in failed:
                self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=m["ReceiptHandle"])
        assert not failed, f"{len(failed)} messages failed"
        return len(got)

    def drain(self) -> None:
        for _ in range(1000):
            if not self.drain_once():
                return
        raise AssertionError("the queue did not drain")


@pytest.fixture
def fleet(monkeypatch, embedder):
    monkeypatch.setenv("QDRANT_PATH", ":memory:")
    monkeypatch.delenv("QDRANT_URL", raising=False)
    monkeypatch.setenv("COLLECTION", "fleet")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="ingest")["QueueUrl"]
        app = load_function("ingest")
        try:
            yield Fleet(app, s3, sqs, url)
        finally:
            app.ingestor.catalog.store.close()


def indexed_keys(catalog) -> dict[str, str]:
    return {h.payload["key"]: h.payload["etag"].strip('"') for h in catalog.store.scroll({"bucket": BUCKET})}


def test_300_objects_through_the_queue_are_each_indexed_once(fleet):
    for n in range(300):
        fleet.put(f"catalog/p{n % 30}/{n}.jpg", n)
    fleet.s3.put_object(Bucket=BUCKET, Key="catalog/README.txt", Body=b"not a photo")
    report = enqueue(fleet.ingestor(), fleet.sqs, "ingest", BUCKET, "catalog/")  # by name
    assert (report.listed, report.queued, report.skipped, report.messages) == (301, 300, 1, 30)
    assert waiting(fleet.sqs, fleet.url) == 30

    indexed: list[str] = []
    index = fleet.app.ingestor.catalog.index  # a counting wrapper around the real indexing

    def counting(sources):
        indexed.extend(s.key for s in sources)
        return index(sources)

    fleet.app.ingestor.catalog.index = counting
    fleet.drain()
    assert fleet.invocations == 3  # 10 messages of 10 records per invocation
    assert len(indexed) == 300 and len(set(indexed)) == 300
    etags = {o["Key"]: o["ETag"].strip('"') for o in fleet.s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert indexed_keys(fleet.catalog) == {k: v for k, v in etags.items() if k.endswith(".jpg")}
    assert waiting(fleet.sqs, fleet.url) == 0


def test_messages_are_shaped_like_bucket_notifications(fleet):
    fleet.put("catalog/shoes/red sneaker ü.jpg", 1)
    enqueue(fleet.ingestor(), fleet.sqs, fleet.url, BUCKET, "catalog/", records_per_message=3)
    message = fleet.sqs.receive_message(QueueUrl=fleet.url, MessageAttributeNames=["All"])["Messages"][0]
    assert "red+sneaker+%C3%BC.jpg" in message["Body"]  # URL-encoded as S3 sends keys
    (change,) = parse_sqs_body(message["Body"])
    assert change.key == "catalog/shoes/red sneaker ü.jpg" and change.kind == "created"
    assert change.etag and change.size
    assert "MessageAttributes" not in message  # a backfill names no collection


def test_a_second_run_sends_only_new_and_changed_objects(fleet):
    for n in range(40):
        fleet.put(f"catalog/p/{n}.jpg", n)
    enqueue(fleet.ingestor(), fleet.sqs, fleet.url, BUCKET)
    fleet.drain()
    for n in range(5):
        fleet.put(f"catalog/p/{n}.jpg", 1000 + n)  # replaced: a new ETag
    for n in range(40, 50):
        fleet.put(f"catalog/p/{n}.jpg", n)
    dry = enqueue(fleet.ingestor(), fleet.sqs, fleet.url, BUCKET, dry_run=True)
    assert (dry.queued, dry.unchanged, waiting(fleet.sqs, fleet.url)) == (15, 35, 0)
    again = enqueue(fleet.ingestor(), fleet.sqs, fleet.url, BUCKET)
    assert (again.queued, again.unchanged, again.messages) == (15, 35, 2)
    fleet.drain()
    etags = {o["Key"]: o["ETag"].strip('"') for o in fleet.s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert indexed_keys(fleet.catalog) == etags
    forced = enqueue(fleet.ingestor(), fleet.sqs, fleet.url, BUCKET, force=True, dry_run=True)
    assert (forced.queued, forced.unchanged) == (50, 0)


def test_the_rate_caps_messages_per_second():
    class FakeSqs:
        def send_message_batch(self, QueueUrl, Entries):
            return {"Successful": [{"Id": e["Id"]} for e in Entries]}

    now = [0.0]
    sender = Sender(
        FakeSqs(), "url", rate=5, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s)
    )
    for _ in range(6):
        sender.send(["{}"] * 10)
    assert sender.sent == 60 and now[0] == pytest.approx(60 / 5)


def test_refused_entries_are_sent_again_and_never_dropped():
    class FlakySqs:
        calls = 0

        def send_message_batch(self, QueueUrl, Entries):
            self.calls += 1
            if self.calls == 1:  # the first entry refused once
                return {
                    "Successful": [{"Id": e["Id"]} for e in Entries[1:]],
                    "Failed": [{"Id": Entries[0]["Id"]}],
                }
            return {"Successful": [{"Id": e["Id"]} for e in Entries]}

    sqs = FlakySqs()
    Sender(sqs, "url", sleep=lambda s: None).send(["a", "b"])
    assert sqs.calls == 2

    class RefusingSqs:
        def send_message_batch(self, QueueUrl, Entries):
            return {"Failed": [{"Id": e["Id"], "Code": "Throttled", "Message": "slow down"} for e in Entries]}

    with pytest.raises(RuntimeError, match="refused 1 messages"):
        Sender(RefusingSqs(), "url", sleep=lambda s: None).send(["a"])


def test_reindex_via_the_queue_switches_only_after_the_drain(fleet):
    for n in range(30):
        fleet.put(f"catalog/p/{n}.jpg", n)
    enqueue(fleet.ingestor(), fleet.sqs, fleet.url, BUCKET)
    fleet.drain()
    old = fleet.catalog.physical_collection()
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = reindex_via_queue(
                fleet.catalog,
                fleet.s3,
                fleet.sqs,
                fleet.url,
                records_per_message=1,  # 30 messages: one invocation takes 10
                poll_s=0.05,
                settle=3,
                timeout_s=120,
                log=lambda m: None,
            )
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    for _ in range(400):  # the command has queued its messages
        if waiting(fleet.sqs, fleet.url) >= 30:
            break
        time.sleep(0.05)
    new = fleet.catalog.reindex_target()
    assert new and new != old
    message = fleet.sqs.receive_message(
        QueueUrl=fleet.url, MessageAttributeNames=["All"], VisibilityTimeout=0
    )
    assert message["Messages"][0]["MessageAttributes"][TARGET_ATTRIBUTE]["StringValue"] == new
    # A live change while the re-index runs: its notification (no target) reaches both.
    fleet.put("catalog/p/new.jpg", 999)
    fleet.sqs.send_message(
        QueueUrl=fleet.url,
        MessageBody='{"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", '
        '"s3": {"bucket": {"name": "product-images"}, "object": {"key": "catalog/p/new.jpg"}}}]}',
    )
    fleet.drain_once()
    time.sleep(0.5)
    assert fleet.catalog.physical_collection() == old and thread.is_alive()  # not before the drain
    fleet.drain()
    thread.join(60)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"]["collection"] == new
    assert fleet.catalog.physical_collection() == new and fleet.catalog.reindex_target() is None
    assert set(indexed_keys(fleet.catalog)) == {f"catalog/p/{n}.jpg" for n in range(30)} | {
        "catalog/p/new.jpg"
    }
    assert not fleet.catalog.for_collection(old).exists()  # dropped (no --keep-old)


def test_a_reindex_whose_counts_never_match_does_not_switch_and_cleans_up(fleet):
    for n in range(12):
        fleet.put(f"catalog/p/{n}.jpg", n)
    enqueue(fleet.ingestor(), fleet.sqs, fleet.url, BUCKET)
    fleet.drain()
    old = fleet.catalog.physical_collection()
    # Nobody drains the queue for the new collection's messages except this thread, which
    # drops them: the queue empties, the new collection stays empty.
    stop = threading.Event()

    def lose_messages():
        while not stop.is_set():
            for m in fleet.sqs.receive_message(QueueUrl=fleet.url, MaxNumberOfMessages=10).get(
                "Messages", []
            ):
                fleet.sqs.delete_message(QueueUrl=fleet.url, ReceiptHandle=m["ReceiptHandle"])
            time.sleep(0.02)

    thief = threading.Thread(target=lose_messages)
    thief.start()
    try:
        with pytest.raises(RuntimeError, match="alias was not switched"):
            reindex_via_queue(
                fleet.catalog, fleet.s3, fleet.sqs, fleet.url, poll_s=0.05, settle=2, log=lambda m: None
            )
    finally:
        stop.set()
        thief.join()
    assert fleet.catalog.physical_collection() == old and fleet.catalog.reindex_target() is None
    assert len(indexed_keys(fleet.catalog)) == 12


def test_messages_for_an_abandoned_reindex_are_dropped_without_recreating_it(fleet):
    fleet.put("catalog/p/1.jpg", 1)
    fleet.sqs.send_message(
        QueueUrl=fleet.url,
        MessageBody='{"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", '
        '"s3": {"bucket": {"name": "product-images"}, "object": {"key": "catalog/p/1.jpg"}}}]}',
        MessageAttributes={TARGET_ATTRIBUTE: {"DataType": "String", "StringValue": "fleet-gone"}},
    )
    fleet.drain()
    assert not fleet.catalog.for_collection("fleet-gone").exists()
    assert indexed_keys(fleet.catalog) == {}
