"""The local stack's object folder and presigned-URL check, without a server."""

from __future__ import annotations

import io
import json
from urllib.parse import unquote, urlsplit

import boto3
import pytest

from visual_search.aws import S3_CONFIG
from visual_search.dev.devstack.durable_s3 import (
    ObjectFolder,
    StoredObject,
    migrate_mirror,
    presigned_refusal,
)


def test_objects_round_trip_and_removal(tmp_path):
    folder = ObjectFolder(tmp_path / "objects")
    obj = StoredObject("b", "catalog/a b/é.jpg", "abc", {"x-amz-meta-price": "1,29"}, b"\xff\xd8data")
    folder.write(obj)
    folder.write(StoredObject("b", "catalog/a", "def", {}, b"other"))  # a key that is a prefix of another
    assert sorted(o.key for o in folder.objects()) == ["catalog/a", "catalog/a b/é.jpg"]
    assert next(o for o in folder.objects() if o.key == obj.key) == obj
    assert not list((tmp_path / "objects").rglob("*.tmp"))  # renamed into place
    folder.remove("b", obj.key)
    folder.remove("b", "never-there")
    assert [o.key for o in folder.objects()] == ["catalog/a"]


def test_the_earlier_mirror_layout_is_moved_over(tmp_path):
    old = tmp_path / "s3"
    (old / "product-images" / "catalog" / "p1").mkdir(parents=True)
    (old / "product-images" / "catalog" / "p1" / "a.jpg").write_bytes(b"jpeg")
    (old / "product-images" / "catalog" / "p1" / "a.jpg.s3meta.json").write_text(
        json.dumps({"ContentType": "image/jpeg", "Metadata": {"brand": "Arla"}})
    )
    folder = ObjectFolder(tmp_path / "objects")
    assert migrate_mirror(old, folder, log=lambda m: None) == 1
    (moved,) = folder.objects()
    assert (moved.bucket, moved.key, moved.value) == ("product-images", "catalog/p1/a.jpg", b"jpeg")
    assert moved.metadata == {"x-amz-meta-brand": "Arla", "Content-Type": "image/jpeg"}
    assert not old.exists() and (tmp_path / "s3.migrated").is_dir()


@pytest.fixture
def presign(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "local")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "local")
    # its own session: boto3's default one may hold credentials an earlier test resolved
    s3 = boto3.session.Session().client(
        "s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1", config=S3_CONFIG
    )

    def environ(params: dict, content_type: str, length: int, key: str = "query-uploads/a b+c.jpg") -> dict:
        url = s3.generate_presigned_url(
            "put_object", Params={"Bucket": "product-images", "Key": key, **params}, HttpMethod="PUT"
        )
        parts = urlsplit(url)
        return {
            "REQUEST_METHOD": "PUT",
            "QUERY_STRING": parts.query,
            "RAW_URI": f"{parts.path}?{parts.query}",
            "PATH_INFO": unquote(parts.path),
            "HTTP_HOST": parts.netloc,
            "CONTENT_TYPE": content_type,
            "CONTENT_LENGTH": str(length),
            "wsgi.input": io.BytesIO(b"x" * length),
        }

    return environ


def test_a_presigned_put_is_checked_as_s3_checks_it(presign, monkeypatch):
    assert presigned_refusal(presign({"ContentType": "image/jpeg"}, "image/jpeg", 10)) is None
    assert (
        presigned_refusal(presign({"ContentType": "image/jpeg"}, "image/png", 10)) == "SignatureDoesNotMatch"
    )
    sized = {"ContentType": "image/jpeg", "ContentLength": 10}
    assert presigned_refusal(presign(sized, "image/jpeg", 10)) is None
    assert presigned_refusal(presign(sized, "image/jpeg", 11)) == "SignatureDoesNotMatch"
    environ = presign({"ContentType": "image/jpeg"}, "image/png", 10)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "someone-else")  # not the stack's key: not checked
    assert presigned_refusal(environ) is None
    assert presigned_refusal({"REQUEST_METHOD": "PUT", "QUERY_STRING": ""}) is None  # not presigned
