"""The ingest queue's dead-letter queue: look at what is parked there, and send it back.

Messages land in the DLQ after failing ``maxReceiveCount`` times (Qdrant down for long, a bug).
Once the cause is fixed, ``visual-search redrive`` moves them back to the ingest queue, where the
function applies them like any notification (idempotently: replays change nothing twice).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Parked:
    message_id: str
    receives: int
    keys: list[str]
    body: str


def queue_url(sqs: Any, name_or_url: str) -> str:
    if name_or_url.startswith(("https://", "http://")):
        return name_or_url
    return sqs.get_queue_url(QueueName=name_or_url)["QueueUrl"]


def source_queue(sqs: Any, dlq_url: str) -> str:
    """The one queue that uses this DLQ (for redrive without --to)."""
    sources = sqs.list_dead_letter_source_queues(QueueUrl=dlq_url).get("queueUrls", [])
    if len(sources) != 1:
        raise ValueError(f"{len(sources)} queues use this DLQ; name the target with --to")
    return sources[0]


def describe(body: str) -> list[str]:
    """The S3 keys a notification message is about (best effort, for display)."""
    try:
        message = json.loads(body)
        return [r["s3"]["object"]["key"] for r in message.get("Records", [])]
    except (ValueError, KeyError, TypeError, AttributeError):
        return []


def _receive(sqs: Any, url: str, visibility: int) -> list[dict]:
    return sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        WaitTimeSeconds=1,
        VisibilityTimeout=visibility,
        AttributeNames=["ApproximateReceiveCount"],
        MessageAttributeNames=["All"],
    ).get("Messages", [])


def waiting(sqs: Any, url: str) -> int:
    """How many messages the queue holds (SQS's approximate count, visible and in flight)."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return sum(int(v) for v in attributes.values())


def peek(sqs: Any, dlq_url: str, limit: int = 100) -> list[Parked]:
    """Parked messages, left in the queue: each is made visible again right after reading."""
    seen: dict[str, Parked] = {}
    handles: list[str] = []
    while len(seen) < limit:
        batch = _receive(sqs, dlq_url, visibility=30)
        fresh = [m for m in batch if m["MessageId"] not in seen]
        if not fresh:
            break
        for m in fresh:
            handles.append(m["ReceiptHandle"])
            seen[m["MessageId"]] = Parked(
                m["MessageId"],
                int(m.get("Attributes", {}).get("ApproximateReceiveCount", 0)),
                describe(m["Body"]),
                m["Body"],
            )
    for start in range(0, len(handles), 10):
        sqs.change_message_visibility_batch(
            QueueUrl=dlq_url,
            Entries=[
                {"Id": str(n), "ReceiptHandle": h, "VisibilityTimeout": 0}
                for n, h in enumerate(handles[start : start + 10])
            ],
        )
    return list(seen.values())[:limit]


BATCH_BYTES = 256 * 1024  # SQS's limit on one SendMessageBatch call (bodies + attributes)


def _size(entry: dict) -> int:
    size = len(entry["MessageBody"].encode("utf-8"))
    for name, value in (entry.get("MessageAttributes") or {}).items():
        size += len(name.encode()) + len(str(value.get("DataType", "")).encode())
        size += len(value.get("StringValue", "").encode()) + len(value.get("BinaryValue", b""))
    return size


def _by_size(entries: list[dict]) -> list[list[dict]]:
    """Send batches under SQS's byte limit (a large message goes alone)."""
    groups: list[list[dict]] = []
    used = BATCH_BYTES
    for entry in entries:
        size = _size(entry)
        if used + size > BATCH_BYTES:
            groups.append([])
            used = 0
        groups[-1].append(entry)
        used += size
    return groups


def is_fifo(url: str) -> bool:
    return url.endswith(".fifo")


def redrive(
    sqs: Any,
    dlq_url: str,
    target_url: str,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Move messages from the DLQ to the target queue: send first, then delete, so a failure
    in between duplicates a message (harmless: ingest is idempotent) but never loses one."""
    if is_fifo(dlq_url) or is_fifo(target_url):
        raise ValueError(
            "FIFO queues are not supported (S3 notifications reach only standard "
            "queues); use the SQS console's DLQ redrive for them"
        )
    moved = 0
    progress = progress or (lambda n: None)
    while limit is None or moved < limit:
        batch = _receive(sqs, dlq_url, visibility=30)
        if limit is not None:
            batch = batch[: limit - moved]
        if not batch:
            return moved
        entries = [
            {
                "Id": str(n),
                "MessageBody": m["Body"],
                **({"MessageAttributes": m["MessageAttributes"]} if m.get("MessageAttributes") else {}),
            }
            for n, m in enumerate(batch)
        ]
        for group in _by_size(entries):
            moved += _send_then_delete(sqs, dlq_url, target_url, batch, group)
            progress(len(group))
    return moved


def _send_then_delete(sqs: Any, dlq_url: str, target_url: str, batch: list[dict], group: list[dict]) -> int:
    sent = sqs.send_message_batch(QueueUrl=target_url, Entries=group)
    ok = sorted(int(s["Id"]) for s in sent.get("Successful", []))
    if ok:
        deleted = sqs.delete_message_batch(
            QueueUrl=dlq_url, Entries=[{"Id": str(n), "ReceiptHandle": batch[n]["ReceiptHandle"]} for n in ok]
        )
        kept = deleted.get("Failed", [])
        if kept:  # sent but still in the DLQ: it would be sent again by a later run
            raise RuntimeError(
                f"{len(kept)} messages were sent back but could not be deleted "
                f"from the DLQ (their 30 s hold ran out?): "
                f"{[f.get('Message', '') for f in kept]}; a later redrive would "
                f"send them twice, which ingest applies idempotently"
            )
    if len(ok) < len(group):
        failed = [f.get("Message", "") for f in sent.get("Failed", [])]
        raise RuntimeError(f"{len(group) - len(ok)} messages could not be sent back: {failed}")
    return len(ok)
