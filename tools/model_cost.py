"""Cost per image of model folders side by side, as ratios of the first folder's bare run.

For each model folder (``model.onnx`` + ``model.json``), in one process and with the service's
session options, the median ms of:

- ``run1``: ``session.run`` on a prepared batch of 1 (the yardstick: the first folder's run1 = 1.0x);
- ``run8``: per image of a prepared batch of 8;
- ``query``: a query's model work, decode + preprocess of a 1200x900 JPEG + ``session.run``;
- ``ingest``: an ingest batch's model work per image, 8 such JPEGs decoded and run as one batch.

The folders are measured in rounds, alternated, so a change in the machine's load touches all of
them alike; the ratios are the figures to read on a shared machine.

    .venv/bin/python tools/model_cost.py layers/model/efficientnet-lite0-384 /tmp/lite0-448 ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from visual_search.config import get_settings
from visual_search.dev.bench import scaled_photo
from visual_search.dev.folders import DEMO_CATALOG, scan
from visual_search.model import Embedder


def _median_ms(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _cases(embedder: Embedder, photos: list[bytes]) -> dict:
    card = embedder.card
    one = np.stack([embedder.preprocess(photos[0])])
    eight = np.stack([embedder.preprocess(p) for p in photos[:8]])

    def run(batch: np.ndarray):
        return embedder.session.run([card.embedding_output], {card.input_name: batch})

    return {
        "run1": (lambda: run(one), 1),
        "run8": (lambda: run(eight), 8),
        "query": (lambda: embedder.embed(photos[0]), 1),
        "ingest": (lambda: embedder.embed_many(photos[:8]), 8),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="model folders; the first is the yardstick")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds (default 3)")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per case and round (default 10)")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    settings = get_settings()
    photos = [scaled_photo(img.path, 1200, "JPEG") for img in scan(DEMO_CATALOG)[::7][:8]]
    embedders = [Embedder(m, threads=settings.ort_threads, max_batch=settings.max_batch) for m in args.models]
    cases = [_cases(e, photos) for e in embedders]
    samples: list[dict[str, list[float]]] = [{name: [] for name in c} for c in cases]
    for round_ in range(args.rounds):
        for index, model_cases in enumerate(cases):
            for name, (fn, images) in model_cases.items():
                samples[index][name].append(_median_ms(fn, args.repeat) / images)
        if not args.json:
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    yardstick = statistics.median(samples[0]["run1"])
    rows = []
    for embedder, measured in zip(embedders, samples, strict=True):
        row: dict = {"model": embedder.model_id, "size": embedder.card.preprocess.size}
        for name, values in measured.items():
            ms = statistics.median(values)
            row[f"{name}_ms"] = round(ms, 2)
            row[f"{name}_x"] = round(ms / yardstick, 2)
        rows.append(row)
    report = {"yardstick": f"{embedders[0].model_id} run1", "threads": settings.ort_threads, "rows": rows}
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"ratios of {report['yardstick']} ({yardstick:.2f} ms), {settings.ort_threads} threads")
    print("| model | px | run, batch 1 | per image, batch 8 | query: decode + run | ingest: batch of 8 |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        cells = [f"{row[f'{n}_x']}x ({row[f'{n}_ms']} ms)" for n in ("run1", "run8", "query", "ingest")]
        print(f"| {row['model']} | {row['size']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
