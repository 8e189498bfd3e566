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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ModelMismatchError, ModelUnavailableError, StoreUnavailableError
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
    """Bind-test a port (0 picks a free one); a clear error if it is taken. With SO_REUSEADDR, as
    the servers bind, so the TIME_WAIT connections of a stack just stopped do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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


def lock_data_dir(data_dir: Path) -> Any:
    """Take the data folder for this stack (held until the process ends or :meth:`DevStack.stop`),
    before anything slow: a second stack, or another process holding the embedded Qdrant folder,
    is refused at once."""
    import fcntl

    data_dir.mkdir(parents=True, exist_ok=True)
    in_use = StackError(
        f"the data folder {data_dir} is in use by another process (a running `visual-search dev`?): "
        f"stop it, or pass another --data-dir"
    )
    handle = open(data_dir / ".stack.lock", "a+")  # noqa: SIM115 - held open: the lock lives as long
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise in_use from None
    qdrant_lock = data_dir / "qdrant" / ".lock"
    if not os.environ.get("QDRANT_URL") and qdrant_lock.is_file():
        with open(qdrant_lock, "r+") as probe:  # embedded Qdrant's own lock (flock, as portalocker)
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(probe, fcntl.LOCK_UN)
            except OSError:
                handle.close()
                raise in_use from None
    return handle


class DevStack:
    def __init__(self, options: StackOptions, log: Callable[[str], None] = print):
        self.options = options
        self.log = log
        self.moto: Any = None
        self.bridge: Any = None
        self.gateway: Any = None
        self.ingest: Any = None
        self.refit: Any = None  # catalogue adaptation once changes settle (refits.SettledRefit)
        self.models: Any = None  # model changes asked through the gateway (devstack.models)
        self.s3: Any = None
        self.s3_url = ""
        self.stopped = threading.Event()
        self.lock: Any = None
        self.outcomes: dict[str, int] = {}
        self._outcomes_lock = threading.Lock()
        self._early: list[Any] = []  # changes confirmed before the bridge exists (during start-up)

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
        os.environ.setdefault("MODELS_BUCKET", o.bucket)  # the stack's registry: its bucket
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
        if not o.verbose:
            os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
        if not os.environ.get("QDRANT_URL"):
            os.environ["QDRANT_PATH"] = str(o.data_dir / "qdrant")
        # The service logger was made when this module imported the package: apply the level
        # and the service name to it now.
        from ...observability import logger

        logger.setLevel(os.environ.get("POWERTOOLS_LOG_LEVEL", "INFO"))
        logger.append_keys(service=env["POWERTOOLS_SERVICE_NAME"])

    def _start_s3(self) -> None:
        import logging

        from .durable_s3 import DurableMotoServer, ObjectFolder

        if not self.options.verbose:  # the emulator logs every request otherwise
            logging.getLogger("werkzeug").setLevel(logging.ERROR)
        port = check_port(self.options.host, self.options.s3_port, "--s3-port")
        self.objects = ObjectFolder(self.options.data_dir / "s3-objects")
        self.moto = DurableMotoServer(self.options.host, port, self.objects, self._on_change)
        self.moto.start()
        self.s3_url = self.moto.url

    def _on_change(self, change) -> None:
        with self._outcomes_lock:
            if self.bridge is None:
                self._early.append(change)
                return
        self.bridge.notify(change)

    def _load_functions(self):
        from ..lambdas import load_function

        try:
            ingest = load_function("ingest")
        except StoreUnavailableError as exc:
            raise StackError(f"{exc} (or pass --data-dir)") from None
        search = load_function("search", fresh_catalog=False)  # the same catalogue and client
        return ingest, search

    def _count_outcomes(self, ingestor) -> None:
        """Count what the ingest function did (indexed, deleted, failed, ...) for progress lines:
        every batch goes through ``apply_batch`` (``apply`` and the handler's router alike)."""
        apply_batch = ingestor.apply_batch

        def counted(changes):
            batch = apply_batch(changes)
            with self._outcomes_lock:
                for outcome in batch.outcomes:
                    self.outcomes[outcome.status] = self.outcomes.get(outcome.status, 0) + 1
            return batch

        ingestor.apply_batch = counted

    def _phase(self, text: str) -> None:
        self.log(text)
        if self.gateway:
            self.gateway.phase = text

    def _restore(self) -> int:
        from .durable_s3 import migrate_mirror, restore

        o = self.options
        migrate_mirror(o.data_dir / "s3", self.objects, self.log)
        count = len(self.objects.paths())
        if count:
            self._phase(f"restoring the bucket from {self.objects.folder}: {count} objects ...")

        def ensure_bucket(name: str) -> None:
            if name != o.bucket:
                self.s3.create_bucket(Bucket=name)

        return restore(self.objects, ensure_bucket, self._phase)

    def _progress_phase(self, text: Callable[[int], str], every_s: float = 2.0) -> Callable[[int], None]:
        """A progress callback for bulk start-up work: adds up the counts it is given and shows
        ``text(total)`` as the phase (in the log and in /health) at most every ``every_s``."""
        total, shown_at = 0, time.monotonic()

        def progress(n: int) -> None:
            nonlocal total, shown_at
            total += n
            if time.monotonic() - shown_at > every_s:
                self._phase(text(total))
                shown_at = time.monotonic()

        return progress

    def _repair(self) -> None:
        """Start-up reconciliation: index what the bucket holds and the catalogue lacks (changes
        confirmed before a crash and not yet delivered), drop points whose object is gone and
        points of other buckets (this catalogue serves this stack's bucket only)."""
        from ...ingest.pipeline import Ingestor
        from ...ops.sync import Syncer

        o = self.options
        ingestor: Ingestor = self.ingest.ingestor
        found = [(h.payload.get("bucket"), h.payload.get("key")) for h in ingestor.catalog.images_in()]
        foreign = [(str(b), str(k)) for b, k in found if b != o.bucket and b and k]
        if foreign:
            ingestor.catalog.remove(foreign)
            self.log(f"removed {len(foreign)} points of other buckets than {o.bucket!r} from the catalogue")
        progress = self._progress_phase(lambda n: f"repairing the catalogue: {n} changes applied ...")
        self._phase("comparing the bucket with the catalogue ...")
        drift = Syncer(ingestor, progress).reconcile(o.bucket, "", batch=32)
        if drift.indexed or drift.deleted or drift.failed:
            self.log(
                f"catalogue repaired: {drift.indexed} indexed, {drift.deleted} removed, {drift.failed} failed"
            )

    def _reindex_for_model(self, why: ModelMismatchError | ModelUnavailableError) -> None:
        """The catalogue was built by another model than the one loaded (the default model
        changed, or ``MODEL_DIR`` did) and the stack's registry does not hold that model:
        re-index it from this stack's bucket, which holds every catalogue image, as
        ``visual-search reindex`` would. Searches wait: nothing answers until it is done."""
        from ...ops.sync import reindex

        catalog = self.ingest.ingestor.catalog
        if isinstance(why, ModelMismatchError):
            built_by = f"the catalogue was built by {why.collection_model}, the loaded model is {why.model}"
        else:
            current = catalog.physical_collection()
            model = catalog.metadata_of(current).get("model_id") if current else None
            built_by = (
                f"the catalogue was built by {model}, which the stack's registry (its bucket) does "
                f"not hold ({why})"
            )
        self._phase(f"{built_by}: re-indexing the bucket with {catalog.layer_model.model_id} ...")
        model_id = catalog.layer_model.model_id
        progress = self._progress_phase(lambda n: f"re-indexing with {model_id}: {n} images ...")
        result = reindex(catalog, self.s3, [(self.options.bucket, "")], progress=progress, log=self.log)
        counts: dict[str, Any] = next(iter(result["sources"].values()), {})
        self.log(
            f"re-indexed with {model_id}: {counts.get('indexed', 0)} indexed, "
            f"{counts.get('failed', 0)} failed; collection {result.get('collection', catalog.collection)}"
        )

    def start(self) -> None:
        from ...aws import s3_client
        from ..lambdas import LambdaContext
        from .bridge import NotificationBridge
        from .gateway import Gateway

        o = self.options
        self.lock = lock_data_dir(o.data_dir)
        api_port = check_port(o.host, o.api_port, "--api-port")
        try:
            search_context = LambdaContext("visual-search-local-search", "local")
            self.gateway = Gateway(None, o.host, api_port, log=self.log, context=search_context)
        except OSError as exc:
            raise StackError(f"cannot listen on {o.host}:{api_port}: {exc}") from None
        self.gateway.start()  # /health says "starting" from now on
        self._start_s3()
        self._environment()
        self.s3 = s3_client()
        self.s3.create_bucket(Bucket=o.bucket)
        restored = self._restore()
        fresh = restored == 0 and not (o.data_dir / "qdrant").exists()
        self._phase(
            f"loading the model and opening the catalogue in "
            f"{os.environ.get('QDRANT_URL') or os.environ['QDRANT_PATH']} ..."
        )
        self.ingest, search = self._load_functions()
        self._count_outcomes(self.ingest.ingestor)
        try:
            # the model the catalogue names, loaded now: the layer's, or its registry copy
            self.ingest.ingestor.catalog.spaces.reload()
            self._repair()
        except (ModelMismatchError, ModelUnavailableError) as exc:
            self._reindex_for_model(exc)
            self._repair()
        from .models import ModelOperations

        self.models = ModelOperations(self.ingest.ingestor.catalog, self.s3, o.bucket, self.log)
        self.bridge = NotificationBridge(
            self.s3,
            o.bucket,
            self.ingest.handler,
            exclude_prefixes=(UPLOAD_PREFIX,),
            log=self.log,
            context=LambdaContext("visual-search-local-ingest", "local"),
        )
        with self._outcomes_lock:
            for change in self._early:
                self.bridge.notify(change)
            self._early.clear()
        self.bridge.start()
        self._start_refit()
        self.gateway.ready(search.handler, self.health_extra, admin=self.models.handle)
        threading.Thread(target=self._report_progress, name="progress", daemon=True).start()
        from .running import write_marker

        write_marker(o.data_dir, self.gateway.url, self.s3_url, o.bucket)
        if o.demo and fresh:
            self.upload_demo()

    def _start_refit(self) -> None:
        """Refit the catalogue's projection once the bucket's changes have settled, as the
        deployed maintenance function does on its schedule (ADAPT=false turns it off)."""
        from ...adaptation.refits import SettledRefit
        from ...config import get_settings

        settings = get_settings().adapt
        if settings.auto:
            bridge = self.bridge
            from ...feedback import reviewer

            catalog = self.ingest.ingestor.catalog
            feedback = get_settings().feedback
            self.refit = SettledRefit(
                catalog,
                settings,
                busy=lambda: bridge.pending() > 0 or self.models.busy(),
                log=self.log,
                review=reviewer(catalog, feedback, self.log),
            )
            self.refit.start()

    def health_extra(self) -> dict:
        return {"backlog": self.bridge.backlog()} if self.bridge else {}

    def progress_line(self) -> str:
        backlog = self.bridge.backlog()
        with self._outcomes_lock:
            counts = dict(self.outcomes)
        return (
            f"indexing: {counts.get('indexed', 0)} indexed, {counts.get('deleted', 0)} deleted, "
            f"{backlog['queued'] + backlog['in_flight']} queued, {counts.get('failed', 0)} failed, "
            f"{backlog['dead_letters']} dead letters"
        )

    def _report_progress(self, every_s: float = 3.0) -> None:
        """A progress line every few seconds while notifications are waiting (bulk loads), and
        one more when the counts changed since the last tick (so a load that drained between
        two ticks still reports what it did)."""
        last = self.progress_line()
        while not self.stopped.wait(every_s):
            line = self.progress_line()
            if self.bridge.pending() or line != last:
                self.log(line)
            last = line

    def upload_demo(self) -> None:
        """Put the demo catalogue into the bucket (a fresh data folder only: what a user deletes
        stays deleted); the normal ingest path indexes it."""
        from ..upload import object_key, upload_folder

        images = scan(self.options.demo_folder)
        report = upload_folder(self.s3, self.options.demo_folder, self.options.bucket, "catalog")
        self.log(
            f"demo catalogue: uploaded {report.uploaded} images to s3://{self.options.bucket}/catalog/"
            f"{f' ({report.failed} failed)' if report.failed else ''}; "
            f"indexing through the ingest function ..."
        )
        started = time.monotonic()
        catalog = self.ingest.ingestor.catalog
        refs = [(self.options.bucket, object_key("catalog", img)) for img in images]
        while time.monotonic() - started < 120:  # until every demo image is in the catalogue
            if len(catalog.stored(refs)) == len(refs) or self.bridge.dead_letters:
                break
            time.sleep(0.1)
        self.log(
            f"demo catalogue indexed in {time.monotonic() - started:.1f} s "
            f"({catalog.count()} images in the catalogue)"
        )

    # -- banner, run, stop -------------------------------------------------------------------

    def banner(self) -> str:
        o, api = self.options, self.gateway.url
        sample = next(iter(sorted(Path(o.demo_folder).rglob("*.jpg"))), Path("photo.jpg"))
        where = os.environ.get("QDRANT_URL") or os.environ.get("QDRANT_PATH")
        target = f"s3://{o.bucket}/catalog/my-sku/front.jpg"
        return f"""
Visual product search is running locally.

  search page   {api}/
  REST API      {api}   (GET {api}/health, POST {api}/search, GET {api}/openapi.json)
  S3 endpoint   {self.s3_url}   bucket: {o.bucket}   (any access key works)
  catalogue     {where} (embedded Qdrant, kept between runs)

Try it:
  curl -s -X POST '{api}/search?top_k=3' -H 'Content-Type: image/jpeg' --data-binary @{sample}
  AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local aws --endpoint-url {self.s3_url} \\
      s3 cp my-photo.jpg {target} --metadata category=Milk,brand=Acme,price=1.99

Every upload and deletion is on disk before the S3 endpoint confirms it, and reaches the catalogue
asynchronously: one image in well under a second; bulk loads index at the speed of the model
(a progress line every few seconds, the backlog in GET /health). Ctrl-C stops.
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
        self.stopped.set()
        if self.refit:
            self.refit.stop()
        if self.gateway:
            self.gateway.stop()
        if self.bridge:
            self.bridge.stop()
            if self.bridge.dead_letters:
                self.log(f"{len(self.bridge.dead_letters)} notifications could not be delivered")
        if self.ingest:
            self.ingest.ingestor.catalog.close()  # releases the data folder's lock
        if self.moto:
            self.moto.stop()
        if self.lock:
            from .running import remove_marker

            remove_marker(self.options.data_dir)
            self.lock.close()
            self.lock = None
