"""The model is data: a registry in S3, functions that serve each collection with the model
that built it, and a model change through the ingest fleet while searches keep being answered.

moto S3 and SQS; the real ingest and search functions with the real models (the shipped int8
model as A, the grocery fine-tune as B, published to the registry from its folder) and the
embedded Qdrant engine; the queue drained as Lambda's event source does."""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import time
from pathlib import Path

import boto3
import numpy as np
import pytest
from moto import mock_aws
from PIL import Image

from tests.integration.test_fleet import BUCKET, Fleet, tiny_jpeg
from tests.support.apigw import json_event
from visual_search.catalog import Catalog
from visual_search.config import REPO_MODELS, get_settings
from visual_search.dev.cli import main
from visual_search.dev.lambdas import LambdaContext, load_function
from visual_search.errors import ModelError
from visual_search.ops.fleet import enqueue
from visual_search.ops.migration import estimate, migrate, rollback, status
from visual_search.ops.previous import retire_previous
from visual_search.registry import ModelRegistry, ModelSource, ModelUnavailableError, RegistryConflictError

MODEL_B = REPO_MODELS / "efficientnet-lite0-384-grocery"
B = json.loads((MODEL_B / "model.json").read_text())["id"]
CHECK_S = 0.5  # PROJECTION_CHECK_S of the functions here


def notification(key: str, event: str = "ObjectCreated:Put") -> str:
    record = {
        "eventSource": "aws:s3",
        "eventName": event,
        "s3": {"bucket": {"name": BUCKET}, "object": {"key": key}},
    }
    return json.dumps({"Records": [record]})


class Shop:
    """The ingest function (fleet), the search function with its own catalogue (as a separate
    Lambda instance has: its own space tracker and model cache), and the operator's."""

    def __init__(self, fleet: Fleet, search_app, registry: ModelRegistry, settings):
        self.fleet, self.search_app, self.registry = fleet, search_app, registry
        shared = fleet.catalog

        def separate() -> Catalog:
            models = ModelSource(shared.embedder, registry, settings)
            return Catalog(shared.embedder, shared.store, projection_check_s=CHECK_S, models=models)

        search_app.api.catalog = separate()
        self.operator = separate()

    def search(self, image: bytes) -> tuple[int, dict]:
        event = json_event("POST", "/search", {"image": base64.b64encode(image).decode(), "top_k": 3})
        response = self.search_app.handler(event, LambdaContext())
        return response["statusCode"], json.loads(response["body"])


@pytest.fixture
def shop(monkeypatch, tmp_path, embedder):
    monkeypatch.setenv("QDRANT_PATH", ":memory:")
    monkeypatch.delenv("QDRANT_URL", raising=False)
    monkeypatch.setenv("COLLECTION", "lifecycle")
    monkeypatch.setenv("MODELS_BUCKET", BUCKET)
    monkeypatch.setenv("MODEL_CACHE_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("PROJECTION_CHECK_S", str(CHECK_S))
    monkeypatch.setenv("LEARN_FROM_CLICKS", "false")
    monkeypatch.setenv("RESULT_IMAGE_URLS", "false")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="ingest")["QueueUrl"]
        app = load_function("ingest")
        search_app = load_function("search", fresh_catalog=False)  # the same embedded engine
        settings = get_settings()
        registry = ModelRegistry(s3, BUCKET, "models/", tmp_path / "operator-models")
        try:
            yield Shop(Fleet(app, s3, sqs, url), search_app, registry, settings)
        finally:
            app.ingestor.catalog.store.close()


