"""Bucket notifications for the local S3 emulator, delivered as AWS delivers them.

moto's own notifications cannot call a local function, so the bridge watches the bucket
(listing it a few times a second), turns what changed into S3 event records
(ObjectCreated:Put / ObjectRemoved:Delete, URL-encoded keys, ETag, size, a sequencer), wraps
each in an SQS message and hands batches to the ingest function's handler on a worker thread:
asynchronously, with the same event shape and the same partial-batch-failure contract as SQS.
Failed messages are retried with backoff and, after ``max_receives``, parked in ``dead_letters``.

The bridge also mirrors the bucket into the data folder so that objects survive a restart of the
in-memory emulator, just as the embedded Qdrant folder does: bucket and catalogue stay in step.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote_plus

from ..lambdas import LambdaContext


@dataclass
class Message:
    record: dict
    receives: int = 0
    not_before: float = 0.0
    message_id: str = field(default_factory=lambda: str(uuid.uuid4()))


def s3_record(bucket: str, key: str, name: str, etag: str | None = None, size: int = 0) -> dict:
    obj: dict[str, Any] = {"key": quote_plus(key, safe="/"), "sequencer": f"{time.time_ns():020X}"}
    if name.startswith("ObjectCreated"):
        obj.update(size=size, eTag=(etag or "").strip('"'))
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "eventName": name,
        "userIdentity": {"principalId": "local"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "local-stack",
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": obj,
        },
    }


class BucketMirror:
    """Objects of the bucket, kept as files (bytes + a JSON sidecar) under the data folder."""

    def __init__(self, s3: Any, bucket: str, folder: Path):
        self.s3, self.bucket, self.folder = s3, bucket, folder / bucket

    def _paths(self, key: str) -> tuple[Path, Path]:
        path = self.folder / key
        if self.folder.resolve() not in path.resolve().parents:
            raise ValueError(f"unsafe key {key!r}")
        return path, path.with_name(path.name + ".s3meta.json")

    def save(self, key: str) -> None:
        response = self.s3.get_object(Bucket=self.bucket, Key=key)
        path, meta = self._paths(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(response["Body"].read())
        meta.write_text(
            json.dumps(
                {"ContentType": response.get("ContentType"), "Metadata": response.get("Metadata") or {}}
            )
        )

    def remove(self, key: str) -> None:
        for path in self._paths(key):
            path.unlink(missing_ok=True)

    def restore(self) -> int:
        """Upload every mirrored object back into the (empty) emulator; returns the count."""
        count = 0
        if not self.folder.is_dir():
            return 0
        for meta in sorted(self.folder.rglob("*.s3meta.json")):
            path = meta.with_name(meta.name[: -len(".s3meta.json")])
            if not path.is_file():
                continue
            info = json.loads(meta.read_text())
            self.s3.put_object(
                Bucket=self.bucket,
                Key=path.relative_to(self.folder).as_posix(),
                Body=path.read_bytes(),
                Metadata=info.get("Metadata") or {},
                ContentType=info.get("ContentType") or "binary/octet-stream",
            )
            count += 1
        return count


class NotificationBridge:
    """Watches a bucket and delivers its changes to an ingest handler, SQS style."""

    def __init__(
        self,
        s3: Any,
        bucket: str,
        handler: Callable[[dict, Any], dict],
        *,
        exclude_prefixes: tuple[str, ...] = (),
        mirror: BucketMirror | None = None,
        interval_s: float = 0.3,
        batch_size: int = 10,
        batch_window_s: float = 0.2,
        max_receives: int = 3,
        log: Callable[[str], None] = print,
    ):
        self.s3, self.bucket, self.handler = s3, bucket, handler
        self.exclude = exclude_prefixes
        self.mirror = mirror
        self.interval_s, self.batch_size, self.batch_window_s = interval_s, batch_size, batch_window_s
        self.max_receives = max_receives
        self.log = log
        self.queue: "queue.Queue[Message]" = queue.Queue()
        self.dead_letters: list[Message] = []
        self.delivered = 0
        self._seen: dict[str, str] = {}
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._threads: list[threading.Thread] = []
        self._in_flight = 0
        self._lock = threading.Lock()

    # -- watching ----------------------------------------------------------------------------

    def listing(self) -> dict[str, tuple[str, int]]:
        objects = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for obj in page.get("Contents", []):
                if not obj["Key"].startswith(self.exclude):
                    objects[obj["Key"]] = (obj["ETag"], int(obj["Size"]))
        return objects

    def snapshot(self) -> None:
        """Take the current contents as already known (no events for them)."""
        self._seen = {k: etag for k, (etag, _) in self.listing().items()}

    def poll(self) -> int:
        """Emit events for what changed since the last look; returns how many."""
        current = self.listing()
        events = 0
        for key, (etag, size) in current.items():
            if self._seen.get(key) != etag:
                if self.mirror:
                    self._mirror(self.mirror.save, key)
                self.queue.put(Message(s3_record(self.bucket, key, "ObjectCreated:Put", etag, size)))
                events += 1
        for key in set(self._seen) - set(current):
            if self.mirror:
                self._mirror(self.mirror.remove, key)
            self.queue.put(Message(s3_record(self.bucket, key, "ObjectRemoved:Delete")))
            events += 1
        self._seen = {k: etag for k, (etag, _) in current.items()}
        return events

    def _mirror(self, action: Callable[[str], None], key: str) -> None:
        try:
            action(key)
        except Exception as exc:  # the object vanished meanwhile, or the key is unsafe
            self.log(f"mirror: {key}: {exc}")

    # -- delivering --------------------------------------------------------------------------

    def _next_batch(self) -> list[Message]:
        batch: list[Message] = []
        deadline = None
        while len(batch) < self.batch_size and not self._stop.is_set():
            timeout = 0.1 if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                message = self.queue.get(timeout=timeout)
            except queue.Empty:
                if batch and (deadline is None or time.monotonic() >= deadline):
                    break
                if not batch:
                    continue
                break
            if message.not_before > time.monotonic():
                self.queue.put(message)
                time.sleep(0.05)
                continue
            with self._lock:  # in flight from the moment it leaves the queue
                self._in_flight += 1
            batch.append(message)
            deadline = deadline or time.monotonic() + self.batch_window_s
        return batch

    def deliver(self, batch: list[Message]) -> None:
        for message in batch:
            message.receives += 1
        event = {
            "Records": [
                {
                    "messageId": m.message_id,
                    "receiptHandle": m.message_id,
                    "body": json.dumps({"Records": [m.record]}),
                    "attributes": {"ApproximateReceiveCount": str(m.receives)},
                    "messageAttributes": {},
                    "eventSource": "aws:sqs",
                    "awsRegion": "us-east-1",
                    "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:local-ingest",
                }
                for m in batch
            ]
        }
        try:
            response = self.handler(event, LambdaContext())
            failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
        except Exception as exc:  # the whole invocation failed: every message comes back
            self.log(f"ingest invocation failed: {exc}")
            failed = {m.message_id for m in batch}
        for message in batch:
            if message.message_id not in failed:
                self.delivered += 1
            elif message.receives >= self.max_receives:
                self.dead_letters.append(message)
                self.log(
                    f"dead letter after {message.receives} attempts: {message.record['s3']['object']['key']}"
                )
            else:  # visibility timeout, then SQS delivers it again
                message.not_before = time.monotonic() + 0.5 * 2**message.receives
                self.queue.put(message)

    # -- threads -----------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception as exc:
                self.log(f"bucket watch failed: {exc}")

    def _work(self) -> None:
        while not self._stop.is_set():
            batch = self._next_batch()
            if batch:
                try:
                    self.deliver(batch)
                finally:
                    with self._lock:
                        self._in_flight -= len(batch)

    def pending(self) -> int:
        with self._lock:
            return self.queue.qsize() + self._in_flight

    def start(self) -> None:
        for target, name in ((self._watch, "s3-watch"), (self._work, "s3-deliver")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
