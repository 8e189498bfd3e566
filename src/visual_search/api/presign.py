"""Presigned S3 URLs without making an S3 client, where botocore's URL is simple to build.

A boto3 S3 client costs ~60-100 ms of CPU to make (a botocore session, ``endpoints.json``, the
S3 service model and its endpoint rules): in a cold start, more than the whole first search,
which only signs its result URLs. ``LazyS3`` is the search function's ``LazyClient`` whose
``generate_presigned_url`` signs with botocore's own SigV4 query signer (``S3SigV4QueryAuth``,
what the client's method runs too), with credentials from botocore's credential chain
(environment, Lambda's container credentials endpoint under SnapStart, ...; refreshable ones
are frozen at each signing), on the URL the client would build:

- on AWS (the ``aws`` partition), virtual-hosted ``https://{bucket}.s3.amazonaws.com/{key}``:
  the global endpoint the client presigns with, the region in the signature;
- on a configured endpoint (``AWS_ENDPOINT_URL_S3``: the local S3 emulator), path style
  ``{endpoint}/{bucket}/{key}``.

Only that: any other configuration (no region, another partition, FIPS or dual-stack
endpoints, an ``s3`` section or setting in the AWS config, an endpoint with a path, a bucket
name with dots or upper case, another client method) is presigned by the full client, made
then. tests/integration/test_presign.py compares these URLs with the client's at a fixed time.
The client itself is made on first use of anything else (a search by ``s3_key`` reads the
upload with it).
"""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import quote, urlsplit

import botocore.session
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.configprovider import ConfiguredEndpointProvider
from botocore.exceptions import NoCredentialsError

from ..aws import LazyClient, s3_client

# Buckets the client addresses virtual-hosted on AWS: a DNS label, no dots, no "--" (the
# suffixes of S3 Express and Object Lambda names).
_PLAIN_BUCKET = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?!-)){1,61}[a-z0-9]")
# Regions of the aws partition (botocore's partitions.json regionRegex).
_AWS_REGION = re.compile(r"(us|eu|ap|sa|ca|me|af|il|mx)-\w+-\d+")
# The client methods signed here, by their HTTP method and the headers their params become.
_METHODS = {
    "get_object": ("GET", {}),
    "put_object": ("PUT", {"ContentType": "Content-Type", "ContentLength": "Content-Length"}),
}


class _Signing:
    """What signing needs, resolved once: the credentials (refreshed by botocore when they
    are refreshable), the region, and the URL prefix (None: virtual-hosted on AWS). A plain
    class: a dataclass's generated methods would cost the cold start ~0.5 ms to compile."""

    __slots__ = ("credentials", "endpoint", "region")

    def __init__(self, credentials: Any, region: str, endpoint: str | None):
        self.credentials = credentials
        self.region = region
        self.endpoint = endpoint


def _resolve(endpoint_url: str | None) -> _Signing | None:
    """The signing state for this environment, or None when the client's URL is not one built
    here (the client then presigns)."""
    session = botocore.session.get_session()
    region = session.get_config_variable("region")
    if not region or not _AWS_REGION.fullmatch(region):
        return None
    if session.get_config_variable("s3") or session.get_config_variable("use_fips_endpoint"):
        return None
    if session.get_config_variable("use_dualstack_endpoint"):
        return None
    if endpoint_url is None:
        if session.get_config_variable("ignore_configured_endpoint_urls") is not None:
            return None
        endpoint_url = ConfiguredEndpointProvider(
            full_config=session.full_config, scoped_config=session.get_scoped_config(), client_name="s3"
        ).provide()
    if endpoint_url is not None:
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or parts.path not in ("", "/") or parts.query:
            return None
        if not parts.hostname or "s3-accelerate" in parts.hostname:
            return None
        endpoint_url = f"{parts.scheme}://{parts.netloc}"
    credentials = session.get_credentials()
    if credentials is None:
        raise NoCredentialsError()
    return _Signing(credentials, region, endpoint_url)


class LazyS3(LazyClient):
    """A lazily made S3 client whose presigned GET and PUT URLs need no client (see above)."""

    def __init__(self, endpoint_url: str | None = None):
        super().__init__(lambda: s3_client(endpoint_url))
        self._endpoint_url = endpoint_url
        self._signing: _Signing | bool | None = False  # False: not resolved yet
        self._signing_lock = threading.Lock()

    def reset(self) -> None:
        """Drop the client and the credentials (after a SnapStart restore: resolved again)."""
        super().reset()
        self._signing = False

    def _resolved(self) -> _Signing | None:
        signing = self._signing
        if signing is False:
            with self._signing_lock:
                if self._signing is False:
                    self._signing = _resolve(self._endpoint_url)
                signing = self._signing
        return signing if isinstance(signing, _Signing) else None

    def generate_presigned_url(
        self,
        ClientMethod: str,
        Params: dict[str, Any] | None = None,
        ExpiresIn: int = 3600,
        HttpMethod: str | None = None,
    ) -> str:
        params = Params or {}
        url = self._signed(ClientMethod, params, ExpiresIn, HttpMethod)
        if url is None:
            url = self.get().generate_presigned_url(
                ClientMethod, Params=params, ExpiresIn=ExpiresIn, HttpMethod=HttpMethod
            )
        return url

    def _signed(
        self, client_method: str, params: dict[str, Any], expires: int, http_method: str | None
    ) -> str | None:
        method, header_params = _METHODS.get(client_method, ("", {}))
        bucket, key = params.get("Bucket"), params.get("Key")
        if not method or http_method not in (None, method) or set(params) - {"Bucket", "Key", *header_params}:
            return None
        if (
            not isinstance(bucket, str)
            or not isinstance(key, str)
            or not key
            or not _PLAIN_BUCKET.fullmatch(bucket)
        ):
            return None
        signing = self._resolved()
        if signing is None:
            return None
        path = quote(key.encode("utf-8"), safe="/~")
        if signing.endpoint is None:
            url = f"https://{bucket}.s3.amazonaws.com/{path}"
        else:
            url = f"{signing.endpoint}/{bucket}/{path}"
        headers = {name: str(params[param]) for param, name in header_params.items() if param in params}
        request = AWSRequest(method=method, url=url, headers=headers)
        frozen = signing.credentials.get_frozen_credentials()
        S3SigV4QueryAuth(frozen, "s3", signing.region, expires=expires).add_auth(request)
        return str(request.prepare().url)
