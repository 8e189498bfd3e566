"""Write the sample events in events/ (shapes from `sam local generate-event`, adapted).

    .venv/bin/python tools/make_events.py

S3 notification events (direct and wrapped in SQS) for the ingest function, and one API Gateway
REST proxy event per endpoint of the search function, carrying a small real demo photo.
"""

from __future__ import annotations

import base64
import io
import json
import uuid
from pathlib import Path
from urllib.parse import quote_plus

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"
BUCKET = "product-images"
PHOTO = ROOT / "data/demo-catalog/Oatly-Oat-Milk/Oatly-Oat-Milk_001.jpg"
QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:visual-search-ingest"


def s3_record(name: str, key: str, sequencer: str, size: int = 0) -> dict:
    obj: dict[str, str | int] = {"key": quote_plus(key, safe="/"), "sequencer": sequencer}
    if name.startswith("ObjectCreated"):
        obj.update(size=size, eTag="0123456789abcdef0123456789abcdef")
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2026-11-25T12:00:00.000Z",
        "eventName": name,
        "userIdentity": {"principalId": "EXAMPLE"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {
            "x-amz-request-id": "EXAMPLE123456789",
            "x-amz-id-2": "EXAMPLE123/5678abcdefghijklambdaisawesome/mnopqrstuvwxyzABCDEFGH",
        },
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "catalog-changes",
            "bucket": {
                "name": BUCKET,
                "ownerIdentity": {"principalId": "EXAMPLE"},
                "arn": f"arn:aws:s3:::{BUCKET}",
            },
            "object": obj,
        },
    }


def sqs_event(*bodies: dict) -> dict:
    records = []
    for n, body in enumerate(bodies):
        records.append(
            {
                "messageId": str(uuid.UUID(int=n + 1)),
                "receiptHandle": f"receipt-{n + 1}",
                "body": json.dumps(body),
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": "1764072000000",
                    "SenderId": "AIDAEXAMPLE",
                    "ApproximateFirstReceiveTimestamp": "1764072000001",
                },
                "messageAttributes": {},
                "md5OfBody": "0" * 32,
                "eventSource": "aws:sqs",
                "eventSourceARN": QUEUE_ARN,
                "awsRegion": "us-east-1",
            }
        )
    return {"Records": records}


def api_event(
    method: str,
    path: str,
    resource: str,
    body: str | None = None,
    *,
    headers: dict | None = None,
    query: dict | None = None,
    path_params: dict | None = None,
    binary: bool = False,
) -> dict:
    headers = {
        "Accept": "application/json",
        "Host": "example.execute-api.us-east-1.amazonaws.com",
        "X-Forwarded-Proto": "https",
        **(headers or {}),
    }
    return {
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "pathParameters": path_params,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": resource,
            "httpMethod": method,
            "path": f"/prod{path}",
            "stage": "prod",
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "accountId": "123456789012",
            "apiId": "example",
            "identity": {"sourceIp": "127.0.0.1", "userAgent": "curl/8"},
            "protocol": "HTTP/1.1",
            "requestTimeEpoch": 1764072000000,
        },
        "body": body,
        "isBase64Encoded": binary,
    }


def small_photo() -> bytes:
    image = Image.open(PHOTO).convert("RGB")
    image.thumbnail((160, 160))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def multipart(photo: bytes, boundary: str = "----visualsearch") -> bytes:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n3\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="category"\r\n\r\nOat-Milk\r\n'.encode(),
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + photo
        + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts)


def build() -> dict[str, dict]:
    photo = small_photo()
    b64 = base64.b64encode(photo).decode()
    key = "catalog/Oatly-Oat-Milk/Oatly-Oat-Milk_001.jpg"
    unicode_key = "catalog/Café Crème/front photo ü.jpg"
    put = s3_record("ObjectCreated:Put", key, "0055AED6DCD90281E5", len(photo))
    delete = s3_record("ObjectRemoved:Delete", key, "0055AED6DCD90281E6")
    test_event = {
        "Service": "Amazon S3",
        "Event": "s3:TestEvent",
        "Time": "2026-11-25T12:00:00.000Z",
        "Bucket": BUCKET,
        "RequestId": "5582815E1AEA5ADF",
        "HostId": "EXAMPLE",
    }
    return {
        "s3-put.json": {"Records": [put]},
        "s3-delete.json": {"Records": [delete]},
        "s3-put-unicode-key.json": {
            "Records": [s3_record("ObjectCreated:Put", unicode_key, "0055AED6DCD90281F0", len(photo))]
        },
        "s3-test-event.json": test_event,
        "sqs-s3-put.json": sqs_event({"Records": [put]}),
        "sqs-s3-delete.json": sqs_event({"Records": [delete]}),
        "sqs-s3-test-event.json": sqs_event(test_event),
        "sqs-s3-batch.json": sqs_event({"Records": [put]}, {"Records": [delete]}, test_event),
        "api-search-json.json": api_event(
            "POST",
            "/search",
            "/search",
            json.dumps({"image": b64, "top_k": 3}),
            headers={"Content-Type": "application/json"},
        ),
        "api-search-json-filters.json": api_event(
            "POST",
            "/search",
            "/search",
            json.dumps(
                {
                    "image": b64,
                    "top_k": 5,
                    "filters": {"category": ["Milk", "Oat-Milk"], "price": {"gte": 1.0, "lte": 2.5}},
                }
            ),
            headers={"Content-Type": "application/json"},
        ),
        "api-search-s3-key.json": api_event(
            "POST",
            "/search",
            "/search",
            json.dumps({"s3_key": "query-uploads/example.jpg"}),
            headers={"Content-Type": "application/json"},
        ),
        "api-search-binary.json": api_event(
            "POST",
            "/search",
            "/search",
            b64,
            headers={"Content-Type": "image/jpeg"},
            query={"top_k": "3", "brand": "Oatly"},
            binary=True,
        ),
        "api-search-multipart.json": api_event(
            "POST",
            "/search",
            "/search",
            base64.b64encode(multipart(photo)).decode(),
            headers={"Content-Type": "multipart/form-data; boundary=----visualsearch"},
            binary=True,
        ),
        "api-similar.json": api_event(
            "GET",
            "/products/Oatly-Oat-Milk/similar",
            "/products/{product_id}/similar",
            query={"top_k": "3"},
            path_params={"product_id": "Oatly-Oat-Milk"},
        ),
        "api-uploads.json": api_event(
            "POST",
            "/uploads",
            "/uploads",
            json.dumps({"content_type": "image/jpeg"}),
            headers={"Content-Type": "application/json"},
        ),
        "api-health.json": api_event("GET", "/health", "/health"),
        "api-openapi.json": api_event("GET", "/openapi.json", "/openapi.json"),
    }


def main() -> None:
    EVENTS.mkdir(exist_ok=True)
    for name, event in build().items():
        (EVENTS / name).write_text(json.dumps(event, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote events/{name}")


if __name__ == "__main__":
    main()
