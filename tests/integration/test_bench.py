"""`visual-search bench` runs and reports sane figures (never a speed assertion: timings are for
docs/benchmarks.md, not for a test that could flake)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from visual_search.config import get_settings
from visual_search.dev import bench
from visual_search.model import Embedder


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
        # The ratio (2 decimals) is rounded from the unrounded rates; the printed rates are rounded
        # to 0.1, which moves their ratio by up to 0.05 * (1 + ratio) / bare rate: slow rates
        # (a large model, a loaded machine) widen the gap.
        ratio = row["images_per_s"] / row["bare_model_images_per_s"]
        tolerance = 0.005 + 0.05 * (1 + ratio) / (row["bare_model_images_per_s"] - 0.05) + 1e-9
        assert abs(row["ratio_to_bare"] - ratio) <= tolerance
    cpu = report["ingest_cpu_core_ms_32"]
    # A whole apply does the model's work and more: its CPU can only exceed the bare model's.
    assert 0 < cpu["model"] < cpu["whole_apply"] and 0 < cpu["ceiling_ratio"] < 1
    assert cpu["decode"] > 0 and cpu["s3_get"] > 0 and cpu["s3_head"] > 0


def test_embed_section_compares_decoding_with_the_model(embedder):
    report = bench.embed_breakdown(repeat=1)
    assert {r["image"] for r in report["embed"]} == set(bench.SIZES)
    for row in report["embed"]:
        assert row["decode_preprocess_ms"] > 0 and row["inference_ms"] > 0


def test_scale_ground_truth_is_the_brute_force_answer():
    """The scale section's exact answers (chunked, partial sort) equal a plain full sort."""
    from visual_search.dev import bench_scale
    from visual_search.domain import point_id

    # 6,000 points: one chunk; 60,000: two chunks of the matrix product, the second partial
    for d in (bench_scale.synthetic(6_000), bench_scale.synthetic(60_000, seed=3)):
        qs = bench_scale.queries(d)[:5]
        mask = (d.category == 3) & (d.price >= 5) & (d.price <= 30)
        for filtered in (False, True):
            scores = qs @ d.vectors.T
            if filtered:
                scores = np.where(mask, scores, -np.inf)
            order = np.argsort(-scores, axis=1)
            images = [[point_id("bench", f"sku-{d.products[n]}/{n}.jpg") for n in row[:10]] for row in order]
            products = []
            for row in order:
                seen: list[str] = []
                for n in row:
                    if f"sku-{d.products[n]}" not in seen:
                        seen.append(f"sku-{d.products[n]}")
                        if len(seen) == 10:
                            break
                products.append(seen)
            assert bench_scale.exact(d, qs, filtered, grouped=False) == images
            assert bench_scale.exact(d, qs, filtered, grouped=True) == products


def test_scale_sizes_flag():
    from visual_search.dev.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["bench"]).scale_sizes == (10_000, 100_000)
    args = parser.parse_args(["bench", "--only", "scale", "--scale-sizes", "10000, 1_000_000"])
    assert args.scale_sizes == (10_000, 1_000_000)
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--scale-sizes", "10"])
    assert parser.parse_args(["bench"]).cold_runs == 5
    assert parser.parse_args(["bench", "--only", "cold", "--cold-runs", "15"]).cold_runs == 15
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--cold-runs", "0"])


def test_cold_section_times_both_sides_in_fresh_processes():
    get_settings.cache_clear()
    report = bench.cold_start(runs=1)
    cold, floor = report["cold_start"], report["cold_start"]["floor"]
    assert report["cold_start_runs"] == 1
    # The children ran (a fresh process each) and their phases add up.
    assert cold["init_ms"] > 0 and cold["first_answer_ms"] > 0
    assert abs(cold["init_ms"] + cold["first_answer_ms"] - cold["total_ms"]) <= 0.2
    assert floor["imports_ms"] > 0 and floor["session_ms"] > 0 and floor["cpu_ms"] > 0 and cold["cpu_ms"] > 0
    assert cold["vs_floor"] == round(cold["total_ms"] / floor["total_ms"], 2)
    assert cold["cpu_vs_floor"] == round(cold["cpu_ms"] / floor["cpu_ms"], 2)
    # One pair: its ratio is the medians' (up to the rounding of the medians to 0.1 ms).
    assert len(cold["cpu_vs_floor_pairs"]) == 1
    assert abs(cold["cpu_vs_floor_pairs"][0] - cold["cpu_vs_floor"]) <= 0.011
    # The function's side loads the model and the store as a deployed search does: more memory.
    assert cold["peak_rss_mb"] > floor["peak_rss_mb"] > 0


def test_scale_keep_searches_the_kept_store_again_without_rebuilding(tmp_path):
    """With --scale-keep the built store stays and a second run searches it (same answers) instead
    of upserting again; a store built with other build settings is not reused."""
    from dataclasses import replace

    from visual_search.dev import bench_scale

    get_settings.cache_clear()
    logs: list[str] = []
    first = bench_scale.edge_row(2_000, logs.append, keep=str(tmp_path))
    assert any("upserting" in line for line in logs)
    folder = tmp_path / "scale-2000"
    assert (folder / bench_scale.BUILD_STAMP).exists()
    logs.clear()
    second = bench_scale.edge_row(2_000, logs.append, keep=str(tmp_path))
    assert not any("upserting" in line for line in logs)
    assert any("kept in" in line for line in logs)
    for key in ("upsert_s", "hnsw_build_s", *(f"{case}_recall@10" for case in bench_scale.CASES)):
        assert second[key] == first[key]
    assert first["filtered_one_per_product_recall@10"] > 0.5
    settings = replace(get_settings().store, path=str(folder))
    signature = bench_scale.build_signature(2_000, settings)
    assert bench_scale.reusable(folder, signature) is not None
    assert bench_scale.reusable(folder, {**signature, "hnsw_m": 32}) is None


def test_int8_section_compares_the_default_with_its_float_source(embedder):
    report = bench.precision_compare(repeat=2)["int8"]
    source = bench.float_source(embedder)
    assert source is not None and source.name == "efficientnet-lite0-384"  # the blend's base
    imagenet_int8 = Embedder(source.parent / "efficientnet-lite0-384-int8")
    assert bench.float_source(imagenet_int8) == source  # the recorded source of a plain int8 model
    float_id = json.loads((source / "model.json").read_text())["id"]
    assert [r["model"] for r in report["rows"].values()] == [float_id, embedder.card.id]
    for row in report["rows"].values():
        assert all(
            row[k] > 0 for k in ("load_ms", "run_b1_ms", "run_b8_ms", "query_ms", "ingest_per_image_ms")
        )
    fp32, int8 = report["rows"]["fp32"], report["rows"]["int8"]
    assert report["fp32_over_int8"]["run_b1_ms"] == round(fp32["run_b1_ms"] / int8["run_b1_ms"], 2)
