"""`visual-search dev`: S3 emulator + notifications + ingest + REST API + search page, on
127.0.0.1, over an embedded Qdrant folder kept between runs."""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import StoreUnavailableError
from ..folders import DEMO_CATALOG, scan

UPLOAD_PREFIX = "query-uploads/"


class StackError(RuntimeError):
    """The stack cannot start (port taken, data folder locked, ...): the message says why."""


@dataclass
class StackOptions:
    host: str = "127.0.0.1"
    api_port: int = 8000
    s3_port: int = 9000
    data_dir: Path = Path(".data")
    bucket: str = "product-images"
    demo: bool = True
    demo_folder: Path = DEMO_CATALOG
    verbose: bool = False


def check_port(host: str, port: int, flag: str) -> int:
    """Bind-test a port (0 picks a free one); a clear error if it is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StackError(
                    f"port {port} on {host} is already in use; stop what holds it "
                    f"or choose another with {flag}"
                ) from None
            raise StackError(f"cannot listen on {host}:{port}: {exc}") from None
        return sock.getsockname()[1]


class DevStack:
    def __init__(self, options: StackOptions, log: Callable[[str], None] = print):
        self.options = options
        self.log = log
        self.moto = None
        self.bridge = None
        self.gateway = None
        self.ingest = None
        self.s3: Any = None
        self.s3_url = ""
        self.stopped = threading.Event()

    # -- start -------------------------------------------------------------------------------

    def _environment(self) -> None:
        o = self.options
        env = {
            "AWS_ENDPOINT_URL_S3": self.s3_url,
            "AWS_DEFAULT_REGION": "us-east-1",
            "BUCKET": o.bucket,
            "UPLOAD_BUCKET": o.bucket,
            "UPLOAD_PREFIX": UPLOAD_PREFIX,
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_SERVICE_NAME": "visual-search-local",
        }
        os.environ.update(env)
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
        if not o.verbose:
            os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
        if not os.environ.get("QDRANT_URL"):
            os.environ["QDRANT_PATH"] = str(o.data_dir / "qdrant")
        # The service logger was made when this module imported the package: apply the level
        # and the service name to it now.
        from ..observability import logger

        logger.setLevel(os.environ.get("POWERTOOLS_LOG_LEVEL", "INFO"))
        logger.append_keys(service=env["POWERTOOLS_SERVICE_NAME"])

    def _start_s3(self) -> None:
        import logging

        from moto.server import ThreadedMotoServer

        if not self.options.verbose:  # the emulator logs every request otherwise
            logging.getLogger("werkzeug").setLevel(logging.ERROR)
        port = check_port(self.options.host, self.options.s3_port, "--s3-port")
        self.moto = ThreadedMotoServer(ip_address=self.options.host, port=port, verbose=False)
        self.moto.start()
        self.s3_url = f"http://{self.options.host}:{port}"

    def _load_functions(self):
        from ..lambdas import load_function

        try:
            ingest = load_function("ingest")
        except StoreUnavailableError as exc:
            raise StackError(f"{exc} (or pass --data-dir)") from None
        search = load_function("search", fresh_catalog=False)  # the same catalogue and client
        return ingest, search

    def start(self) -> None:
        from ..aws import s3_client
        from ..sync import Syncer
        from .bridge import BucketMirror, NotificationBridge
        from .gateway import Gateway

        o = self.options
        o.data_dir.mkdir(parents=True, exist_ok=True)
        api_port = check_port(o.host, o.api_port, "--api-port")
        self._start_s3()
        self._environment()
        self.s3 = s3_client()
        self.s3.create_bucket(Bucket=o.bucket)
        mirror = BucketMirror(self.s3, o.bucket, o.data_dir / "s3")
        restored = mirror.restore()
        self.log(
            f"loading the model and opening the catalogue in {os.environ.get('QDRANT_URL') or os.environ['QDRANT_PATH']} ..."
        )
        self.ingest, search = self._load_functions()
        drift = Syncer(self.ingest.ingestor).reconcile(o.bucket, "", batch=32)
        if restored or drift.indexed or drift.deleted:
            self.log(
                f"bucket restored from {o.data_dir / 's3'}: {restored} objects; catalogue "
                f"repaired: {drift.indexed} indexed, {drift.deleted} removed"
            )
        self.bridge = NotificationBridge(
            self.s3,
            o.bucket,
            self.ingest.handler,
            exclude_prefixes=(UPLOAD_PREFIX,),
            mirror=mirror,
            log=self.log,
        )
        self.bridge.snapshot()
        self.bridge.start()
        try:
            self.gateway = Gateway(search.handler, o.host, api_port, log=self.log)
        except OSError as exc:
            raise StackError(f"cannot listen on {o.host}:{api_port}: {exc}") from None
        self.gateway.start()
        if o.demo:
            self.upload_demo()

    def upload_demo(self) -> None:
        """Put the demo catalogue into the bucket; the normal ingest path indexes it."""
        from ..ingest import bare_etag
        from ..sync import md5_etag

        images = scan(self.options.demo_folder)
        present = {k: e for k, (e, _) in self.bridge.listing().items()}
        data = {img.key: img.path.read_bytes() for img in images}
        todo = [
            img for img in images if bare_etag(present.get(f"catalog/{img.key}")) != md5_etag(data[img.key])
        ]
        if not todo:
            self.log(f"demo catalogue: {len(images)} images already in the bucket")
            return
        for img in todo:
            metadata = {k: v for k, v in img.metadata.items() if v}
            self.s3.put_object(
                Bucket=self.options.bucket,
                Key=f"catalog/{img.key}",
                Body=data[img.key],
                Metadata=metadata,
                ContentType=img.content_type,
            )
        self.log(
            f"demo catalogue: uploaded {len(todo)} images to s3://{self.options.bucket}/catalog/;"
            f" indexing through the ingest function ..."
        )
        started = time.monotonic()
        store = self.ingest.ingestor.catalog.store
        refs = [(self.options.bucket, f"catalog/{img.key}") for img in images]
        while time.monotonic() - started < 120:  # until every demo image is in the catalogue
            if len(store.get_images(refs)) == len(refs) or self.bridge.dead_letters:
                break
            time.sleep(0.1)
        self.log(
            f"demo catalogue indexed in {time.monotonic() - started:.1f} s "
            f"({store.count()} images in the catalogue)"
        )

    # -- banner, run, stop -------------------------------------------------------------------

    def banner(self) -> str:
        o, api = self.options, self.gateway.url
        sample = next(iter(sorted(Path(o.demo_folder).rglob("*.jpg"))), Path("photo.jpg"))
        return f"""
