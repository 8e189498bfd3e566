"""`visual-search bench` runs and reports sane figures (never a speed assertion: timings are for
docs/benchmarks.md, not for a test that could flake)."""

from __future__ import annotations

from visual_search import bench
from visual_search.config import get_settings


def test_ingest_section_reports_every_row_and_the_cpu_budget(embedder):
    get_settings.cache_clear()  # the environment's settings, not another test's monkeypatched ones
    report = bench.ingest_throughput(repeat=1)
    rows = report["ingest"]
    assert [(r["batch"], r["s3"], r["embed_chunk"]) for r in rows] == [
        (1, "moto", 8),
        (10, "moto", 8),
        (32, "moto", 8),
        (32, "moto + latency", 8),
        (32, "moto + latency", 32),
    ]
    for row in rows:
        assert row["images_per_s"] > 0 and row["bare_model_images_per_s"] > 0
        # The ratio is rounded from the unrounded rates, so it may differ from the ratio of the
        # printed (rounded) rates in its last digit.
        ratio = row["images_per_s"] / row["bare_model_images_per_s"]
        assert abs(row["ratio_to_bare"] - ratio) <= 0.011
    cpu = report["ingest_cpu_core_ms_32"]
    # A whole apply does the model's work and more: its CPU can only exceed the bare model's.
    assert 0 < cpu["model"] < cpu["whole_apply"] and 0 < cpu["ceiling_ratio"] < 1
    assert cpu["decode"] > 0 and cpu["s3_get"] > 0 and cpu["s3_head"] > 0


def test_embed_section_compares_decoding_with_the_model(embedder):
    report = bench.embed_breakdown(repeat=1)
    assert {r["image"] for r in report["embed"]} == set(bench.SIZES)
    for row in report["embed"]:
        assert row["decode_preprocess_ms"] > 0 and row["inference_ms"] > 0