def photo(n: int, products: int = 20) -> bytes:
    """Photo ``n`` of product ``n % products``: the product's own colour, the photo's own noise
    (so a product's photos look alike, as a catalogue's do, and the adaptation has something to fit)."""
    rng = np.random.default_rng(n)
    base = np.random.default_rng(10_000 + n % products).integers(0, 255, 3)
    pixels = np.clip(base + rng.normal(0, 30, (48, 48, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def build(shop: Shop, images: int, products: int = 20) -> None:
    for n in range(images):
        body = photo(n, products)
        shop.fleet.s3.put_object(Bucket=BUCKET, Key=f"catalog/p{n % products}/{n}.jpg", Body=body)
    enqueue(shop.fleet.ingestor(), shop.fleet.sqs, shop.fleet.url, BUCKET, "catalog/")
    shop.fleet.drain()


# -- the registry ---------------------------------------------------------------------------------


def test_publish_checks_the_card_is_idempotent_and_refuses_another_model_under_a_taken_id(shop, tmp_path):
    registry = shop.registry
    assert registry.publish(MODEL_B)["status"] == "published"
    assert registry.publish(MODEL_B)["status"] == "unchanged"  # the same folder: nothing written
    [listed] = list(registry.models())
    assert (listed.id, listed.size, listed.sha256) == (
        B,
        (MODEL_B / "model.onnx").stat().st_size,
        listed.sha256,
    )
    assert listed.base_model == "efficientnet-lite0-imagenet-384"

    other = tmp_path / "other"
    shutil.copytree(REPO_MODELS / "efficientnet-lite0-384-int8", other)
    card = json.loads((other / "model.json").read_text())
    (other / "model.json").write_text(json.dumps({**card, "id": B}))  # another model, a taken id
    with pytest.raises(RegistryConflictError, match="already holds another model"):
        registry.publish(other)
    (other / "model.json").write_text(json.dumps({**card, "id": "fresh", "sha256": "0" * 64}))
    with pytest.raises(ModelError, match="its card says"):
        registry.publish(other)
    with pytest.raises(ModelError, match="not a folder"):
        registry.publish(tmp_path / "nothing-here")
    assert [m.id for m in registry.models()] == [B]  # nothing of the refused ones was written


def test_a_corrupt_registry_file_is_never_served_and_the_error_names_it(shop):
    shop.registry.publish(MODEL_B)
    shop.fleet.s3.put_object(Bucket=BUCKET, Key=f"models/{B}/model.onnx", Body=b"not the model")
    with pytest.raises(ModelUnavailableError, match=f"model '{B}' .* is corrupt"):
        shop.registry.fetch(B)
    assert not list(shop.registry.cache_dir.glob(f"{B}*"))  # nothing half-written left in the cache
    with pytest.raises(ModelUnavailableError, match="not in the registry"):
        shop.registry.fetch("no-such-model")


def test_model_publish_and_list_on_the_command_line(shop, capsys):
    assert main(["model", "publish", str(MODEL_B)]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "published"
    build(shop, 4, 2)
    capsys.readouterr()  # the functions' logs
    assert main(["model", "list", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["id"] == B and listed["collections"] == [] and listed["current"] is False
    assert main(["model", "publish", str(REPO_MODELS)]) == 1  # a folder that is not a model
    assert "no model card" in capsys.readouterr().err


# -- a model change through the fleet ----------------------------------------------------------


def test_dry_run_prints_the_plan_and_estimate_and_changes_nothing(shop):
    build(shop, 12, 3)
    shop.registry.publish(MODEL_B)
    before = (shop.operator.physical_collection(), sorted(shop.operator.collections()))
    plan = migrate(
        shop.operator, shop.fleet.s3, shop.fleet.sqs, "ingest", B, get_settings().adapt, dry_run=True
    )
    assert plan["images"] == 12 and plan["model"] == B
    assert plan["estimate"] == estimate(12, "fp32").as_dict()
    assert plan["estimate"]["lambda_seconds"] > 0 and plan["estimate"]["dollars"] > 0
    assert (shop.operator.physical_collection(), sorted(shop.operator.collections())) == before
    assert (
        shop.fleet.sqs.get_queue_attributes(QueueUrl=shop.fleet.url, AttributeNames=["All"])["Attributes"][
            "ApproximateNumberOfMessages"
        ]
        == "0"
    )


@pytest.mark.parametrize("bad", ["unknown model", "missing queue", "no registry"])
def test_bad_input_gets_a_clear_error_and_changes_nothing(shop, bad):
    build(shop, 4, 2)
    shop.registry.publish(MODEL_B)
    before = (shop.operator.physical_collection(), sorted(shop.operator.collections()))
    catalog, model, queue = shop.operator, B, "ingest"
    if bad == "unknown model":
        model, match = "no-such-model", "'no-such-model' is not in the registry"
    elif bad == "missing queue":
        queue, match = "no-such-queue", "NonExistentQueue|does not exist"
    else:
        catalog = Catalog(
            shop.operator.embedder, shop.operator.store, models=ModelSource(shop.operator.embedder)
        )
        match = "MODELS_BUCKET"
    with pytest.raises(Exception, match=match):
        migrate(catalog, shop.fleet.s3, shop.fleet.sqs, queue, model, get_settings().adapt)
    assert (shop.operator.physical_collection(), sorted(shop.operator.collections())) == before


class Searches:
    """A loop of searches through the search function, each answer noted with its time."""

    def __init__(self, shop: Shop, image: bytes):
        self.shop, self.image = shop, image
        self.answers: list[tuple[float, int, str | None, float | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            code, body = self.shop.search(self.image)
            results = body.get("results") or []
            self.answers.append((started, code, body.get("model"), results[0]["score"] if results else None))
            time.sleep(0.02)

    def __enter__(self) -> Searches:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)

    def since(self, moment: float) -> list[tuple]:
        return [a for a in self.answers if a[0] >= moment]


def run_in_thread(target) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = target()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_200_image_catalogue_moves_to_model_b_and_back_with_no_failed_search(shop):
    build(shop, 200)
    a = shop.operator.model_id
    assert a != B
    assert main(["model", "publish", str(MODEL_B)]) == 0
    switched: list[float] = []

    def log(message: str) -> None:
        if "now points at" in message:
            switched.append(time.monotonic())

    fleet = shop.fleet
    with Searches(shop, photo(7)) as searches:  # photo 7 is in the catalogue: it finds itself
        time.sleep(0.5)
        thread, outcome = run_in_thread(
            lambda: migrate(
                shop.operator,
                fleet.s3,
                fleet.sqs,
                fleet.url,
                B,
                get_settings().adapt,
                poll_s=0.05,
                settle=3,
                timeout_s=300,
                log=log,
            )
        )
        for _ in range(600):  # the command has made its collection and queued the catalogue
            if shop.operator.reindex_target() and fleet.drain_once():
                break
            time.sleep(0.05)
        # changes while the model changes: an upload and a delete, as the bucket notifies them
        fleet.put("catalog/p0/new.jpg", 5000)
        fleet.sqs.send_message(QueueUrl=fleet.url, MessageBody=notification("catalog/p0/new.jpg"))
        fleet.s3.delete_object(Bucket=BUCKET, Key="catalog/p1/1.jpg")
        fleet.sqs.send_message(
            QueueUrl=fleet.url, MessageBody=notification("catalog/p1/1.jpg", "ObjectRemoved:Delete")
        )
        progress = status(shop.operator)
        assert progress["state"] == "building" and progress["migration"]["model"] == B
        while thread.is_alive():
            fleet.drain_once()
            time.sleep(0.02)
        assert "error" not in outcome, outcome.get("error")
        time.sleep(CHECK_S + 1.0)
    answers = searches.answers
    assert answers and all(code == 200 for _, code, _, _ in answers), "a search failed"
    # every answer from one model: the query embedded by the model of the vectors it met (a
    # photo of the catalogue finds itself), never one model's query against the other's vectors
    assert {model for _, _, model, _ in answers} == {a, B}
    assert all(score is not None and score > 0.99 for _, _, _, score in answers)
    assert all(model == B for _, _, model, _ in searches.since(switched[0] + CHECK_S + 0.5))

    models = [model for _, _, model, _ in answers]
    print(f"\n{len(answers)} searches during the change: {models.count(a)} by {a}, {models.count(B)} by {B}")
    result = outcome["result"]
    assert result["model"] == B and result["previous_kept_until"]
    catalog = fleet.catalog
    new = catalog.physical_collection()
    assert catalog.metadata_of(new)["model_card_id"] == B
    # the adaptation was fitted for B before the alias moved, once: no answer from B's raw space
    assert len(switched) == 1 and result["adapt"]["status"] == "adapted"
    assert new == result["collection"] == result["adapt"]["collection"]
    assert catalog.metadata_of(new)["projection_id"] == result["adapt"]["projection_id"]
    keys = {h.payload["key"]: h.payload["model_id"] for h in catalog.images_in(BUCKET)}
    assert len(keys) == 200 and "catalog/p0/new.jpg" in keys and "catalog/p1/1.jpg" not in keys
    assert set(keys.values()) == {B}  # every image, the ones changed meanwhile too, by model B
    assert status(shop.operator)["previous"]["model"] == a

    with Searches(shop, photo(9)) as searches:
        time.sleep(0.3)
        back = time.monotonic()
        assert rollback(shop.operator)["model"] == a
        time.sleep(CHECK_S + 1.5)
    assert all(code == 200 for _, code, _, _ in searches.answers), "a search failed during the rollback"
    print(f"{len(searches.answers)} searches during the rollback, none failed")
    assert all(model == a for _, _, model, _ in searches.since(back + CHECK_S + 0.5))
    assert status(shop.operator)["previous"]["model"] == B  # a second rollback would go forward


def test_a_model_whose_file_stops_matching_its_card_is_refused_before_the_switch(shop):
    build(shop, 24, 4)
    shop.registry.publish(MODEL_B)
    # the functions and the operator loaded B while it was sound; then the registry's file changes
    shop.fleet.catalog.registry_model(B)
    shop.operator.registry_model(B)
    shop.fleet.s3.put_object(Bucket=BUCKET, Key=f"models/{B}/model.onnx", Body=b"tampered")
    before = shop.operator.physical_collection()
    thread, outcome = run_in_thread(
        lambda: migrate(
            shop.operator,
            shop.fleet.s3,
            shop.fleet.sqs,
            shop.fleet.url,
            B,
            get_settings().adapt,
            poll_s=0.05,
            settle=2,
            timeout_s=120,
            log=lambda m: None,
        )
    )
    while thread.is_alive():
        shop.fleet.drain_once()
        time.sleep(0.02)
    assert isinstance(outcome.get("error"), ModelUnavailableError) and "corrupt" in str(outcome["error"])
    assert shop.operator.physical_collection() == before and shop.operator.reindex_target() is None
    assert len(shop.operator.collections()) == 1  # the half-built collection is gone
    assert shop.search(tiny_jpeg(3))[0] == 200


def test_a_collection_whose_model_is_not_in_the_registry_answers_503_naming_it(shop):
    build(shop, 4, 2)
    catalog = shop.fleet.catalog
    catalog.update_metadata_of(
        catalog.physical_collection(), {"model_id": "gone-model", "model_card_id": "gone-model"}
    )
    shop.search_app.api.catalog.spaces.invalidate()
    code, body = shop.search(tiny_jpeg(1))
    assert code == 503 and "gone-model" in body["error"]["message"]


def test_rollback_without_a_previous_collection_is_refused_and_an_expired_one_is_dropped(shop):
    build(shop, 4, 2)
    with pytest.raises(ModelError, match="no previous collection"):
        rollback(shop.operator)
    current = shop.operator.physical_collection()
    kept = shop.operator.create_collection("lifecycle-kept", shop.operator.embedder.fields, {})
    shop.operator.update_metadata_of(kept.collection, {"previous_kept_until": "2020-01-01T00:00:00+00:00"})
    shop.operator.set_previous(kept.collection)
    assert retire_previous(shop.operator) == "lifecycle-kept"
    assert shop.operator.collections() == [current] and shop.operator.previous_collection() is None


def test_status_reports_the_serving_model(shop):
    build(shop, 4, 2)
    state = status(shop.operator)
    assert state["state"] == "idle" and state["model"] == shop.operator.model_id
    assert Path(get_settings().models.cache_dir).name == "models"


# -- fine-tuning on SageMaker: the launcher's requests (the entry point: tests/training) -------


def test_a_gpu_instance_gets_the_gpu_image_and_a_refused_job_leaves_nothing_behind(shop):
    from botocore.stub import Stubber

    from visual_search.config import REPO_MODEL_DIR
    from visual_search.dev.training.sagemaker import launch, training_image

    assert training_image("us-east-1", "ml.g4dn.xlarge") == (
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.3.0-gpu-py311-cu121-ubuntu20.04-sagemaker"
    )
    sagemaker = boto3.client("sagemaker", region_name="us-east-1")
    with Stubber(sagemaker) as stub:  # what SageMaker answers a role it may not pass or assume
        stub.add_client_error(
            "create_training_job", "AccessDeniedException", "not authorized to iam:PassRole"
        )
        with pytest.raises(ValueError, match=r"SageMaker refused the training job.*iam:PassRole"):
            launch(
                sagemaker,
                shop.fleet.s3,
                shop.registry,
                REPO_MODEL_DIR,
                "s3://product-images/catalog/",
                "arn:aws:iam::123456789012:role/no-permission",
                name="refused",
            )
    left = shop.fleet.s3.list_objects_v2(Bucket=BUCKET, Prefix="models/.training/").get("KeyCount")
    assert left == 0
    with pytest.raises(ValueError, match="ARN of a SageMaker execution role"):
        launch(sagemaker, shop.fleet.s3, shop.registry, REPO_MODEL_DIR, "s3://b/p/", "my-role")
    with pytest.raises(ValueError, match="photos in S3"):
        launch(
            sagemaker, shop.fleet.s3, shop.registry, REPO_MODEL_DIR, "/local/folder", "arn:aws:iam::1:role/r"
        )


def test_reindex_with_a_registry_model_in_process_then_status_and_rollback_on_the_command_line(shop, capsys):
    """Without the fleet (a laptop, the local store): the same change, re-embedded here."""
    build(shop, 12, 3)
    a = shop.operator.model_id
    shop.registry.publish(MODEL_B)
    capsys.readouterr()
    assert main(["reindex", "--model", B, "--quiet", "--keep-previous", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == B and result["previous_kept_until"]
    catalog = shop.fleet.catalog
    assert {h.payload["model_id"] for h in catalog.images_in(BUCKET)} == {B}
    assert len(list(catalog.images_in(BUCKET))) == 12
    assert main(["model", "status"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert (state["model"], state["previous"]["model"]) == (B, a)
    assert main(["model", "rollback"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == a
    shop.search_app.api.catalog.spaces.invalidate()
    code, body = shop.search(photo(4, 3))
    assert code == 200 and body["model"] == a and body["results"][0]["score"] > 0.99
    assert main(["reindex", "--dry-run"]) == 1  # an estimate is of a change through the fleet
    assert "--via-queue" in capsys.readouterr().err


def test_the_local_stacks_model_routes_run_the_same_changes_and_refuse_bad_requests(shop):
    from visual_search.dev.devstack.models import ModelOperations

    build(shop, 8, 2)
    shop.registry.publish(MODEL_B)
    ops = ModelOperations(shop.fleet.catalog, shop.fleet.s3, BUCKET, log=lambda m: None)
    a = shop.fleet.catalog.model_id
    assert ops.handle("GET", "/_local/nothing", b"")[0] == 404
    assert ops.handle("POST", "/_local/model/status", b"")[0] == 405
    assert ops.handle("POST", "/_local/reindex", b"[1]")[0] == 400
    code, answer = ops.handle("POST", "/_local/reindex", json.dumps({"model": "nope"}).encode())
    assert code == 400 and "'nope' is not in the registry" in answer["error"]["message"]
    code, answer = ops.handle("POST", "/_local/reindex", json.dumps({"model": B}).encode())
    assert code == 200 and answer["model"] == B and not ops.busy()
    code, state = ops.handle("GET", "/_local/model/status", b"")
    assert code == 200 and state["serving"] == B and state["previous"]["model"] == a
    assert sorted(state["usage"]) == sorted([B, shop.fleet.catalog.layer_model.metadata["model_card_id"]])
    code, answer = ops.handle("POST", "/_local/model/rollback", b"{}")
    assert code == 200 and answer["model"] == a
