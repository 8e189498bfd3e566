"""The local S3 endpoint, durable: moto's server, with every change it confirms on disk first.

moto keeps objects in memory. Here each request that changes objects (PUT, copy, DELETE,
multi-object delete, multipart completion, form POST) runs to its end inside moto, then the final
state of every key it touched is written to the data folder (a temporary file, fsync'd, renamed
over the old one, the folder fsync'd) or removed from it, and only then is the response sent.
A confirmed change is therefore never lost by a crash; at start the folder is loaded back into
moto. Each change is also handed to ``on_change`` (the notification bridge), in the order the
changes were made durable.

Which keys a request touched is recorded by wrapping moto's ``put_object`` / ``delete_object``
(every write path goes through them) while the request runs in its thread.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

_recording = threading.local()


@dataclass(frozen=True)
class Change:
    bucket: str
    key: str
    created: bool
    etag: str = ""
    size: int = 0


@dataclass(frozen=True)
class StoredObject:
    bucket: str
    key: str
    etag: str
    metadata: dict[str, str]
    value: bytes


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ObjectFolder:
    """Objects as files: ``<sha256(bucket/key)>.obj`` = 4-byte header length, JSON header, bytes."""

    def __init__(self, folder: Path):
        self.folder = folder

    def _path(self, bucket: str, key: str) -> Path:
        digest = hashlib.sha256(f"{bucket}/{key}".encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.obj"

    def write(self, obj: StoredObject) -> None:
        path = self._path(obj.bucket, obj.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = json.dumps(
            {"bucket": obj.bucket, "key": obj.key, "etag": obj.etag, "metadata": obj.metadata}
        ).encode()
        temporary = path.with_name(f"{path.name}.{threading.get_ident()}.tmp")
        with open(temporary, "wb") as handle:
            handle.write(struct.pack(">I", len(header)) + header)
            handle.write(obj.value)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        _fsync_dir(path.parent)

    def remove(self, bucket: str, key: str) -> None:
        path = self._path(bucket, key)
        if path.exists():
            path.unlink()
            _fsync_dir(path.parent)

    @staticmethod
    def read(path: Path) -> StoredObject:
        data = path.read_bytes()
        (length,) = struct.unpack(">I", data[:4])
        header = json.loads(data[4 : 4 + length])
        return StoredObject(
            header["bucket"], header["key"], header["etag"], header["metadata"], data[4 + length :]
        )

    def paths(self) -> list[Path]:
        return sorted(self.folder.glob("*/*.obj")) if self.folder.is_dir() else []

    def objects(self) -> Iterator[StoredObject]:
        for path in self.paths():
            yield self.read(path)


def _bucket_and_key(args: tuple, kwargs: dict) -> tuple[Any, Any]:
    bucket = kwargs.get("bucket_name", args[0] if args else None)
    key = kwargs.get("key_name", args[1] if len(args) > 1 else None)
    return bucket, key


def install_hooks() -> None:
    """Record (backend, bucket, key) of every put / delete made while a request is recorded."""
    from moto.s3.models import S3Backend

    if getattr(S3Backend, "_visual_search_hooked", False):
        return
    for name in ("put_object", "delete_object"):
        original = getattr(S3Backend, name)

        def hooked(self, *args, _original=original, **kwargs):
            result = _original(self, *args, **kwargs)
            touched = getattr(_recording, "touched", None)
            if touched is not None:
                touched.append((self, *_bucket_and_key(args, kwargs)))
            return result

        setattr(S3Backend, name, hooked)
    setattr(S3Backend, "_visual_search_hooked", True)  # noqa: B010 - not an attribute S3Backend declares


def backend() -> Any:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    return s3_backends[DEFAULT_ACCOUNT_ID]["global"]


def presigned_refusal(environ: dict) -> str | None:
    """Why S3 would refuse this presigned request (SigV4 query auth), or None.

    Only URLs signed with the stack's own credentials (those the search function presigns
    upload URLs with) are checked, so any other access key still works locally. A request whose
    signed headers differ (another Content-Type, or another Content-Length when it was signed)
    or whose URL has expired is refused, as S3 refuses it."""
    import hmac
    from datetime import datetime
    from urllib.parse import parse_qsl, quote

    from botocore.auth import S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    pairs = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    query = dict(pairs)
    if "X-Amz-Signature" not in query or "X-Amz-Credential" not in query:
        return None
    access_key, _, scope = query["X-Amz-Credential"].partition("/")
    if access_key != os.environ.get("AWS_ACCESS_KEY_ID"):
        return None
    try:
        signed_at = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        expires = int(query["X-Amz-Expires"])
        region = scope.split("/")[1]
    except (KeyError, ValueError, IndexError):
        return "AuthorizationQueryParametersError"
    if (datetime.now(UTC) - signed_at).total_seconds() > expires:
        return "Request has expired"
    wsgi_names = {"content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}
    headers = {}
    for name in query.get("X-Amz-SignedHeaders", "host").split(";"):
        headers[name] = environ.get(wsgi_names.get(name, "HTTP_" + name.upper().replace("-", "_")), "")
    path = environ.get("RAW_URI", "").partition("?")[0] or quote(environ.get("PATH_INFO", ""))
    unsigned = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in pairs if k != "X-Amz-Signature"
    )
    request = AWSRequest(
        environ["REQUEST_METHOD"], f"http://{headers.get('host', '')}{path}?{unsigned}", headers
    )
    request.context["timestamp"] = query["X-Amz-Date"]
    auth = S3SigV4QueryAuth(
        Credentials(access_key, os.environ.get("AWS_SECRET_ACCESS_KEY", "")), "s3", region, expires
    )
    signature = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
    if not hmac.compare_digest(signature, query["X-Amz-Signature"]):
        return "SignatureDoesNotMatch"
    return None


class DurableApp:
    """WSGI middleware: a changing request's response waits until its changes are on disk;
    presigned requests are checked as S3 checks them (:func:`presigned_refusal`)."""

    READ_ONLY = ("GET", "HEAD", "OPTIONS")

    def __init__(self, app: Any, folder: ObjectFolder, on_change: Callable[[Change], None]):
        self.app, self.folder, self.on_change = app, folder, on_change
        # one lock per stripe of keys: the read-then-write of one key is ordered, while
        # different keys are written (and fsync'd) in parallel
        self._locks = [threading.Lock() for _ in range(64)]

    def __call__(self, environ: dict, start_response: Callable) -> list[bytes]:
        refusal = presigned_refusal(environ)
        if refusal:
            length = environ.get("CONTENT_LENGTH") or "0"
            environ["wsgi.input"].read(int(length) if length.isdigit() else 0)  # keep the connection framed
            code = "AccessDenied" if "expired" in refusal else refusal
            message = f"<Error><Code>{code}</Code><Message>{refusal}</Message></Error>".encode()
            start_response("403 Forbidden", [("Content-Type", "application/xml")])
            return [message]
        if environ.get("REQUEST_METHOD") in self.READ_ONLY:
            return self.app(environ, start_response)
        captured: dict[str, Any] = {}
        early: list[bytes] = []

        def capture(status, headers, exc_info=None):
            captured.update(status=status, headers=headers)
            return early.append

        _recording.touched = []
        try:
            result = self.app(environ, capture)
            try:
                body = b"".join(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
            touched = _recording.touched
        finally:
            _recording.touched = None
        if touched:
            try:
                self.persist(touched)
            except OSError as exc:  # not durable: do not confirm it
                message = f"<Error><Code>InternalError</Code><Message>{exc}</Message></Error>".encode()
                start_response("500 Internal Server Error", [("Content-Type", "application/xml")])
                return [message]
        start_response(captured["status"], captured["headers"])
        return [b"".join(early) + body]

    def persist(self, touched: list[tuple[Any, str, str]]) -> None:
        from moto.s3.models import FakeKey

        seen = set()
        for s3, bucket_name, key_name in touched:
            if (bucket_name, key_name) in seen or bucket_name is None or key_name is None:
                continue
            seen.add((bucket_name, key_name))
            # read-then-write of a key under its lock: the last change made is the one on disk
            with self._locks[hash((bucket_name, key_name)) % len(self._locks)]:
                bucket = s3.buckets.get(bucket_name)
                fake = bucket.keys.get(key_name) if bucket is not None else None
                if isinstance(fake, FakeKey):
                    value = fake.value
                    etag = fake.etag.strip('"')
                    self.folder.write(StoredObject(bucket_name, key_name, etag, dict(fake.metadata), value))
                    self.on_change(Change(bucket_name, key_name, True, etag, len(value)))
                else:
                    self.folder.remove(bucket_name, key_name)
                    self.on_change(Change(bucket_name, key_name, False))


def restore(
    folder: ObjectFolder, ensure_bucket: Callable[[str], None], log: Callable[[str], None] = print
) -> int:
    """Load every stored object into moto (no notifications); returns how many."""
    paths = folder.paths()
    if not paths:
        return 0
    s3 = backend()
    buckets: set[str] = set()
    last = time.monotonic()
    for done, path in enumerate(paths, 1):
        obj = folder.read(path)
        if obj.bucket not in buckets:
            ensure_bucket(obj.bucket)
            buckets.add(obj.bucket)
        fake = s3.put_object(obj.bucket, obj.key, obj.value, etag=obj.etag, disable_notification=True)
        fake.set_metadata(obj.metadata)
        if time.monotonic() - last > 2:
            log(f"restoring the bucket: {done}/{len(paths)} objects")
            last = time.monotonic()
    return len(paths)


def migrate_mirror(old: Path, folder: ObjectFolder, log: Callable[[str], None] = print) -> int:
    """Objects of the earlier layout (``s3/<bucket>/<key>`` + ``.s3meta.json``) into the new one."""
    if not old.is_dir():
        return 0
    count = 0
    for meta in sorted(old.rglob("*.s3meta.json")):
        path = meta.with_name(meta.name[: -len(".s3meta.json")])
        if not path.is_file():
            continue
        bucket, _, key = path.relative_to(old).as_posix().partition("/")
        info = json.loads(meta.read_text())
        value = path.read_bytes()
        metadata = {f"x-amz-meta-{k}": v for k, v in (info.get("Metadata") or {}).items()}
        metadata["Content-Type"] = info.get("ContentType") or "binary/octet-stream"
        etag = hashlib.md5(value, usedforsecurity=False).hexdigest()
        folder.write(StoredObject(bucket, key, etag, metadata, value))
        count += 1
    old.rename(old.with_name(old.name + ".migrated"))
    log(f"moved {count} objects of {old} to {folder.folder}")
    return count


class DurableMotoServer:
    """moto's threaded server with :class:`DurableApp` in front of it."""

    def __init__(self, host: str, port: int, folder: ObjectFolder, on_change: Callable[[Change], None]):
        self.host, self.port, self.folder, self.on_change = host, port, folder, on_change
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        install_hooks()
        app = DurableApp(DomainDispatcherApplication(create_backend_app), self.folder, self.on_change)
        self._server = make_server(self.host, self.port, app, True, request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
        if self._thread:
            self._thread.join(5)
