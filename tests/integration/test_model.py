"""The real shipped model on real product photos."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.conftest import jpeg_bytes
from visual_search.config import REPO_MODEL_DIR
from visual_search.errors import ModelError
from visual_search.model import Embedder, ModelCard, file_sha256


def variants(data: bytes) -> dict[str, bytes]:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size
    return {
        "flipped": jpeg_bytes(ImageOps.mirror(image)),
        "cropped": jpeg_bytes(image.crop((int(w * 0.1), int(h * 0.1), int(w * 0.9), int(h * 0.9)))),
        "recompressed": jpeg_bytes(image, quality=35),
        "rescaled": jpeg_bytes(image.resize((w * 3, h * 3), Image.Resampling.BICUBIC)),
    }


def test_embeddings_are_unit_vectors_of_the_card_dimension(embedder, demo_images):
    vectors = embedder.embed_many([img.path.read_bytes() for img in demo_images[:8]])
    matrix = np.stack(vectors)
    assert matrix.shape == (8, embedder.card.embedding_dim) == (8, 1280)
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-4)


def test_batched_and_single_inference_agree(embedder, demo_images):
    data = [img.path.read_bytes() for img in demo_images[:5]]
    batched = np.stack(embedder.embed_many(data))
    single = np.stack([embedder.embed(d) for d in data])
    assert np.allclose(batched, single, atol=1e-5)


def test_altered_copy_is_nearer_its_original_than_any_other_product(embedder, demo_images):
    """Per product, one photo; a flipped/cropped/recompressed/rescaled copy of it must be
    nearer to it than to every other product's photos."""
    by_product: dict[str, list] = {}
    for img in demo_images:
        by_product.setdefault(img.key.split("/")[0], []).append(img)
    originals = {p: imgs[0] for p, imgs in by_product.items()}
    others = [img for imgs in by_product.values() for img in imgs]
    other_vectors = np.stack(embedder.embed_many([img.path.read_bytes() for img in others]))
    failures = []
    for product, original in originals.items():
        original_vector = embedder.embed(original.path.read_bytes())
        for name, copy in variants(original.path.read_bytes()).items():
            vector = embedder.embed(copy)
            to_original = float(vector @ original_vector)
            foreign = [
                float(vector @ v) for img, v in zip(others, other_vectors) if img.key.split("/")[0] != product
            ]
            if to_original <= max(foreign):
                failures.append((product, name, to_original, max(foreign)))
    assert not failures, failures


def test_bad_image_in_a_batch_does_not_spoil_the_others(embedder, demo_images):
    good = demo_images[0].path.read_bytes()
    results = embedder.embed_many([good, b"not an image", good])
    assert isinstance(results[1], Exception)
    assert np.allclose(results[0], results[2]) and results[0].shape == (1280,)


def test_model_card_describes_the_shipped_onnx(embedder):
    card = embedder.card
    assert card.id == "efficientnet-lite0-384-grocery45-wise30-int8" and card.distance == "cosine"
    assert card.preprocess.size == 384 and card.preprocess.interpolation == "bicubic"
    assert file_sha256(embedder.model_dir / "model.onnx") == card.sha256
    raw = json.loads((embedder.model_dir / "model.json").read_text())
    for field in (
        "id",
        "version",
        "embedding_dim",
        "distance",
        "input",
        "outputs",
        "sha256",
        "license",
        "source",
    ):
        assert field in raw


def test_model_dir_with_a_tampered_onnx_is_refused(embedder, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(embedder.model_dir, folder)
    card = json.loads((folder / "model.json").read_text())
    card["sha256"] = "0" * 64
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="sha256"):
        Embedder(folder)


def test_missing_or_broken_card_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match=r"model\.json"):
        ModelCard.load(tmp_path)
    (tmp_path / "model.json").write_text('{"id": "x"}')
    with pytest.raises(ModelError, match="missing or has a bad field"):
        ModelCard.load(tmp_path)


def test_another_model_folder_loads_with_no_code_change(embedder, tmp_path, monkeypatch):
    """MODEL_DIR selects any folder; its card's id and preprocessing are what is used."""
    folder = tmp_path / "my-model"
    shutil.copytree(embedder.model_dir, folder)
    card = json.loads((folder / "model.json").read_text())
    card["id"] = "my-shop-model"
    card["input"]["crop"] = "full"
    (folder / "model.json").write_text(json.dumps(card))
    monkeypatch.setenv("MODEL_DIR", str(folder))
    from visual_search.config import load_settings
    from visual_search.model import load_embedder

    other = load_embedder(load_settings())
    assert other.model_id == "my-shop-model" and other.card.preprocess.crop == "full"


