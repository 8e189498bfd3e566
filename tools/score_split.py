"""Score model folders on a split-protocol folder: gallery = photos whose name starts with the
gallery prefix (``train_``), queries = the rest (``val_`` + ``test_``), product = subfolder.

Prints recall@1/@5 (products ranked by their best gallery photo, as the service groups) raw and
with learned whitening fitted on the gallery's product labels (``visual_search.whitening``;
never on the queries). Used for the fine-tune section of docs/quality.md:

    .venv/bin/python tools/score_split.py ../shared/datasets/grocery-dev \\
        /tmp/lite0-gem224 /tmp/ft224   # the earlier 224 px GeM base: tools/export_model.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from visual_search.folders import scan
from visual_search.model import Embedder
from visual_search.training.validate import product_recall
from visual_search.whitening import choose


def score(folder: Path, model_dir: Path, gallery_prefix: str) -> dict:
    images = scan(folder)
    labels = [img.key.split("/")[0] for img in images]
    is_gallery = np.asarray([img.path.name.startswith(gallery_prefix) for img in images])
    model = Embedder(model_dir, threads=2)
    started = time.perf_counter()
    vectors = np.stack([np.asarray(v) for v in model.embed_many([img.path.read_bytes() for img in images])])
    seconds = time.perf_counter() - started
    g, q = np.flatnonzero(is_gallery), np.flatnonzero(~is_gallery)
    gl, ql = [labels[i] for i in g], [labels[i] for i in q]
    raw = product_recall(vectors[g], gl, vectors[q], ql)
    report = choose(vectors[g], gl)
    adapted = None
    if report.projection is not None:
        space = report.projection.apply(vectors)
        adapted = product_recall(space[g], gl, space[q], ql).as_dict()
    return {
        "model": model.model_id,
        "gallery": len(g),
        "queries": len(q),
        "raw": raw.as_dict(),
        "adapted": adapted,
        "adaptation": report.reason,
        "embed_seconds": round(seconds, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("model_dirs", type=Path, nargs="+")
    parser.add_argument("--gallery-prefix", default="train_")
    args = parser.parse_args()
    for model_dir in args.model_dirs:
        print(json.dumps(score(args.folder, model_dir, args.gallery_prefix)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
