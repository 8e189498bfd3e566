"""Presigned URLs signed without an S3 client (visual_search.api.presign) are the URLs botocore's
own client presigns, character for character, at the same instant: on AWS (virtual-hosted,
the global endpoint) and on a configured endpoint (path style, the local S3 emulator), for
GET (result images) and PUT (uploads, with their signed headers); every configuration not
built there goes to the client. Credentials come from botocore's chain, Lambda's container
credentials endpoint included (SnapStart), refreshed when they are about to expire.
"""

from __future__ import annotations

import datetime
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest

from visual_search.api.presign import LazyS3
from visual_search.aws import s3_client

FIXED = datetime.datetime(2026, 12, 2, 1, 2, 3, tzinfo=datetime.UTC)
KEYS = [
    "Alpro-Blueberry-Soyghurt/Alpro-Blueberry-Soyghurt_001.jpg",
    "caffè latte/photo 1.jpg",
    "a+b/c~d é?x=1#y&z=%41",
    "/leading/slash//double/./dot/../x.png",
    "*!'()[]{}$,;=@:.jpg",
]
GETS = [("get_object", {"Bucket": "product-images", "Key": key}, 3600, None) for key in KEYS]
PUTS = [
    (
        "put_object",
        {"Bucket": "uploads-1", "Key": "uploads/9f.jpg", "ContentType": "image/jpeg", "ContentLength": 1234},
        300,
        "PUT",
    ),
    ("put_object", {"Bucket": "uploads-1", "Key": "uploads/9f.png", "ContentType": "image/png"}, 300, "PUT"),
]


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """No AWS config or credentials file, no AWS setting but those a test gives."""
    for name in (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_USE_FIPS_ENDPOINT",
        "AWS_USE_DUALSTACK_ENDPOINT",
        "AWS_S3_US_EAST_1_REGIONAL_ENDPOINT",
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret/example+key")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session/token+=")
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: FIXED)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # the client's session: made anew
    return monkeypatch


def both(cases: list) -> tuple[list[tuple[str, str]], LazyS3]:
    """(the client's URL, ours) for each case, ours from one LazyS3; and that LazyS3."""
    lazy, client = LazyS3(), s3_client()
    return [
        (
            client.generate_presigned_url(method, Params=params, ExpiresIn=ttl, HttpMethod=http),
            lazy.generate_presigned_url(method, Params=params, ExpiresIn=ttl, HttpMethod=http),
        )
        for method, params, ttl, http in cases
    ], lazy


@pytest.mark.parametrize(
    ("region", "endpoint"),
    [
        ("us-east-1", None),
        ("eu-west-1", None),
        ("ap-southeast-2", None),
        ("us-east-1", "http://localhost:4566"),  # the local stack's S3 (moto), by host name
        ("eu-west-1", "http://127.0.0.1:5000/"),
        ("us-east-1", "https://s3.example.internal:9000"),
    ],
)
def test_urls_signed_without_a_client_are_the_clients(aws_env, region, endpoint):
    aws_env.setenv("AWS_DEFAULT_REGION", region)
    if endpoint:
        aws_env.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    pairs, lazy = both(GETS + PUTS)
    for theirs, ours in pairs:
        assert ours == theirs
    assert not lazy.made  # signed here: no client was made for them
    query = parse_qs(urlsplit(pairs[0][1]).query)
    assert query["X-Amz-Credential"][0].startswith(f"AKIAEXAMPLE/20261202/{region}/s3/")
    assert query["X-Amz-Security-Token"] == ["session/token+="]
    assert parse_qs(urlsplit(pairs[len(GETS)][1]).query)["X-Amz-SignedHeaders"] == [
        "content-length;content-type;host"
    ]


@pytest.mark.parametrize(
    ("env", "bucket"),
    [
        ({}, "my.dotted.bucket"),  # path style on AWS
        ({}, "Upper-Case"),
        ({"AWS_USE_FIPS_ENDPOINT": "true"}, "product-images"),
        ({"AWS_USE_DUALSTACK_ENDPOINT": "true"}, "product-images"),
        ({"AWS_S3_US_EAST_1_REGIONAL_ENDPOINT": "regional"}, "product-images"),
        ({"AWS_DEFAULT_REGION": "cn-north-1"}, "product-images"),  # another partition
        ({"AWS_ENDPOINT_URL_S3": "http://localhost:4566/prefix"}, "product-images"),
    ],
)
def test_other_configurations_are_presigned_by_the_client(aws_env, env, bucket):
    aws_env.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name, value in env.items():
        aws_env.setenv(name, value)
    pairs, lazy = both([("get_object", {"Bucket": bucket, "Key": "a b/c.jpg"}, 3600, None)])
    assert pairs[0][1] == pairs[0][0]
    assert lazy.made  # not a URL built here


