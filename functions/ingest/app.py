"""Ingest function: S3 uploads, replacements and deletions keep the Qdrant catalogue in sync.

Triggered by SQS (bucket notifications -> queue -> this function, partial batch failures
reported) or directly by an S3 notification event. The model session and the Qdrant client are
created at import time, in Lambda's init phase, the S3 client on first use. With SnapStart, the
after-restore hook gives each resumed instance new clients (see visual_search.snapstart).
"""

from __future__ import annotations

from visual_search.snapstart import begin_init

begin_init()  # first: the imports below run with the garbage collector paused

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from visual_search.aws import LazyClient
from visual_search.catalog import get_catalog
from visual_search.ingest.events import EventError, S3Change, changes_in_message, event_kind, parse_sqs_body
from visual_search.ingest.pipeline import IngestBatch, Ingestor, Status
from visual_search.ingest.router import Router, message_target
from visual_search.observability import MetricUnit, logger, metrics, tracer
from visual_search.snapstart import after_restore, finish_init, prewarm, renew

s3 = LazyClient()
prewarm(s3)
ingestor = Ingestor.configured(get_catalog(), s3)
# Changes go to the live alias, and also to the collection a running re-index builds; those of
# a re-index's own messages (which name their collection) go to that collection only.
router = Router(ingestor)


@after_restore
def renew_after_restore() -> None:
    renew(ingestor.catalog)
    s3.reset()


METRIC_NAMES = {
    "indexed": "ImagesIndexed",
    "deleted": "ImagesDeleted",
    "skipped": "ImagesSkipped",
    "failed": "ImagesFailed",
    "retry": "TransientFailures",
    "stale": "StaleEvents",
    "superseded": "StaleEvents",
}


def record_outcomes(batch: IngestBatch) -> None:
    """One log line per change, and counters per outcome and timing."""
    counts: dict[str, int] = {}
    for outcome in batch.outcomes:
        change = outcome.change
        log = logger.warning if outcome.status in (Status.FAILED, Status.RETRY) else logger.info
        log(
            f"{outcome.status} {change.key}",
            extra={
                "bucket": change.bucket,
                "key": change.key,
                "event": change.event_name,
                "status": outcome.status,
                "reason": outcome.reason,
                "sequencer": change.sequencer,
            },
        )
        name = METRIC_NAMES[outcome.status]
        counts[name] = counts.get(name, 0) + 1
    for name, value in counts.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    for timing, name in (("embed_ms", "EmbedLatency"), ("upsert_ms", "UpsertLatency")):
        if timing in batch.timings:
            metrics.add_metric(name=name, unit=MetricUnit.Milliseconds, value=batch.timings[timing])


def handle_sqs(event: dict) -> dict:
    changes: list[S3Change] = []
    owners: list[str] = []  # message id of each change
    targets: list[str | None] = []  # the collection its message names, if any
    unreadable: dict[str, str] = {}
    for raw in event["Records"]:
        record = SQSRecord(raw)
        try:
            found = parse_sqs_body(record.body)
        except EventError as exc:
            unreadable[record.message_id] = str(exc)
            continue
        changes += found
        owners += [record.message_id] * len(found)
        targets += [message_target(raw)] * len(found)
    batch = router.apply_batch(changes, targets)
    record_outcomes(batch)
    transient = {owner: o.reason for owner, o in zip(owners, batch.outcomes, strict=False) if o.transient}
    if unreadable:
        logger.error("unreadable SQS messages (left to go to the DLQ)", extra={"messages": unreadable})
        metrics.add_metric(name="UnreadableMessages", unit=MetricUnit.Count, value=len(unreadable))

    def record_handler(record: SQSRecord) -> None:
        reason = transient.get(record.message_id) or unreadable.get(record.message_id)
        if reason:
            raise RuntimeError(reason)

    # All records failing is reported like any partial failure (not raised), so SQS retries
    # exactly the failed messages and the DLQ gets them after maxReceiveCount.
    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    return process_partial_response(event=event, record_handler=record_handler, processor=processor)


def handle_s3(event: dict) -> dict:
    changes = list(changes_in_message(event))
    batch = router.apply_batch(changes, [None] * len(changes))
    record_outcomes(batch)
    outcomes = batch.outcomes
    transient = [o for o in outcomes if o.transient]
    if transient:
        # Lambda's asynchronous retries, then the on-failure destination, take over.
        raise RuntimeError(
            "transient failures: " + "; ".join(f"{o.change.key}: {o.reason}" for o in transient)
        )
    return {"outcomes": [{"key": o.change.key, "status": o.status, "reason": o.reason} for o in outcomes]}


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict, context) -> dict:
    try:
        kind = event_kind(event)
    except EventError as exc:
        logger.error(f"unsupported event: {exc}")
        raise
    metrics.add_metric(name="EventsReceived", unit=MetricUnit.Count, value=1)
    if kind == "test":
        logger.info("s3:TestEvent acknowledged")
        return {"outcomes": []}
    return handle_sqs(event) if kind == "sqs" else handle_s3(event)


finish_init()  # last: everything above lives as long as the instance
