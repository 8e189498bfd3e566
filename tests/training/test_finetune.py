"""``visual-search finetune`` on the demo catalogue at a small input size (fast on 2 cores)."""

from __future__ import annotations

import json
import signal
from dataclasses import replace

import boto3
import numpy as np
import pytest
from moto import mock_aws

from visual_search.training import INSTALL_HINT

torch = pytest.importorskip("torch", reason=f"fine-tune/export tests: {INSTALL_HINT}")
pytest.importorskip("efficientnet_lite_pytorch", reason=f"fine-tune/export tests: {INSTALL_HINT}")

from tests.support.apigw import rest_event
from visual_search.catalog import Catalog, get_catalog
from visual_search.cli import main
from visual_search.config import REPO_MODEL_DIR, ImageLimits, IngestSettings, StoreSettings, get_settings
from visual_search.folders import DEMO_CATALOG
from visual_search.ingest import Ingestor
from visual_search.lambdas import LambdaContext, load_function
from visual_search.model import Embedder, ModelCard, file_sha256, get_embedder
from visual_search.store import CatalogStore, Query, open_backend
from visual_search.sync import Syncer, reindex
from visual_search.training.data import PhotoCache, fingerprint, photos_from, split
from visual_search.training.export import preprocess_for
from visual_search.training.finetune import _weights_digest
from visual_search.training.network import NetworkSpec, build
from visual_search.training.trainer import Interrupted, Recipe, Trainer, embed_all
from visual_search.training.validate import product_recall, unit

SIZE = 128  # small input: an epoch of the demo catalogue takes seconds (at 96 px the average-pooled
# base and one epoch tie on the 10 held-back photos; at 128 px the epoch gains one of them)
BUCKET = "product-images"
# The base is the default model folder's card: its architecture and pooling, at SIZE px.
BASE_CARD = json.loads((REPO_MODEL_DIR / "model.json").read_text())
BASE_ID = BASE_CARD["id"]
BASE_SPEC = replace(NetworkSpec.from_card(BASE_CARD), image_size=SIZE)


def finetune(*args: str) -> int:
    return main(["finetune", str(DEMO_CATALOG), "--image-size", str(SIZE), "--seed", "0", "--quiet", *args])


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """The demo catalogue fine-tuned for one epoch; its folder."""
    out = tmp_path_factory.mktemp("tuned") / "model"
    assert finetune("--out", str(out), "--epochs", "1") == 0
    return out


def test_the_fine_tuned_model_beats_the_base_and_its_card_says_so_truthfully(tuned):
    card = json.loads((tuned / "model.json").read_text())
    assert card["sha256"] == file_sha256(tuned / "model.onnx")
    assert ModelCard.load(tuned).preprocess.size == SIZE
    training = card["training"]
    assert training["base_model"]["id"] == BASE_SPEC.default_id
    assert training["replaces"]["id"] == BASE_ID
    assert card["id"].startswith(f"{BASE_SPEC.default_id}-ft-") and card["id"] != BASE_ID
    assert (training["epochs"], training["seed"], len(training["history"])) == (1, 0, 1)
    photos = photos_from(str(DEMO_CATALOG))
    assert training["catalogue"]["images"] == 60 and training["catalogue"]["products"] == 10
    assert training["catalogue"]["fingerprint"] == fingerprint(photos)
    figures = training["validation"]
    assert figures["fine_tuned"]["recall_at_1"] > figures["base"]["recall_at_1"]
    # The recorded figures are what the exported ONNX model really does on the same split.
    spec = BASE_SPEC
    base = embed_all(build(spec), PhotoCache(photos, preprocess_for(spec)), list(range(len(photos))), "cpu")
    parts = split(photos, 0, base)
    vectors = np.stack(Embedder(tuned).embed_many([p.read() for p in photos]))
    labels = [p.product_id for p in photos]
    again = product_recall(
        vectors[parts.gallery],
        [labels[i] for i in parts.gallery],
        vectors[parts.queries],
        [labels[i] for i in parts.queries],
    )
    assert again.queries == figures["queries"] == len(parts.queries)
    assert abs(again.recall_at_1 - figures["fine_tuned"]["recall_at_1"]) <= 1 / again.queries + 1e-9
    assert not (tuned / ".finetune-checkpoint.pt").exists()


