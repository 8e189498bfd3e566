"""`visual-search eval` as a user runs it, on a subset of the demo catalogue."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from visual_search.config import REPO_MODEL_DIR
from visual_search.dev.evaluate import average_precision_at_r

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "datasets" / "demo-catalog"
DEMO = SHARED if SHARED.is_dir() else REPO / "data" / "demo-catalog"
KEYS = {"recall@1", "recall@5", "recall@10", "mAP@R"}
DEFAULT_MODEL_ID = json.loads((REPO_MODEL_DIR / "model.json").read_text())["id"]


def run_eval(*extra: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "visual_search", "eval", str(DEMO), "--json", "--limit", "30", *extra],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_eval_reports_the_metrics_and_beats_raw_pixels():
    model = run_eval()
    pixels = run_eval("--baseline", "pixels")
    assert set(model) >= KEYS and model["model"] == DEFAULT_MODEL_ID
    assert model["images"] == 30 and model["products"] == 10
    for key in KEYS:
        assert 0.0 <= model[key] <= 1.0
    assert model["recall@1"] <= model["recall@5"] <= model["recall@10"]
    assert model["recall@1"] > pixels["recall@1"]


@pytest.mark.parametrize(
    "relevant,r,expected",
    [
        ([True, True, False], 2, 1.0),
        ([False, True, True], 2, 0.25),
        ([False, False, True], 2, 0.0),
        ([True, False, True, False], 3, (1 + 2 / 3) / 3),
    ],
)
def test_average_precision_at_r(relevant, r, expected):
    assert average_precision_at_r(relevant, r) == pytest.approx(expected)


GROCERY_SMALL = REPO / "tests" / "data" / "grocery-small"


def test_eval_split_protocol_with_adaptation():
    """Gallery train_ photos, queries test_ (another photo session); the fit sees the gallery only."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "visual_search",
            "eval",
            str(GROCERY_SMALL),
            "--json",
            "--queries",
            "val_*,test_*",
            "--adapt",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["protocol"] == "split" and out["queries"] == 40 and out["gallery"] == 80
    assert set(out["raw"]) >= KEYS and set(out["adapted"]) >= KEYS
    assert [f["photos"] for f in out["fits"]] == [80]
    assert out["fits"][0]["shrinkage"] is not None, out["fits"][0]["reason"]
    # The adaptation removes at least a third of the raw space's errors.
    assert 1 - out["adapted"]["recall@1"] <= (1 - out["raw"]["recall@1"]) * 2 / 3, out
    assert out["recall@1"] == out["adapted"]["recall@1"]


def test_eval_split_needs_queries_and_gallery():
    result = subprocess.run(
        [sys.executable, "-m", "visual_search", "eval", str(GROCERY_SMALL), "--queries", "nothing_*"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode != 0
    assert "0 of 120 file names match" in result.stderr


def test_eval_gallery_patterns_leave_the_other_files_out():
    """The web-shop protocol's shape: a chosen gallery, the rest of the folder neither indexed nor asked."""
    tests = len(list(GROCERY_SMALL.glob("*/test_*")))
    galleries = len(list(GROCERY_SMALL.glob("*/train_*_001.jpg")))  # one photo per product, as a web shop
    assert tests and galleries < len(list(GROCERY_SMALL.glob("*/train_*")))
    args = [
        sys.executable,
        "-m",
        "visual_search",
        "eval",
        str(GROCERY_SMALL),
        "--json",
        "--queries",
        "test_*",
    ]
    ok = subprocess.run(
        [*args, "--gallery", "train_*_001.jpg"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert (out["queries"], out["gallery"], out["images"]) == (tests, galleries, tests + galleries)
    empty = subprocess.run(
        [*args, "--gallery", "iconic_*"], check=False, capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert empty.returncode != 0 and "the split needs both queries and a gallery" in empty.stderr


def test_eval_scores_the_confidence_and_leave_out_measures_no_match(capsys):
    """--adapt on the split protocol fits the calibration adapt would (on the gallery only) and
    scores it on the queries; --leave-out takes products' gallery photos away so their queries
    are photos of products the shop does not carry."""
    from visual_search.dev.cli import main

    args = ["eval", str(GROCERY_SMALL), "--queries", "test_*", "--adapt", "--json", "--quiet"]
    assert main(args) == 0
    full = json.loads(capsys.readouterr().out)
    assert main([*args, "--leave-out", "0.3"]) == 0
    open_set = json.loads(capsys.readouterr().out)
    tests = {p.parent.name: 0 for p in GROCERY_SMALL.glob("*/test_*")}
    for p in GROCERY_SMALL.glob("*/test_*"):
        tests[p.parent.name] += 1
    for space in ("raw", "adapted"):
        figures = full["confidence"][space]
        assert figures["calibrated"] and figures["queries"] == full["queries"] == sum(tests.values())
        assert 0 <= figures["ece"] <= 1 and 0 <= figures["mean_confidence"] <= 1
        assert "out_of_catalogue_no_match" not in figures
        left = open_set["confidence"][space]
        out = left["out_of_catalogue_queries"]
        assert out + left["queries"] == sum(tests.values()) and out > 0
        assert open_set["queries"] == left["queries"]  # recall counts in-catalogue photos only
        # The shop's own products are flagged less often than the ones it does not carry.
        assert left["in_catalogue_no_match"] < left["out_of_catalogue_no_match"]
    assert main(["eval", str(GROCERY_SMALL), "--leave-out", "0.3", "--quiet"]) == 1
    assert "--leave-out needs --queries and --adapt" in capsys.readouterr().err
