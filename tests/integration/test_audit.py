"""visual-search audit on real photos: a photo moved to another product's folder is listed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GROCERY_SMALL = REPO / "tests" / "data" / "grocery-small"


def test_audit_finds_a_mislabelled_photo(tmp_path):
    for product in ("Oatly-Oat-Milk", "Arla-Sour-Cream"):
        shutil.copytree(GROCERY_SMALL / product, tmp_path / product)
    moved = min((tmp_path / "Oatly-Oat-Milk").glob("train_*.jpg"))
    moved.rename(tmp_path / "Arla-Sour-Cream" / moved.name)
    result = subprocess.run(
        [sys.executable, "-m", "visual_search", "audit", str(tmp_path), "--json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["photos"] == 24
    keys = [s["key"] for s in out["suspects"]]
    assert f"Arla-Sour-Cream/{moved.name}" in keys
    assert keys.index(f"Arla-Sour-Cream/{moved.name}") < 2  # among the worst