def test_a_fine_tuned_folder_serves_both_functions_through_model_dir(tuned, monkeypatch, demo_images):
    monkeypatch.setenv("MODEL_DIR", str(tuned))
    monkeypatch.setenv("QDRANT_PATH", ":memory:")
    monkeypatch.setenv("BUCKET", BUCKET)
    monkeypatch.delenv("QDRANT_URL", raising=False)
    get_embedder.cache_clear()
    try:
        with mock_aws():
            s3 = boto3.client("s3", region_name="us-east-1")
            s3.create_bucket(Bucket=BUCKET)
            ingest = load_function("ingest")
            search = load_function("search", fresh_catalog=False)  # the same catalogue
            photos = demo_images[::3]
            records = []
            for img in photos:
                key = f"catalog/{img.key}"
                s3.put_object(Bucket=BUCKET, Key=key, Body=img.path.read_bytes(), ContentType="image/jpeg")
                records.append({"eventName": "ObjectCreated:Put", "eventSource": "aws:s3",
                                "s3": {"bucket": {"name": BUCKET}, "object": {"key": key}}})  # fmt: skip
            outcome = ingest.handler({"Records": records}, LambdaContext())
            assert {o["status"] for o in outcome["outcomes"]} == {"indexed"}
            assert len(outcome["outcomes"]) == len(photos)
            query = demo_images[1]  # not indexed; its product is
            event = rest_event(
                "POST", "/search?top_k=3", body=query.path.read_bytes(), content_type="image/jpeg"
            )
            response = search.handler(event, LambdaContext())
            body = json.loads(response["body"])
            assert response["statusCode"] == 200, body
            assert body["model"] == json.loads((tuned / "model.json").read_text())["id"]
            assert body["results"][0]["product_id"] == query.key.split("/")[0]
            get_catalog().store.close()
    finally:
        get_embedder.cache_clear()
        get_catalog.cache_clear()
        get_settings.cache_clear()


def test_a_collection_built_with_the_base_model_is_refused_until_reindexed(tuned, embedder, demo_images):
    fine = Embedder(tuned)
    client = open_backend(StoreSettings(path=":memory:", collection="shop"))

    def catalog_of(model: Embedder) -> Catalog:
        settings = StoreSettings(path=":memory:", collection="shop")
        store = CatalogStore(client, settings, model.model_id, model.dim, model_fingerprint=model.fingerprint)
        return Catalog(model, store)

    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        for img in demo_images[::4]:
            s3.put_object(Bucket=BUCKET, Key=f"catalog/{img.key}", Body=img.path.read_bytes())
        base = catalog_of(embedder)
        Syncer(Ingestor(base, s3, IngestSettings(), ImageLimits())).backfill(BUCKET, "catalog/")
        assert base.store.count() == 15
        tuned_catalog = catalog_of(fine)
        with pytest.raises(Exception, match=BASE_ID):
            tuned_catalog.search_image(demo_images[1].path.read_bytes(), Query(top_k=3))
        reindex(tuned_catalog, s3, log=lambda m: None)
        result = tuned_catalog.search_image(demo_images[1].path.read_bytes(), Query(top_k=3))
        assert result.model_id == fine.model_id and result.hits
        assert result.hits[0].payload["product_id"] == demo_images[1].key.split("/")[0]


def test_finetune_refuses_a_model_that_does_not_improve(tmp_path, capsys):
    """0 epochs: the 'fine-tuned' network is the base network; it cannot beat itself."""
    out = tmp_path / "none"
    assert finetune("--out", str(out), "--epochs", "0") == 3
    err = capsys.readouterr().err
    assert "does not beat the base" in err and "recall@1" in err
    assert not (out / "model.json").exists() and not (out / "model.onnx").exists()


def test_finetune_refuses_when_the_learning_rate_is_zero(tmp_path, capsys):
    out = tmp_path / "none"
    assert finetune("--out", str(out), "--epochs", "1", "--lr", "0") == 3
    assert "does not beat the base" in capsys.readouterr().err
    assert not (out / "model.json").exists()


class InterruptingCache(PhotoCache):
    """Real Ctrl-C: SIGINT is raised while the given training step builds its batch."""

    at_step = 2

    def augmented(self, *args, **kwargs):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == self.at_step:
            signal.raise_signal(signal.SIGINT)
        return super().augmented(*args, **kwargs)


def test_an_interrupted_run_resumes_to_the_same_model_and_the_seed_decides_it(tmp_path):
    spec = NetworkSpec(image_size=64)
    photos = photos_from(str(DEMO_CATALOG))[::3]  # 20 photos of 10 products
    labels = np.asarray([sorted({p.product_id for p in photos}).index(p.product_id) for p in photos])
    recipe = Recipe(epochs=2, batch_size=8)

    def train(seed: int, cache_cls=PhotoCache, checkpoint=None) -> Trainer:
        cache = cache_cls(photos, preprocess_for(spec))
        proxies = unit(np.random.default_rng(0).standard_normal((labels.max() + 1, 1280)))
        return Trainer(
            build(spec), proxies, cache, list(range(len(photos))), labels, recipe, seed, "cpu",
            checkpoint or tmp_path / f"ck-{seed}.pt", "key", log=lambda m: None,
        )  # fmt: skip

    straight = train(0)
    straight.run()
    interrupted = train(0, InterruptingCache, tmp_path / "ck-int.pt")
    with pytest.raises(Interrupted, match="resume"):
        interrupted.run()
    assert (interrupted.state.epoch, interrupted.state.step) == (0, 2)  # stopped after the step in progress
    resumed = train(0, checkpoint=tmp_path / "ck-int.pt")
    assert resumed.resume()
    resumed.run()
    assert _weights_digest(resumed.net) == _weights_digest(straight.net)
    assert [e.loss for e in resumed.state.history] == [e.loss for e in straight.state.history]
    other = train(1)
    other.run()
    assert _weights_digest(other.net) != _weights_digest(straight.net)
