"""The weight-space blend of the base model and its grocery fine-tune (needs onnx)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnx", reason="blending needs the onnx package (the train extra)")

from visual_search.config import REPO_MODELS
from visual_search.dev.training.blend import blend
from visual_search.model import Embedder, file_sha256

BASE = REPO_MODELS / "efficientnet-lite0-384"
TUNED = REPO_MODELS / "efficientnet-lite0-384-grocery"


def _embed(folder, photos):
    embedder = Embedder(folder)
    return np.stack([embedder.embed(p) for p in photos])


@pytest.fixture(scope="module")
def photos(demo_images):
    return [img.path.read_bytes() for img in demo_images[:6]]


@pytest.fixture(scope="module")
def ends(photos):
    return _embed(BASE, photos), _embed(TUNED, photos)


@pytest.mark.parametrize("alpha,which", [(0.0, 0), (1.0, 1)])
def test_alpha_zero_is_the_base_and_one_the_fine_tune(tmp_path, photos, ends, alpha, which):
    card = blend(BASE, TUNED, alpha, tmp_path / "m")
    assert card["sha256"] == file_sha256(tmp_path / "m" / "model.onnx")
    np.testing.assert_allclose(_embed(tmp_path / "m", photos), ends[which], atol=1e-5)


def test_a_blend_lies_between_its_parents_and_its_card_names_them(tmp_path, photos, ends):
    card = blend(BASE, TUNED, 0.3, tmp_path / "m", model_id="grocery-wise30")
    mixed = _embed(tmp_path / "m", photos)
    base, tuned = ends
    to_base = np.sum(mixed * base, axis=1)
    to_tuned = np.sum(mixed * tuned, axis=1)
    between = np.sum(base * tuned, axis=1)
    # Nearer to each parent than the parents are to each other, and nearer to the base at 0.3.
    assert np.all(to_base > between) and np.all(to_tuned > between) and np.all(to_base > to_tuned)
    assert card["id"] == "grocery-wise30" and card["blend"]["alpha"] == 0.3
    parents = {k: card["blend"][k]["id"] for k in ("base", "fine_tuned")}
    assert parents == {
        k: json.loads((f / "model.json").read_text())["id"]
        for k, f in (("base", BASE), ("fine_tuned", TUNED))
    }
    assert card["blend"]["initializers_blended"] > 0


def test_refuses_what_cannot_be_blended(tmp_path):
    with pytest.raises(ValueError, match="alpha"):
        blend(BASE, TUNED, 1.5, tmp_path / "m")
    with pytest.raises(ValueError, match="int8"):
        blend(BASE, REPO_MODELS / "efficientnet-lite0-384-int8", 0.5, tmp_path / "m")
    with pytest.raises(ValueError, match="one of the two"):
        blend(BASE, TUNED, 0.5, TUNED)
    other = tmp_path / "other"
    shutil.copytree(TUNED, other)
    card = json.loads((other / "model.json").read_text())
    card["input"]["size"] = 224
    (other / "model.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="preprocess differently"):
        blend(BASE, other, 0.5, tmp_path / "m")
