"""AWS clients, configured once: SigV4 (presigned URLs sign the content type), standard
retries, and timeouts so a slow S3 call fails over to a retry instead of hanging a batch.
``AWS_ENDPOINT_URL_S3`` (read by boto3 itself) points them at a local S3 emulator."""

from __future__ import annotations

import boto3
from botocore.config import Config

S3_CONFIG = Config(
    signature_version="s3v4",
    retries={"mode": "standard", "max_attempts": 3},
    connect_timeout=5,
    read_timeout=30,
    max_pool_connections=32,
)


def s3_client():
    return boto3.client("s3", config=S3_CONFIG)
