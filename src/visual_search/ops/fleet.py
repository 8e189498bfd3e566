"""Bulk work through the deployed function fleet: backfill and re-index via the ingest queue.

``visual-search ingest s3://bucket/prefix --via-queue QUEUE`` lists the objects and sends
messages shaped like the bucket's own notifications (``{"Records": [<S3 event record>, ...]}``,
several records per message, ``SendMessageBatch``) to the ingest queue, so the deployed ingest
function indexes them in parallel, up to ``IngestMaxConcurrency`` instances, exactly as if the
photos had just been uploaded. Objects whose point already carries their ETag are not sent
(unless ``force``), so an interrupted run resumes.

``visual-search reindex --via-queue QUEUE`` builds the new collection the same way: its
messages carry the message attribute ``TARGET_ATTRIBUTE`` naming the new collection, and the
ingest function writes them there. While the re-index runs, the alias ``<COLLECTION>.reindex``
points at the new collection; the ingest function applies every ordinary bucket notification
to the live alias and to that target as well, so changes made during the re-index are not
lost. The command waits for the queue to drain and for the new collection's count to match the
live one's, then switches the alias in one step, as ``visual-search reindex`` does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus

from ..catalog import REINDEX_SUFFIX, Catalog
from ..ingest.pipeline import Ingestor, bare_etag
from ..ingest.router import TARGET_ATTRIBUTE
from .previous import keep_as_previous
from .queues import queue_url, waiting
from .sync import SourceObject, chunks, list_objects, slug, sources_in

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Embedder

MAX_BATCH_BYTES = 240 * 1024  # SendMessageBatch takes at most 256 KiB in all
SEND_ATTEMPTS = 5


@dataclass
class EnqueueReport:
    queue: str
    listed: int = 0
    queued: int = 0  # objects sent (or, with dry_run, that would be)
    messages: int = 0
    unchanged: int = 0  # already indexed with their ETag
    skipped: int = 0  # not for the catalogue (prefix, upload folder, known non-image)
    dry_run: bool = False
    seconds: float = 0.0
    target: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def s3_record(obj: SourceObject, region: str, now: str) -> dict[str, Any]:
    """One record as S3 puts it in a notification (the key URL-encoded, ``+`` for spaces)."""
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": region,
        "eventTime": now,
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "visual-search-backfill"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "visual-search-backfill",
            "bucket": {"name": obj.bucket, "arn": f"arn:aws:s3:::{obj.bucket}"},
            "object": {"key": quote_plus(obj.key, safe="/"), "size": obj.size, "eTag": obj.etag},
        },
    }


def reindex_alias(collection: str) -> str:
    return f"{collection}{REINDEX_SUFFIX}"


class Sender:
    """Sends message bodies with SendMessageBatch: at most ``rate`` messages per second, the
    entries that SQS refuses sent again (with backoff), an error if they keep failing."""

    def __init__(
        self,
        sqs: Any,
        url: str,
        target: str | None = None,
        rate: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.sqs, self.url, self.target, self.rate = sqs, url, target, rate
        self.clock, self.sleep = clock, sleep
        self.started = clock()
        self.sent = 0

    def _pace(self, count: int) -> None:
        if self.rate:
            due = self.started + (self.sent + count) / self.rate
            wait = due - self.clock()
            if wait > 0:
                self.sleep(wait)

    def send(self, bodies: Sequence[str]) -> None:
        """Up to 10 bodies (one batch)."""
        self._pace(len(bodies))
        attributes = (
            {TARGET_ATTRIBUTE: {"DataType": "String", "StringValue": self.target}} if self.target else {}
        )
        entries = {
            str(i): {
                "Id": str(i),
                "MessageBody": body,
                **({"MessageAttributes": attributes} if attributes else {}),
            }
            for i, body in enumerate(bodies)
        }
        for attempt in range(SEND_ATTEMPTS):
            response = self.sqs.send_message_batch(QueueUrl=self.url, Entries=list(entries.values()))
            failed = response.get("Failed") or []
            for ok in response.get("Successful") or []:
                entries.pop(ok["Id"], None)
            if not entries:
                break
            if attempt == SEND_ATTEMPTS - 1:
                reasons = "; ".join(f"{f.get('Code')}: {f.get('Message')}" for f in failed)
                raise RuntimeError(f"SQS refused {len(entries)} messages {SEND_ATTEMPTS} times: {reasons}")
            self.sleep(min(8.0, 0.5 * 2**attempt))
        self.sent += len(bodies)


def _batches(bodies: Iterable[str]) -> Iterator[list[str]]:
    """Groups of at most 10 bodies and MAX_BATCH_BYTES in all."""
    batch: list[str] = []
    size = 0
    for body in bodies:
        if batch and (len(batch) == 10 or size + len(body) > MAX_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(body)
        size += len(body)
    if batch:
        yield batch


def enqueue(
    ingestor: Ingestor,
    sqs: Any,
    queue: str,
    bucket: str,
    prefix: str = "",
    *,
    force: bool = False,
    dry_run: bool = False,
    rate: float | None = None,
    records_per_message: int = 10,
    target: str | None = None,
    progress: Callable[[int], None] = lambda n: None,
    sleep: Callable[[float], None] = time.sleep,
    region: str = "us-east-1",
) -> EnqueueReport:
    """Send a creation record for every object under the prefix that the catalogue lacks (or
    holds with another ETag; every one with ``force``) to the ingest queue."""
    url = queue_url(sqs, queue)
    report = EnqueueReport(queue=url, dry_run=dry_run, target=target)
    started = time.monotonic()
    sender = Sender(sqs, url, target, rate, sleep=sleep)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    pending: list[dict] = []

    def flush(records: list[dict]) -> None:
        bodies = [
            json.dumps({"Records": records[i : i + records_per_message]})
            for i in range(0, len(records), records_per_message)
        ]
        report.messages += len(bodies)
        if not dry_run:
            for batch in _batches(bodies):
                sender.send(batch)

    for chunk in chunks(list_objects(ingestor.s3, bucket, prefix), 100):
        report.listed += len(chunk)
        wanted = [o for o in chunk if not ingestor.skip_reason(o.key)]
        report.skipped += len(chunk) - len(wanted)
        if not force:
            stored = ingestor.catalog.stored([(o.bucket, o.key) for o in wanted])
            todo = [o for o in wanted if bare_etag(stored.get((o.bucket, o.key), {}).get("etag")) != o.etag]
            report.unchanged += len(wanted) - len(todo)
            wanted = todo
        pending += [s3_record(o, region, now) for o in wanted]
        report.queued += len(wanted)
        whole = len(pending) - len(pending) % (records_per_message * 10)
        if whole:
            flush(pending[:whole])
            pending = pending[whole:]
        progress(len(chunk))
    if pending:
        flush(pending)
    report.seconds = round(time.monotonic() - started, 1)
    return report


def watch_hint(url: str) -> str:
    return (
        "watch the queue drain (messages waiting + in flight; the ingest function's logs and its "
        "ImagesIndexed metric show the progress):\n"
        f"  aws sqs get-queue-attributes --queue-url {url} --attribute-names "
        "ApproximateNumberOfMessages ApproximateNumberOfMessagesNotVisible\n"
        "failures park in the dead-letter queue: visual-search redrive --dlq <DeadLetterQueueName> --dry-run"
    )


def wait_for_drain(
    sqs: Any,
    url: str,
    *,
    poll_s: float = 10.0,
    settle: int = 3,
    timeout_s: float = 86400.0,
    log: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Return once the queue held no message (waiting or in flight) ``settle`` times in a row
    (SQS's counts are approximate); TimeoutError after ``timeout_s``."""
    deadline = clock() + timeout_s
    empty = 0
    last = None
    while True:
        left = waiting(sqs, url)
        empty = empty + 1 if left == 0 else 0
        if empty >= settle:
            return
        if left != last:
            log(f"{left} messages in the queue")
            last = left
        if clock() >= deadline:
            raise TimeoutError(f"the queue still holds {left} messages after {timeout_s:.0f} s")
        sleep(poll_s)


