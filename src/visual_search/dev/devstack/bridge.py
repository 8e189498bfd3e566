"""Bucket notifications for the local S3 emulator, delivered as AWS delivers them.

moto's own notifications cannot call a local function, so the durable S3 endpoint
(:mod:`.durable_s3`) hands every change it has confirmed to :meth:`NotificationBridge.notify`,
which turns it into an S3 event record (ObjectCreated:Put / ObjectRemoved:Delete, URL-encoded
key, ETag, size, a sequencer), wraps it in an SQS message and hands batches to the ingest
function's handler on a worker thread: asynchronously, with the same event shape and the same
partial-batch-failure contract as SQS. Failed messages are retried with backoff and, after
``max_receives``, parked in ``dead_letters``. The queue lives in memory: after a crash the
stack's start-up reconciliation indexes what was confirmed but not yet delivered.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus

from ..lambdas import LambdaContext
from .durable_s3 import Change

_sequence = {"last": 0}
_sequence_lock = threading.Lock()


def next_sequencer() -> str:
    """Strictly increasing, as S3's sequencers are for one key."""
    with _sequence_lock:
        _sequence["last"] = max(time.time_ns(), _sequence["last"] + 1)
        return f"{_sequence['last']:020X}"


@dataclass
class Message:
    record: dict
    receives: int = 0
    not_before: float = 0.0
    message_id: str = field(default_factory=lambda: str(uuid.uuid4()))


def s3_record(bucket: str, key: str, name: str, etag: str | None = None, size: int = 0) -> dict:
    obj: dict[str, Any] = {"key": quote_plus(key, safe="/"), "sequencer": next_sequencer()}
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


class NotificationBridge:
    """Delivers a bucket's changes to an ingest handler, SQS style."""

    def __init__(
        self,
        s3: Any,
        bucket: str,
        handler: Callable[[dict, Any], dict],
        *,
        exclude_prefixes: tuple[str, ...] = (),
        batch_size: int = 10,
        batch_window_s: float = 0.2,
        max_receives: int = 3,
        log: Callable[[str], None] = print,
        context: LambdaContext | None = None,
    ):
        self.s3, self.bucket, self.handler = s3, bucket, handler
        self.exclude = exclude_prefixes
        self.batch_size, self.batch_window_s = batch_size, batch_window_s
        self.context = context or LambdaContext()
        self.max_receives = max_receives
        self.log = log
        self.queue: queue.Queue[Message] = queue.Queue()
        self.dead_letters: list[Message] = []
        self.delivered = 0
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._threads: list[threading.Thread] = []
        self._in_flight = 0
        self._lock = threading.Lock()

    # -- notifications -------------------------------------------------------------------

    def notify(self, change: Change) -> None:
        """Queue the notification of a change the S3 endpoint has made durable."""
        if change.bucket != self.bucket or change.key.startswith(self.exclude):
            return
        if change.created:
            record = s3_record(self.bucket, change.key, "ObjectCreated:Put", change.etag, change.size)
        else:
            record = s3_record(self.bucket, change.key, "ObjectRemoved:Delete")
        self.queue.put(Message(record))

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
            response = self.handler(event, self.context)
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

    def backlog(self) -> dict[str, int]:
        """What /health reports: notifications waiting, being handled, given up, delivered."""
        with self._lock:
            return {
                "queued": self.queue.qsize(),
                "in_flight": self._in_flight,
                "dead_letters": len(self.dead_letters),
                "delivered": self.delivered,
            }

    def start(self) -> None:
        thread = threading.Thread(target=self._work, name="s3-deliver", daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
