"""Recall@1 of a split-protocol folder through the real path: S3 -> ingest -> search API.

What a new user's catalogue goes through, on the local stack (``visual-search dev``): the
gallery photos (names starting with ``--gallery``, default ``train_``) are uploaded with
``visual-search upload`` (metadata from ``products.csv``) into the stack's S3 endpoint, its
notifications drive the ingest function, and every other photo is sent as a query to
``POST /search`` (raw JPEG body, ``top_k=1``); a query is right when the first product is its
folder's. Two runs of the stack on one data folder:

1. ``ADAPT=false``: the raw model space;
2. the default (adaptation on): the stack refits once the uploads have settled; the queries are
   sent again after ``/health`` reports the projection.

    .venv/bin/python tools/score_real_path.py ../shared/datasets/grocery-dev [--json]

Ports are free ones on 127.0.0.1; everything is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def split(folder: Path, gallery_prefix: str, into: Path) -> list[Path]:
    """Link the gallery photos (and products.csv) into ``into``; the queries, returned."""
    queries = []
    for photo in sorted(folder.glob("*/*")):
        if photo.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if photo.name.startswith(gallery_prefix):
            (into / photo.parent.name).mkdir(parents=True, exist_ok=True)
            (into / photo.parent.name / photo.name).symlink_to(photo.resolve())
        else:
            queries.append(photo)
    if (folder / "products.csv").is_file():
        shutil.copy(folder / "products.csv", into / "products.csv")
    return queries


class Stack:
    """``visual-search dev`` in a subprocess, on free ports."""

    def __init__(self, data_dir: Path, env: dict[str, str]):
        self.api = f"http://127.0.0.1:{_free_port()}"
        self.s3 = f"http://127.0.0.1:{_free_port()}"
        self.log = (data_dir.parent / f"stack-{time.monotonic_ns()}.log").open("w")
        command = [sys.executable, "-m", "visual_search", "dev", "--no-demo", "--data-dir", str(data_dir)]
        command += ["--api-port", self.api.rsplit(":", 1)[1], "--s3-port", self.s3.rsplit(":", 1)[1]]
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("QDRANT_", "AWS_ENDPOINT"))}
        self.process = subprocess.Popen(
            command, cwd=ROOT, env={**clean, **env}, stdout=self.log, stderr=subprocess.STDOUT
        )

    def health(self) -> dict:
        try:
            with urllib.request.urlopen(self.api + "/health", timeout=10) as response:
                return dict(json.loads(response.read()))
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return {"status": "unreachable"}

    def wait(self, done, what: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        last = 0.0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the stack exited early; its log: {self.log.name}")
            health = self.health()
            if done(health):
                return health
            if time.monotonic() - last > 10:
                shown = {k: health.get(k) for k in ("status", "points", "backlog")}
                _log(f"  waiting for {what}: {json.dumps(shown)}")
                last = time.monotonic()
            time.sleep(0.5)
        raise RuntimeError(f"no {what} in {timeout:.0f} s; the stack's log: {self.log.name}")

    def top_product(self, photo: Path) -> str:
        request = urllib.request.Request(
            self.api + "/search?top_k=1",
            data=photo.read_bytes(),
            headers={"Content-Type": "image/jpeg"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            results = json.loads(response.read())["results"]
        return str(results[0]["product_id"]) if results else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


def idle(health: dict) -> bool:
    """No notification waiting or being handled."""
    backlog = health.get("backlog") or {}
    return bool(backlog) and backlog.get("queued", 1) + backlog.get("in_flight", 1) == 0


def recall(stack: Stack, queries: list[Path]) -> float:
    right = 0
    for n, photo in enumerate(queries, 1):
        right += stack.top_product(photo) == photo.parent.name
        if n % 100 == 0 or n == len(queries):
            _log(f"  {n}/{len(queries)} queries, recall@1 so far {right / n:.3f}")
    return right / len(queries)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("folder", type=Path, help="one subfolder per product (and products.csv)")
    parser.add_argument("--gallery", default="train_", help="file-name prefix of the gallery photos")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="score-real-path-"))
    try:
        gallery_dir = work / "gallery"
        gallery_dir.mkdir()
        queries = split(args.folder, args.gallery, gallery_dir)
        gallery = sum(1 for p in gallery_dir.glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not gallery or not queries:
            print(f"error: {args.folder} needs gallery photos ({args.gallery}*) and queries", file=sys.stderr)
            return 2
        data_dir = work / "data"
        report: dict = {"folder": str(args.folder), "gallery": gallery, "queries": len(queries)}
        _log(f"gallery {gallery} photos, {len(queries)} queries; stack 1 of 2 (ADAPT=false)")
        stack = Stack(data_dir, {"ADAPT": "false"})
        try:
            stack.wait(lambda h: h.get("status") == "ok", "the stack", 180)
            started = time.monotonic()
            subprocess.run(
                [sys.executable, "-m", "visual_search", "upload", str(gallery_dir), "s3://product-images/catalog/",
                 "--endpoint-url", stack.s3, "--quiet"],
                cwd=ROOT, check=True, env={**os.environ, "AWS_ACCESS_KEY_ID": "local",
                                           "AWS_SECRET_ACCESS_KEY": "local"},
            )  # fmt: skip
            health = stack.wait(lambda h: h.get("points") == gallery and idle(h), "every upload indexed", 900)
            report["indexed_s"] = round(time.monotonic() - started, 1)
            report["model"] = health.get("model")
            report["raw"] = round(recall(stack, queries), 4)
        finally:
            stack.stop()
        _log("stack 2 of 2 (adaptation on: it refits once the catalogue has settled)")
        stack = Stack(data_dir, {"ADAPT_SETTLE_S": "2"})
        try:
            health = stack.wait(lambda h: bool(h.get("projection")), "the projection", 900)
            report["projection"] = health["projection"]
            report["adapted"] = round(recall(stack, queries), 4)
        finally:
            stack.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{report['model']}: gallery {gallery}, queries {len(queries)}: recall@1 through S3 -> ingest -> "
            f"search API: raw {report['raw']:.3f}, adapted {report['adapted']:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