# -- in the ingest function ---------------------------------------------------------------------


# -- re-index through the queue -----------------------------------------------------------------


@dataclass
class ReindexPlan:
    collection: str
    previous: str | None
    sources: list[tuple[str, str]]
    enqueued: dict[str, dict] = field(default_factory=dict)


def reindex_via_queue(
    catalog: Catalog,
    s3: Any,
    sqs: Any,
    queue: str,
    sources: list[tuple[str, str]] | None = None,
    *,
    keep_old: bool = False,
    model: Embedder | None = None,
    keep_previous_h: float | None = None,
    before_switch: Callable[[str], str | None] = lambda new: None,
    after_switch: Callable[[], dict[str, Any] | None] = lambda: None,
    rate: float | None = None,
    records_per_message: int = 10,
    poll_s: float = 10.0,
    settle: int = 3,
    timeout_s: float = 86400.0,
    progress: Callable[[int], None] = lambda n: None,
    log: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Build a new collection through the function fleet, switch the alias once the queue has
    drained and the counts match, drop the old collection (unless ``keep_old``).

    ``model``: the new collection's model (default: the layer's); the ingest functions embed
    every change for it with it. ``keep_previous_h``: keep the old collection that long for
    ``visual-search model rollback`` (alias ``<COLLECTION>.previous``) instead of dropping it.
    ``before_switch(new)`` may refuse the switch by raising, or name another collection to
    switch to (a model change's adapted copy of ``new``); ``after_switch`` runs once the alias
    has moved.

    Searches keep answering from the old collection until the alias switches. On failure (the
    counts never match, a timeout, Ctrl-C) the alias never moved and the new collection is
    dropped; messages still queued for it are then acknowledged and ignored by the function.
    """
    url = queue_url(sqs, queue)
    waiting(sqs, url)  # a queue that does not exist fails here, before anything is made
    old = catalog.physical_collection()
    if sources is None:
        sources = sources_in(catalog, old) if old else []
    if not sources:
        raise ValueError("nothing to re-index from: give --source s3://bucket/prefix")
    fields = model.fields if model is not None else catalog.layer_model
    started = datetime.now(UTC)
    new = f"{catalog.collection}-{slug(fields.model_id)}-{started.strftime('%Y%m%d%H%M%S%f')}"
    building = catalog.create_collection(
        new,
        fields,
        {"migration_state": "building", "migration_started_at": started.isoformat(), "migration_from": old},
    )
    catalog.set_reindex_target(new)
    log(f"building {new} ({fields.model_id}) through {url}; live changes go to both collections meanwhile")
    ingestor = Ingestor.configured(catalog, s3)
    plan = ReindexPlan(new, old, sources)
    try:
        queued = 0
        for bucket, prefix in sources:
            report = enqueue(
                ingestor,
                sqs,
                url,
                bucket,
                prefix,
                force=True,
                rate=rate,
                records_per_message=records_per_message,
                target=new,
                progress=progress,
                sleep=sleep,
            )
            plan.enqueued[f"s3://{bucket}/{prefix}"] = report.as_dict()
            queued += report.queued
            log(f"queued {report.queued} objects of s3://{bucket}/{prefix} in {report.messages} messages")
        catalog.update_metadata_of(new, {"migration_total": queued})
        log(watch_hint(url))
        wait_for_drain(sqs, url, poll_s=poll_s, settle=settle, timeout_s=timeout_s, log=log, sleep=sleep)
        _wait_for_counts(catalog, building, sources, old, poll_s, settle, log, sleep)
        final = before_switch(new) or new
    except BaseException:
        made = sorted({new, catalog.reindex_target() or new})
        unchanged = f"{catalog.collection!r} is unchanged"
        log(f"re-index stopped before the switch: dropping {', '.join(made)}; {unchanged}")
        catalog.set_reindex_target(None)
        for name in made:
            if name in catalog.collections():
                catalog.drop_collection(name)
        raise
    kept = _switch(catalog, final, old, keep_old, keep_previous_h, log)
    catalog.update_metadata_of(final, {"migration_state": "switched", "migration_switched_at": _now()})
    out = {"collection": final, "previous": old, "via_queue": url, "sources": plan.enqueued}
    out["model"] = fields.model_id
    if kept:
        out["previous_kept_until"] = kept
    adapted = after_switch()
    if adapted is not None:
        out["adapt"] = adapted
    return out


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _switch(
    catalog: Catalog,
    new: str,
    old: str | None,
    keep_old: bool,
    keep_previous_h: float | None,
    log: Callable[[str], None],
) -> str | None:
    """The alias to ``new``; the old collection dropped, or kept (for a rollback: until when)."""
    if old == catalog.collection:  # a plain collection, not yet an alias
        catalog.drop_collection(old)
        old = None
    catalog.switch_to(new)  # the alias and the end of the re-index marker, in one step
    log(f"alias {catalog.collection!r} now points at {new}")
    if old and keep_previous_h is not None:
        return keep_as_previous(catalog, old, new, keep_previous_h, log)
    if old and not keep_old:
        catalog.drop_collection(old)
        log(f"dropped the old collection {old}")
    return None


def _wait_for_counts(catalog, building, sources, old, poll_s, settle, log, sleep) -> None:
    """The new collection holds as many images of the sources as the live one: both got every
    change since the listing. A count that stays different ``settle`` polls is an error."""
    if not old:
        return
    for poll in range(settle):
        expected = catalog.count_under(sources)
        got = building.count_under(sources)
        if got == expected:
            return
        log(f"counts differ: {got} images in {building.collection}, {expected} in {old}")
        if poll < settle - 1:
            sleep(poll_s)
    raise RuntimeError(
        f"the new collection has {got} images of the sources, the live one {expected}: some "
        f"messages failed (see the dead-letter queue and the ingest function's logs), or the live "
        f"collection has drifted from the bucket (visual-search reconcile); the alias was not switched"
    )


# -- the command line's two commands (dev/cli/ parses, these run) ----------------------------------


def _progress(desc: str, quiet: bool):
    import sys

    from tqdm import tqdm

    return tqdm(total=None, desc=desc, unit="obj", disable=quiet, file=sys.stderr)


def run_ingest(
    source: str,
    queue: str,
    *,
    force: bool,
    dry_run: bool,
    rate: float | None,
    records_per_message: int,
    quiet: bool,
) -> int:
    import sys

    import boto3

    from ..aws import s3_client
    from ..catalog import get_catalog
    from .sync import parse_s3_url

    bucket, prefix = parse_s3_url(source)
    sqs = boto3.client("sqs")
    ingestor = Ingestor.configured(get_catalog(), s3_client())
    bar = _progress(f"{'counting' if dry_run else 'queueing'} {source}", quiet)
    report = enqueue(
        ingestor,
        sqs,
        queue,
        bucket,
        prefix,
        force=force,
        dry_run=dry_run,
        rate=rate,
        records_per_message=records_per_message,
        progress=bar.update,
        region=sqs.meta.region_name or "us-east-1",
    )
    bar.close()
    print(json.dumps(report.as_dict(), indent=2))
    if not dry_run and report.messages:
        print(watch_hint(report.queue), file=sys.stderr)
    return 0


def run_reindex(
    queue: str,
    sources: list[tuple[str, str]] | None,
    *,
    keep_old: bool,
    rate: float | None,
    timeout_s: float,
    quiet: bool,
) -> int:
    import sys

    import boto3

    from ..aws import s3_client
    from ..catalog import get_catalog

    bar = _progress("queueing", quiet)
    result = reindex_via_queue(
        get_catalog(),
        s3_client(),
        boto3.client("sqs"),
        queue,
        sources,
        keep_old=keep_old,
        rate=rate,
        timeout_s=timeout_s,
        progress=bar.update,
        log=lambda m: print(m, file=sys.stderr),
    )
    bar.close()
    print(json.dumps(result, indent=2))
    return 0
