"""AWS clients, configured once: SigV4 (presigned URLs sign the content type), standard
retries, and timeouts so a slow S3 call fails over to a retry instead of hanging a batch.
``AWS_ENDPOINT_URL_S3`` (read by boto3 itself) points them at a local S3 emulator.

Also the one place that reads botocore's errors: what S3 said (its error code, its HTTP
status) and what that means to a caller (the object is missing, the request was refused).
"""

from __future__ import annotations

import ipaddress
import os
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config

S3_CONFIG = Config(
    signature_version="s3v4",
    retries={"mode": "standard", "max_attempts": 3},
    connect_timeout=5,
    read_timeout=30,
    max_pool_connections=32,
)
# Error codes meaning the object (or its bucket) is not there; HeadObject says just "404".
MISSING_CODES = ("NoSuchKey", "404", "NotFound", "NoSuchBucket")


# Where boto3 would find credentials without asking the network (the instance metadata service).
CREDENTIAL_SOURCES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
)


def s3_client(endpoint_url: str | None = None) -> Any:
    """An S3 client; against a loopback endpoint (the local stack's S3, which accepts any
    signature) it works without AWS credentials, with placeholder keys when none are set."""
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    keys: dict[str, str] = {}
    if endpoint and is_loopback(endpoint) and not _credentials_configured():
        keys = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
    return boto3.client("s3", config=S3_CONFIG, endpoint_url=endpoint_url, **keys)


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _credentials_configured() -> bool:
    """Whether boto3 finds credentials in the environment or the shared files (the network
    lookups, instance metadata and container endpoint, are not asked)."""
    if any(os.environ.get(name) for name in CREDENTIAL_SOURCES):
        return True
    import botocore.session

    resolver = botocore.session.get_session().get_component("credential_provider")
    for network in ("iam-role", "container-role"):
        try:
            resolver.remove(network)
        except Exception:  # not in this botocore's chain
            pass
    try:
        return resolver.load_credentials() is not None
    except Exception:  # a broken profile: let boto3 report it as it would
        return True


def error_code(exc: BaseException) -> str:
    """S3's error code of a botocore ClientError ("" for other errors: connection, timeout)."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def error_status(exc: BaseException) -> int:
    """The HTTP status S3 answered with (0 when there was no answer)."""
    response = getattr(exc, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def is_missing(exc: BaseException) -> bool:
    """S3 said the object or its bucket does not exist (by its error code)."""
    return error_code(exc) in MISSING_CODES


def is_refused(exc: BaseException) -> bool:
    """S3 refused the request itself (a 4xx other than throttling): retrying cannot help."""
    status = error_status(exc)
    return 400 <= status < 500 and status != 429


class LazyClient:
    """A boto3 client made on first use, and made again after ``reset()``.

    The functions hold one of these instead of a client: a request that needs no S3 (health,
    facets, a search without result URLs) does not pay for creating one, and after a SnapStart
    restore ``reset()`` drops the client whose connections belong to the snapshot."""

    def __init__(self, factory: Callable[[], Any] = s3_client):
        self._factory = factory
        self._client: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._factory()
                client = self._client
        return client

    @property
    def made(self) -> bool:
        return self._client is not None

    def reset(self) -> None:
        self._client = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)
