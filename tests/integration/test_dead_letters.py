"""Poison messages: they end in the DLQ after maxReceiveCount, are visible there, and
`visual-search redrive` sends them back once the cause is fixed; then the catalogue is right."""

from __future__ import annotations

import json

import boto3
import pytest

from tests.integration.test_ingest import ingest_world
from visual_search.dev.cli import main


def poll_once(sqs, queue_url: str, handler) -> int:
    """What Lambda's SQS poller does: receive a batch, invoke, delete what succeeded."""
    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, AttributeNames=["All"]).get(
        "Messages", []
    )
    if not messages:
        return 0
    event = {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m.get("Attributes", {}),
                "messageAttributes": {},
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:ingest",
            }
            for m in messages
        ]
    }
    failed = {f["itemIdentifier"] for f in handler(event, None)["batchItemFailures"]}
    for m in messages:
        if m["MessageId"] not in failed:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
    return len(messages)


@pytest.fixture
def queues(monkeypatch, embedder, qdrant_shim):
    monkeypatch.setenv("QDRANT_URL", qdrant_shim.url)
    monkeypatch.setenv("COLLECTION", "dead-letters")
    monkeypatch.setenv("QDRANT_TIMEOUT", "2")
    with ingest_world() as world:
        sqs = boto3.client("sqs", region_name="us-east-1")
        dlq = sqs.create_queue(QueueName="ingest-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        queue = sqs.create_queue(
            QueueName="ingest",
            Attributes={
                "VisibilityTimeout": "0",
                "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"}),
            },
        )["QueueUrl"]
        yield world, sqs, queue, dlq
        world.store.drop_collection(world.store.physical_collection())


def test_poison_messages_park_in_the_dlq_and_redrive_fixes_them(queues, demo_images, qdrant_shim, capsys):
    world, sqs, queue, dlq = queues
    records = [world.put(f"catalog/p{n}/a.jpg", demo_images[n * 7].path.read_bytes()) for n in range(3)]
    for record in records:
        sqs.send_message(QueueUrl=queue, MessageBody=json.dumps({"Records": [record]}))
    qdrant_shim.fail_with = 503  # Qdrant is down for longer than the retries last
    try:
        for _ in range(6):
            poll_once(sqs, queue, lambda e, c: world.invoke(e))
    finally:
        qdrant_shim.fail_with = None
    assert world.store.count() == 0
    # visible in the DLQ
    assert main(["redrive", "--dlq", "ingest-dlq", "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert "3 messages in the dead-letter queue" in listing and "catalog/p1/a.jpg" in listing
    # the cause is fixed: send them back and let the function run
    assert main(["redrive", "--dlq", "ingest-dlq", "--to", "ingest", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["moved"] == 3
    while poll_once(sqs, queue, lambda e, c: world.invoke(e)):
        pass
    world.assert_in_sync()
    assert world.store.count() == 3
    left = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["ApproximateNumberOfMessages"])
    assert left["Attributes"]["ApproximateNumberOfMessages"] == "0"


@pytest.fixture
def sqs():
    from moto import mock_aws

    with mock_aws():
        yield boto3.client("sqs", region_name="us-east-1")


def test_redrive_moves_messages_too_large_to_send_ten_at_once(sqs, capsys):
    dlq = sqs.create_queue(QueueName="big-dlq")["QueueUrl"]
    target = sqs.create_queue(QueueName="big")["QueueUrl"]
    bodies = [json.dumps({"Records": [], "pad": str(n) * 200_000}) for n in range(10)]
    for body in bodies:
        sqs.send_message(QueueUrl=dlq, MessageBody=body)
    assert main(["redrive", "--dlq", "big-dlq", "--to", "big", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["moved"] == 10
    got = []
    while batch := sqs.receive_message(QueueUrl=target, MaxNumberOfMessages=10).get("Messages"):
        got += [m["Body"] for m in batch]
        sqs.delete_message_batch(
            QueueUrl=target,
            Entries=[{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(batch)],
        )
    assert sorted(got) == sorted(bodies)  # each once


def test_a_dry_run_counts_every_parked_message(sqs, capsys):
    dlq = sqs.create_queue(QueueName="many-dlq")["QueueUrl"]
    for start in range(0, 150, 10):
        sqs.send_message_batch(
            QueueUrl=dlq,
            Entries=[
                {"Id": str(n), "MessageBody": json.dumps({"Records": [], "n": start + n})} for n in range(10)
            ],
        )
    assert main(["redrive", "--dlq", "many-dlq", "--dry-run"]) == 0
    assert "150 messages in the dead-letter queue (100 shown)" in capsys.readouterr().out


def test_fifo_queues_are_refused_with_a_reason(sqs, capsys):
    sqs.create_queue(QueueName="x-dlq.fifo", Attributes={"FifoQueue": "true"})
    sqs.create_queue(QueueName="x.fifo", Attributes={"FifoQueue": "true"})
    assert main(["redrive", "--dlq", "x-dlq.fifo", "--to", "x.fifo", "--quiet"]) == 1
    assert "FIFO" in capsys.readouterr().err


def test_a_message_sent_back_but_not_deleted_is_reported(sqs):
    from visual_search.ops.queues import redrive

    class ExpiredHolds:  # the DLQ refuses the deletes, as when the 30 s hold has run out
        def __init__(self, client):
            self.client = client

        def delete_message_batch(self, QueueUrl, Entries):
            return {
                "Failed": [
                    {
                        "Id": e["Id"],
                        "Code": "ReceiptHandleIsInvalid",
                        "Message": "expired",
                        "SenderFault": True,
                    }
                    for e in Entries
                ]
            }

        def __getattr__(self, name):
            return getattr(self.client, name)

    dlq = sqs.create_queue(QueueName="d")["QueueUrl"]
    target = sqs.create_queue(QueueName="t")["QueueUrl"]
    sqs.send_message(QueueUrl=dlq, MessageBody="{}")
    with pytest.raises(RuntimeError, match="could not be deleted"):
        redrive(ExpiredHolds(sqs), dlq, target)
