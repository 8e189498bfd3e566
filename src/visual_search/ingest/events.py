"""S3 notifications, as they reach the ingest function: direct S3 events or wrapped in SQS.

Every S3 record becomes an ``S3Change`` with its key URL-decoded (S3 sends ``+`` for spaces
and percent-encodes unicode). ``s3:TestEvent`` messages, sent when a notification is first
configured, carry no change and are recognised so they can be acknowledged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus


class EventError(ValueError):
    """The event is not an S3 notification we understand (a permanent failure)."""


@dataclass(frozen=True)
class S3Change:
    bucket: str
    key: str
    kind: str  # "created" | "removed"
    event_name: str
    sequencer: str | None = None
    size: int | None = None
    etag: str | None = None
    version_id: str | None = None

    @property
    def ref(self) -> tuple[str, str]:
        return (self.bucket, self.key)


def sequencer_key(sequencer: str | None) -> str:
    """A sortable form of S3's sequencer: hex strings of varying length, compared after padding
    the shorter one with zeros on the right (as S3's documentation prescribes)."""
    return str(sequencer or "").upper().ljust(32, "0")


def is_newer(candidate: str | None, applied: str | None) -> bool:
    """True unless ``candidate`` is known to be older than (or the same as) ``applied``."""
    if not candidate or not applied:
        return True
    return sequencer_key(candidate) > sequencer_key(applied)


def parse_s3_record(record: Mapping[str, Any]) -> S3Change:
    try:
        name = str(record["eventName"])
        s3 = record["s3"]
        bucket = str(s3["bucket"]["name"])
        obj = s3["object"]
        key = unquote_plus(str(obj["key"]))
    except (KeyError, TypeError, IndexError) as exc:
        raise EventError(f"S3 record without {exc}") from None
    if not isinstance(obj, Mapping) or not key or not bucket:
        raise EventError("S3 record without an object key or bucket")
    if name.startswith("ObjectCreated:"):
        kind = "created"
    elif name.startswith("ObjectRemoved:"):
        kind = "removed"
    else:
        raise EventError(f"unsupported S3 event {name!r}")
    try:
        size = int(obj["size"]) if obj.get("size") is not None else None
    except (TypeError, ValueError, OverflowError):
        raise EventError(f"S3 record with a bad object size {obj.get('size')!r}") from None
    sequencer = obj.get("sequencer")
    if sequencer is not None and not (
        isinstance(sequencer, str) and all(c in "0123456789abcdefABCDEF" for c in sequencer)
    ):
        raise EventError(f"S3 record with a bad sequencer {sequencer!r}")
    etag, version = obj.get("eTag"), obj.get("versionId")
    return S3Change(
        bucket=bucket,
        key=key,
        kind=kind,
        event_name=name,
        sequencer=sequencer,
        size=size,
        etag=etag if isinstance(etag, str) else None,
        version_id=version if isinstance(version, str) else None,
    )


def is_test_event(message: Mapping[str, Any]) -> bool:
    return message.get("Event") == "s3:TestEvent"


def changes_in_message(message: Mapping[str, Any]) -> Iterator[S3Change]:
    """The S3 changes of one notification message (``{"Records": [...]}``); none for a test event."""
    if is_test_event(message):
        return
    records = message.get("Records")
    if not isinstance(records, list):
        raise EventError("the message holds neither S3 Records nor an s3:TestEvent")
    for record in records:
        if not isinstance(record, Mapping):
            raise EventError("an S3 record is not an object")
        yield parse_s3_record(record)


def parse_sqs_body(body: str) -> list[S3Change]:
    try:
        message = json.loads(body)
    except (TypeError, ValueError, RecursionError):
        raise EventError("the SQS message body is not JSON (or is nested too deeply)") from None
    if not isinstance(message, Mapping):
        raise EventError("the SQS message body is not a JSON object")
    # S3 -> SNS -> SQS wraps the notification once more.
    if message.get("Type") == "Notification" and isinstance(message.get("Message"), str):
        return parse_sqs_body(message["Message"])
    return list(changes_in_message(message))


def event_kind(event: Mapping[str, Any]) -> str:
    """ "sqs", "s3" or "test" (a bare s3:TestEvent); raises EventError otherwise."""
    if not isinstance(event, Mapping):
        raise EventError("the event is not a JSON object")
    if is_test_event(event):
        return "test"
    records = event.get("Records")
    if records == []:
        return "s3"  # nothing to apply
    if isinstance(records, list) and records:
        source = records[0].get("eventSource") if isinstance(records[0], Mapping) else None
        if source == "aws:sqs":
            for record in records:
                if not (
                    isinstance(record, Mapping)
                    and isinstance(record.get("messageId"), str)
                    and isinstance(record.get("body"), str)
                ):
                    raise EventError("an SQS record without a messageId or body")
            return "sqs"
        if source == "aws:s3":
            return "s3"
    raise EventError("expected an SQS event or an S3 notification event")