def test_a_method_or_parameter_not_built_here_goes_to_the_client(aws_env):
    aws_env.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    cases = [
        (
            "get_object",
            {"Bucket": "product-images", "Key": "k.jpg", "ResponseContentType": "image/png"},
            60,
            None,
        ),
        ("head_object", {"Bucket": "product-images", "Key": "k.jpg"}, 60, None),
    ]
    pairs, lazy = both(cases)
    assert [ours for _, ours in pairs] == [theirs for theirs, _ in pairs]
    assert lazy.made


class CredentialsEndpoint:
    """Lambda's container credentials endpoint (AWS_CONTAINER_CREDENTIALS_FULL_URI, as under
    SnapStart): serves the current credentials, each expiring within botocore's refresh window
    so that every signing asks again."""

    def __init__(self):
        self.keys = ["ASIAFIRST"]
        self.served = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                assert self.headers.get("Authorization") == "lambda-token"
                expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)
                body = json.dumps(
                    {
                        "AccessKeyId": endpoint.keys[-1],
                        "SecretAccessKey": f"secret-of-{endpoint.keys[-1]}",
                        "Token": f"token-of-{endpoint.keys[-1]}",
                        "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    }
                ).encode()
                endpoint.served += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/2018-06-01/credentials"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_container_credentials_are_taken_fresh_at_each_signing(aws_env):
    aws_env.delenv("AWS_ACCESS_KEY_ID")
    aws_env.delenv("AWS_SECRET_ACCESS_KEY")
    aws_env.delenv("AWS_SESSION_TOKEN")
    aws_env.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    endpoint = CredentialsEndpoint()
    aws_env.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.url)
    aws_env.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "lambda-token")
    try:
        lazy = LazyS3()
        params = {"Bucket": "product-images", "Key": "k.jpg"}
        first = parse_qs(urlsplit(lazy.generate_presigned_url("get_object", Params=params)).query)
        endpoint.keys.append("ASIASECOND")  # Lambda renewed the function's credentials
        url = lazy.generate_presigned_url("get_object", Params=params)
        assert url == s3_client().generate_presigned_url("get_object", Params=params)
        second = parse_qs(urlsplit(url).query)
    finally:
        endpoint.close()
    assert first["X-Amz-Credential"][0].startswith("ASIAFIRST/")
    assert first["X-Amz-Security-Token"] == ["token-of-ASIAFIRST"]
    assert second["X-Amz-Credential"][0].startswith("ASIASECOND/")
    assert second["X-Amz-Security-Token"] == ["token-of-ASIASECOND"]
    assert not lazy.made


def test_after_reset_the_credentials_are_resolved_again(aws_env):
    aws_env.setenv("AWS_DEFAULT_REGION", "us-east-1")
    lazy = LazyS3()
    params = {"Bucket": "product-images", "Key": "k.jpg"}
    before = lazy.generate_presigned_url("get_object", Params=params)
    aws_env.setenv("AWS_ACCESS_KEY_ID", "AKIARESTORED")  # what a restored instance is given
    assert lazy.generate_presigned_url("get_object", Params=params) == before  # resolved once
    lazy.reset()
    assert "AKIARESTORED%2F" in lazy.generate_presigned_url("get_object", Params=params)


def test_without_credentials_signing_fails_as_the_clients_does(aws_env):
    from botocore.exceptions import NoCredentialsError

    aws_env.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        aws_env.delenv(name)
    params = {"Bucket": "product-images", "Key": "k.jpg"}
    with pytest.raises(NoCredentialsError):
        s3_client().generate_presigned_url("get_object", Params=params)
    with pytest.raises(NoCredentialsError):
        LazyS3().generate_presigned_url("get_object", Params=params)
