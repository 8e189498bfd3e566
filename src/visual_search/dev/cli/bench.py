"""``visual-search bench``: decoding, inference and search speed (the work is ../bench.py's)."""

from __future__ import annotations

from .common import int_in, sizes


def add(sub) -> None:
    bench = sub.add_parser("bench", help="measure decoding, inference and search speed")
    bench.add_argument("--repeat", type=int_in(1), default=30, help="timed runs per case (default 30)")
    bench.add_argument("--json", action="store_true", help="print only JSON")
    bench.add_argument(
        "--only",
        help="comma-separated sections: embed, ingest, search, scale "
        "(the embedded engine at 10k/100k synthetic points, HNSW + int8), cold, int8 (the "
        "default int8 model against its float source: session.run at batch 1 and 8, query, ingest)",
    )
    bench.add_argument(
        "--scale-sizes",
        type=sizes,
        default=(10_000, 100_000),
        help="comma-separated point counts for the scale section (default 10000,100000; "
        "1000000 takes about an hour on 2 cores, 5 GB of vectors in RAM and ~8 GB of disk)",
    )
    bench.add_argument(
        "--cold-runs",
        type=int_in(1, 100),
        default=5,
        help="fresh processes of each side (floor, function) for the cold section, alternated "
        "(default 5; single ratios move by +-0.15 even on a quiet machine: use 15 or more to compare trees)",
    )
    bench.add_argument(
        "--scale-keep",
        metavar="DIR",
        help="keep each size's built store in DIR/scale-<size> and search it again in later runs "
        "with the same build settings (no rebuild): compare query-time settings such as "
        "QDRANT_FILTERED_HNSW_EF or QDRANT_QUANTIZATION_OVERSAMPLING",
    )
    bench.set_defaults(func=run)


def run(args) -> int:
    from ..bench import run_bench

    return run_bench(args)
