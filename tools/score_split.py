"""Score model folders on a split-protocol folder: gallery = photos whose name starts with the
gallery prefix (``train_``), queries = the rest (``val_`` + ``test_``), product = subfolder.

Web-shop protocol: ``--gallery-prefix iconic_ --query-prefixes val_,test_`` (the studio photo is the
gallery, the catalogue's own ``train_`` photos are left out). With a ``products.csv`` that has a
``kind`` column, recall is also given for packaged goods and produce (fruit, vegetables) apart.

Prints recall@1/@5 (products ranked by their best gallery photo, as the service groups) raw and
with learned whitening fitted on the gallery's product labels (``visual_search.adaptation.whitening``;
never on the queries). Used for the fine-tune section of docs/quality.md:

    .venv/bin/python tools/score_split.py ../shared/datasets/grocery-dev \\
        /tmp/lite0-gem224 /tmp/ft224   # the earlier 224 px GeM base: tools/export_model.py --out DIR
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from visual_search.adaptation.whitening import choose
from visual_search.dev.folders import scan
from visual_search.dev.training.validate import product_recall
from visual_search.model import Embedder


def kinds_of(folder: Path) -> dict[str, str]:
    """product id -> packaged / produce, from products.csv's ``kind`` column when there is one."""
    table = folder / "products.csv"
    if not table.is_file():
        return {}
    with table.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("kind")]
    return {r["product_id"]: "packaged" if r["kind"] == "packaged" else "produce" for r in rows}


def score(folder: Path, model_dir: Path, gallery_prefix: str, query_prefixes: tuple[str, ...] = ()) -> dict:
    images = [
        img
        for img in scan(folder)
        if img.path.name.startswith(gallery_prefix)
        or not query_prefixes
        or img.path.name.startswith(query_prefixes)
    ]
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
    space = vectors if report.projection is None else report.projection.apply(vectors)
    if report.projection is not None:
        adapted = product_recall(space[g], gl, space[q], ql).as_dict()
    kinds = kinds_of(folder)
    by_kind = {}
    for kind in sorted(set(kinds.values())):
        qk = [i for i in q if kinds.get(labels[i]) == kind]
        if qk:
            by_kind[kind] = {
                "queries": len(qk),
                "raw": product_recall(vectors[g], gl, vectors[qk], [labels[i] for i in qk]).as_dict(),
                "adapted": None
                if adapted is None
                else product_recall(space[g], gl, space[qk], [labels[i] for i in qk]).as_dict(),
            }
    return {
        "model": model.model_id,
        "gallery": len(g),
        "queries": len(q),
        "raw": raw.as_dict(),
        "adapted": adapted,
        "adaptation": report.reason,
        "by_kind": by_kind,
        "embed_seconds": round(seconds, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("model_dirs", type=Path, nargs="+")
    parser.add_argument("--gallery-prefix", default="train_")
    parser.add_argument(
        "--query-prefixes", default="", help="comma-separated (val_,test_); default: every non-gallery photo"
    )
    args = parser.parse_args()
    prefixes = tuple(p for p in args.query_prefixes.split(",") if p)
    for model_dir in args.model_dirs:
        print(json.dumps(score(args.folder, model_dir, args.gallery_prefix, prefixes)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