def test_a_card_edited_without_a_new_id_cannot_share_a_collection(embedder, tmp_path):
    """Same id, other version and preprocessing: another embedding space, refused by the
    collection the first one built (its fingerprint is in the collection's metadata)."""
    from visual_search.config import StoreSettings
    from visual_search.errors import ModelMismatchError
    from visual_search.model import Embedder
    from visual_search.store import CatalogStore, open_backend

    folder = tmp_path / "edited"
    shutil.copytree(embedder.model_dir, folder)
    card = json.loads((folder / "model.json").read_text())
    card["version"], card["input"]["crop"] = "2", "center"
    (folder / "model.json").write_text(json.dumps(card))
    edited = Embedder(folder, threads=1)
    assert edited.model_id == embedder.model_id and edited.fingerprint != embedder.fingerprint
    assert Embedder(embedder.model_dir, threads=1).fingerprint == embedder.fingerprint

    settings = StoreSettings(path=":memory:", collection="fingerprint")
    client = open_backend(settings)

    def store(model):
        return CatalogStore(client, settings, model.model_id, model.dim, model_fingerprint=model.fingerprint)

    assert store(embedder).count() == 0
    with pytest.raises(ModelMismatchError, match="fingerprint"):
        store(edited).count()
    # a store that knows no fingerprint (made before it existed) is not refused
    assert CatalogStore(client, settings, embedder.model_id, embedder.dim).count() == 0


SHIPPED_FOLDERS = sorted(p for p in (REPO_MODEL_DIR.parent).iterdir() if (p / "model.json").is_file())


@pytest.mark.parametrize("folder", SHIPPED_FOLDERS, ids=lambda p: p.name)
def test_every_shipped_model_folder_loads_and_matches_its_card(folder, demo_images):
    """Every folder of layers/model/ ships in the model layer and may be chosen with ModelFolder /
    MODEL_DIR: its card names the file's sha256, and it embeds the same way as the default."""
    model = Embedder(folder)
    assert file_sha256(folder / "model.onnx") == model.card.sha256
    vectors = np.stack(model.embed_many([img.path.read_bytes() for img in demo_images[:4]]))
    assert vectors.shape == (4, model.card.embedding_dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert len({m.card.id for m in map(Embedder, SHIPPED_FOLDERS)}) == len(SHIPPED_FOLDERS)


def test_grocery_model_is_a_fine_tune_of_the_default_with_its_data_named():
    grocery = json.loads(
        (REPO_MODEL_DIR.parent / "efficientnet-lite0-384-grocery" / "model.json").read_text()
    )
    default = json.loads((REPO_MODEL_DIR.parent / "efficientnet-lite0-384" / "model.json").read_text())
    assert grocery["training"]["base_model"]["id"] == default["id"]
    assert grocery["input"] == default["input"] and grocery["pooling"] == default["pooling"]
    assert "MIT" in grocery["source"]["training"] and grocery["sha256"] != default["sha256"]


def test_the_default_is_the_shipped_models_blended_then_quantised(embedder, demo_images, tmp_path):
    """The shipped default is the ImageNet model and its grocery fine-tune (both in layers/model/)
    blended in weight space, then statically quantised: its card names both parents, alpha and
    the fp32 file it was quantised from; blending the parents again gives that very file, and the
    int8 vectors point where its vectors do."""
    pytest.importorskip("onnx", reason="re-blending needs the onnx package (the train extra)")
    from visual_search.dev.training.blend import blend

    models = REPO_MODEL_DIR.parent
    card = json.loads((REPO_MODEL_DIR / "model.json").read_text())
    base, tuned = (
        json.loads((models / f / "model.json").read_text())
        for f in ("efficientnet-lite0-384", "efficientnet-lite0-384-grocery")
    )
    assert card["blend"]["base"] == {"id": base["id"], "sha256": base["sha256"]}
    assert card["blend"]["fine_tuned"] == {"id": tuned["id"], "sha256": tuned["sha256"]}
    assert card["precision"] == "int8" and card["quantization"]["format"] == "QDQ"
    assert card["quantization"]["calibration"]["images"] >= 100
    fp32_dir = tmp_path / "blend"
    again = blend(
        models / "efficientnet-lite0-384",
        models / "efficientnet-lite0-384-grocery",
        card["blend"]["alpha"],
        fp32_dir,
    )
    assert card["quantization"]["from"]["sha256"] == again["sha256"]
    assert embedder.model_dir.resolve() == REPO_MODEL_DIR.resolve()
    photos = [img.path.read_bytes() for img in demo_images]
    int8 = np.stack(embedder.embed_many(photos))
    fp32 = np.stack(Embedder(fp32_dir).embed_many(photos))
    agreement = np.sum(int8 * fp32, axis=1)
    assert agreement.min() > 0.95, agreement.min()

    # Each photo's nearest other photo is the same one in both, for nearly all of them.
    def nearest(v):
        sims = v @ v.T
        np.fill_diagonal(sims, -2)
        return sims.argmax(axis=1)

    assert np.mean(nearest(int8) == nearest(fp32)) >= 0.9
