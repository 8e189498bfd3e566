"""kill -9 while the embedded store writes: every batch acknowledged before the kill is there
after a reopen, and the folder opens again (no stale lock, a consistent catalogue file)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np

from visual_search.config import StoreSettings
from visual_search.store import CatalogStore, Query, open_backend

BATCH = 50
DIM = 64

WRITER = textwrap.dedent(
    f"""
    import sys
    import numpy as np
    from visual_search.config import StoreSettings
    from visual_search.store import CatalogStore, ImagePoint, open_backend

    settings = StoreSettings(path=sys.argv[1], collection="crash")
    store = CatalogStore(open_backend(settings), settings, "synthetic", {DIM})
    rng = np.random.default_rng(0)
    for batch in range(400):
        points = []
        for n in range(batch * {BATCH}, (batch + 1) * {BATCH}):
            vector = rng.normal(size={DIM}).astype(np.float32)
            payload = {{"product_id": f"p{{n // 4}}", "bucket": "b", "key": f"k{{n}}",
                        "brand": f"batch-{{batch}}"}}
            points.append(ImagePoint("b", f"k{{n}}", vector / np.linalg.norm(vector), payload))
        store.upsert(points)
        print(batch, flush=True)  # acknowledged
    """
)


def test_acknowledged_batches_survive_kill_9(tmp_path):
    folder = tmp_path / "qdrant"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(folder)], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    acknowledged = -1
    deadline = time.monotonic() + 120
    try:
        while acknowledged < 5 and time.monotonic() < deadline:
            line = writer.stdout.readline()
            if not line:
                break
            acknowledged = int(line)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(30)
    assert acknowledged >= 5, "the writer did not get going"
    settings = StoreSettings(path=str(folder), collection="crash")
    store = CatalogStore(open_backend(settings), settings, "synthetic", DIM)
    for batch in range(acknowledged + 1):
        assert store.count({"brand": f"batch-{batch}"}) == BATCH, f"batch {batch} was acknowledged"
    total = store.count()
    assert total % BATCH == 0, "a batch is half-written"  # one update: all of it or none
    hits = store.search(np.ones(DIM, np.float32), Query(top_k=5))
    assert len(hits) == 5
    store.close()