Visual product search is running locally.

  search page   {api}/
  REST API      {api}   (GET {api}/health, POST {api}/search, GET {api}/openapi.json)
  S3 endpoint   {self.s3_url}   bucket: {o.bucket}   (any access key works)
  catalogue     {os.environ.get("QDRANT_URL") or os.environ.get("QDRANT_PATH")} (embedded Qdrant, kept between runs)

Try it:
  curl -s -X POST '{api}/search?top_k=3' -H 'Content-Type: image/jpeg' --data-binary @{sample}
  AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local aws --endpoint-url {self.s3_url} \\
      s3 cp my-photo.jpg s3://{o.bucket}/catalog/my-sku/front.jpg --metadata category=Milk,brand=Acme,price=1.99

Uploads and deletions in the bucket reach the catalogue within a second. Ctrl-C stops.
"""

    def run(self) -> int:
        def interrupt_start(signum, frame):
            raise KeyboardInterrupt  # leave start() at once; stop() below cleans up

        def on_signal(signum, frame):
            self.stopped.set()

        signal.signal(signal.SIGINT, interrupt_start)
        signal.signal(signal.SIGTERM, interrupt_start)
        try:
            self.start()
            signal.signal(signal.SIGINT, on_signal)
            signal.signal(signal.SIGTERM, on_signal)
            self.log(self.banner())
            sys.stdout.flush()
            while not self.stopped.wait(0.5):
                pass
            self.log("stopping ...")
        finally:
            self.stop()
        self.log("stopped")
        return 0

    def stop(self) -> None:
        if self.gateway:
            self.gateway.stop()
        if self.bridge:
            self.bridge.stop()
            if self.bridge.dead_letters:
                self.log(f"{len(self.bridge.dead_letters)} notifications could not be delivered")
        if self.ingest:
            self.ingest.ingestor.catalog.store.close()  # releases the data folder's lock
        if self.moto:
            self.moto.stop()
