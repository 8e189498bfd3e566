"""``visual-search model quantize``: the int8 folder, its card, and what it refuses (needs onnx)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx", reason="quantisation needs the onnx package (the train extra)")

from visual_search.config import REPO_MODEL_DIR
from visual_search.dev.cli import main
from visual_search.model import Embedder, file_sha256

FP32 = REPO_MODEL_DIR.parent / "efficientnet-lite0-384"
GROCERY_SMALL = Path(__file__).resolve().parents[1] / "data" / "grocery-small"


@pytest.fixture(scope="module")
def int8(tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "int8"
    args = ["model", "quantize", str(FP32), "--calibration", str(GROCERY_SMALL), "--out", str(out)]
    assert main([*args, "--images", "16", "--patterns", "train_*", "--quiet"]) == 0
    return out


def test_the_int8_folder_serves_and_its_card_says_how_it_was_made(int8, demo_images):
    card = json.loads((int8 / "model.json").read_text())
    source = json.loads((FP32 / "model.json").read_text())
    assert card["id"] == source["id"] + "-int8" and card["precision"] == "int8"
    assert card["sha256"] == file_sha256(int8 / "model.onnx") != source["sha256"]
    calibration = card["quantization"]["calibration"]
    assert calibration["images"] == 16 and calibration["patterns"] == ["train_*"]
    assert calibration["products"] == len([p for p in GROCERY_SMALL.iterdir() if p.is_dir()])
    assert card["quantization"]["from"] == {"id": source["id"], "sha256": source["sha256"]}
    assert card["input"] == source["input"] and card["embedding_dim"] == source["embedding_dim"]
    assert (int8 / "model.onnx").stat().st_size < (FP32 / "model.onnx").stat().st_size / 2
    photos = [img.path.read_bytes() for img in demo_images[:12]]
    a, b = np.stack(Embedder(int8).embed_many(photos)), np.stack(Embedder(FP32).embed_many(photos))
    assert np.min(np.sum(a * b, axis=1)) > 0.9


def test_quantize_refuses_what_it_cannot_do(int8, tmp_path, capsys):
    base = ["model", "quantize"]
    assert main([*base, str(int8), "--calibration", str(GROCERY_SMALL), "--out", str(tmp_path / "a")]) == 1
    assert "already an int8 model" in capsys.readouterr().err
    assert main([*base, str(FP32), "--calibration", str(GROCERY_SMALL), "--out", str(FP32)]) == 1
    assert "the model's own folder" in capsys.readouterr().err
    args = [*base, str(FP32), "--calibration", str(GROCERY_SMALL), "--out", str(tmp_path / "b")]
    assert main([*args, "--patterns", "nothing_*"]) == 1
    assert "no images to calibrate on matching nothing_*" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b" / "model.onnx").exists()
