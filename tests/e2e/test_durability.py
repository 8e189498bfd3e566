"""Nothing the local stack confirmed is lost by a crash: 300 uploads, `kill -9` as soon as the
last PUT is confirmed, a restart on the same data folder holds all of them, in the bucket and in
search; the same for confirmed deletions. (A restart right after a clean stop:
test_local_stack.py.)"""

from __future__ import annotations

import io
import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from tests.e2e.conftest import RunningStack
from tests.e2e.test_local_stack import s3_for

BUCKET = "product-images"
COUNT = 300


def small_jpegs(count: int) -> dict[str, bytes]:
    """Distinct little photos (48 px noise), so 300 uploads stay fast."""
    rng = np.random.default_rng(14)
    out = {}
    for i in range(count):
        pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=80)
        out[f"catalog/p{i:03d}/front.jpg"] = buffer.getvalue()
    return out


def health_while_starting(stack, timeout: float = 180) -> set[str]:
    """The /health statuses seen until the stack prints its banner."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while "Ctrl-C stops" not in stack.output() and time.monotonic() < deadline:
        if stack.process.poll() is not None:
            break
        try:
            seen.add(stack.get("/health")["status"])
        except OSError:  # not listening yet
            pass
        time.sleep(0.3)
    return seen


def keys_in_bucket(stack, prefix: str = "catalog/") -> set[str]:
    """The catalogue's keys (the searches the test makes are kept beside them, under query-photos/)."""
    s3, keys = s3_for(stack), set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys |= {o["Key"] for o in page.get("Contents", [])}
    return keys


def found(stack, data: bytes, product_id: str) -> list[str]:
    query = json.dumps({"product_id": product_id})
    request = urllib.request.Request(
        f"{stack.api}/search?top_k=1&filters={urllib.request.quote(query)}",
        data=data,
        method="POST",
        headers={"Content-Type": "image/jpeg"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return [r["image"]["key"] for r in json.loads(response.read())["results"]]


def test_confirmed_uploads_and_deletes_survive_kill_9(tmp_path):
    data, photos = tmp_path / "data", small_jpegs(COUNT)
    first = RunningStack(data, demo=False)
    first.wait_ready()
    s3 = s3_for(first)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: s3.put_object(Bucket=BUCKET, Key=kv[0], Body=kv[1]), photos.items()))
    first.kill()  # the moment the last PUT is confirmed

    second = RunningStack(data, demo=False)
    try:
        statuses = health_while_starting(second)
        second.wait_ready()
        assert "starting" in statuses  # restore and repair: /health says so meanwhile
        assert "restoring the bucket" in second.output()
        assert keys_in_bucket(second) == set(photos)
        assert second.get("/health")["points"] == COUNT
        for key in sorted(photos)[-20:]:  # the last uploads, the likeliest to be lost
            assert found(second, photos[key], key.split("/")[1]) == [key]
        gone = sorted(photos)[::3]
        s3 = s3_for(second)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda key: s3.delete_object(Bucket=BUCKET, Key=key), gone))
    finally:
        second.kill()

    third = RunningStack(data, demo=False)
    try:
        third.wait_ready()
        assert keys_in_bucket(third) == set(photos) - set(gone)
        assert third.get("/health")["points"] == COUNT - len(gone)
        for key in gone[-10:]:
            assert found(third, photos[key], key.split("/")[1]) == []
    finally:
        assert third.stop() == 0
