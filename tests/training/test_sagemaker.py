"""Fine-tuning on SageMaker: the entry point run for real as SageMaker lays out a job (input
channels, hyperparameters file, model dir), and the launcher's whole path on moto (the
CreateTrainingJob request, the job's model.tar.gz collected and published to the registry)."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import boto3
import pytest
from moto import mock_aws

from visual_search.dev.training import INSTALL_HINT

pytest.importorskip("torch", reason=f"fine-tune tests: {INSTALL_HINT}")
pytest.importorskip("efficientnet_lite_pytorch", reason=f"fine-tune tests: {INSTALL_HINT}")

from visual_search.config import REPO_MODEL_DIR, get_settings
from visual_search.dev.cli import main
from visual_search.dev.folders import DEMO_CATALOG
from visual_search.dev.training.sagemaker import REPORT, job_main
from visual_search.model import Embedder
from visual_search.registry import ModelRegistry

BUCKET = "product-images"
ROLE = "arn:aws:iam::123456789012:role/visual-search-training"


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """/opt/ml as SageMaker lays it out for one job, and the job run in it."""
    ml = tmp_path_factory.mktemp("opt-ml")
    config = ml / "input" / "config"
    config.mkdir(parents=True)
    # as the launcher sends them: JSON-encoded strings
    hyper = {"epochs": 1, "image-size": 128, "seed": 0, "sagemaker_program": "sagemaker_entry.py"}
    (config / "hyperparameters.json").write_text(json.dumps({k: json.dumps(v) for k, v in hyper.items()}))
    shutil.copytree(DEMO_CATALOG, ml / "input" / "data" / "catalogue")
    shutil.copytree(REPO_MODEL_DIR, ml / "input" / "data" / "base")  # the registry's folder
    env = {
        "SM_INPUT_CONFIG_DIR": str(config),
        "SM_CHANNEL_CATALOGUE": str(ml / "input" / "data" / "catalogue"),
        "SM_CHANNEL_BASE": str(ml / "input" / "data" / "base"),
        "SM_MODEL_DIR": str(ml / "model"),
    }
    assert job_main(env, log=lambda m: None) == 0
    return ml / "model"


def test_the_entry_point_writes_a_loadable_validated_model_folder(job, demo_images):
    report = json.loads((job / REPORT).read_text())
    assert report["accepted"] is True and report["validation"]["verdict"] == "improved"
    card = json.loads((job / "model.json").read_text())
    assert card["id"] == report["model"] and card["input"]["size"] == 128
    assert card["training"]["epochs"] == 1 and card["training"]["validation"] == report["validation"]
    embedder = Embedder(job)  # its sha256 checked against the card
    vector = embedder.embed(demo_images[0].path.read_bytes())
    assert vector.shape == (embedder.dim,) and abs(float((vector**2).sum()) - 1) < 1e-4
    assert not (job / "weights.pt").exists()  # the registry serves the ONNX folder only


def test_the_launcher_starts_the_job_then_collects_and_publishes_its_model(
    job, monkeypatch, tmp_path, capsys
):
    monkeypatch.setenv("MODELS_BUCKET", BUCKET)
    monkeypatch.setenv("MODEL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("QDRANT_PATH", ":memory:")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-south-1")
    get_settings.cache_clear()
    from visual_search.catalog import get_catalog

    get_catalog.cache_clear()
    name = "visual-search-ft-test"
    with mock_aws():
        s3 = boto3.client("s3", region_name="eu-south-1")
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-south-1"})
        # what SageMaker will have written when the job completes: SM_MODEL_DIR, packed
        packed = io.BytesIO()
        with tarfile.open(fileobj=packed, mode="w:gz") as tar:
            for path in job.iterdir():
                tar.add(path, arcname=path.name)
        output = f"models/.training/{name}/output/{name}/output/model.tar.gz"
        s3.put_object(Bucket=BUCKET, Key=output, Body=packed.getvalue())
        code = main(
            ["finetune", "s3://product-images/catalog/", "--sagemaker", "--role", ROLE, "--wait",
             "--job-name", name, "--epochs", "1", "--image-size", "128", "--out", str(tmp_path / "got")]
        )  # fmt: skip
        summary = json.loads(capsys.readouterr().out)
        request = boto3.client("sagemaker", region_name="eu-south-1").describe_training_job(
            TrainingJobName=name
        )
        registry = ModelRegistry(s3, BUCKET, "models/", tmp_path / "check")
        published = {m.id for m in registry.models()}
        source = s3.get_object(Bucket=BUCKET, Key=f"models/.training/{name}/source/sourcedir.tar.gz")
        with tarfile.open(fileobj=io.BytesIO(source["Body"].read()), mode="r:gz") as tar:
            names = set(tar.getnames())
    get_catalog.cache_clear()
    assert code == 0
    model_id = json.loads((job / "model.json").read_text())["id"]
    assert summary["published"] == {
        "id": model_id,
        "status": "published",
        "where": f"s3://{BUCKET}/models/{model_id}",
        "bytes": (job / "model.onnx").stat().st_size,
    }
    base = json.loads((REPO_MODEL_DIR / "model.json").read_text())["id"]
    assert published == {model_id, base}  # the base went up first: the job's base channel
    # the request, as SageMaker recorded it
    image = request["AlgorithmSpecification"]["TrainingImage"]
    registry_host = "692866216735.dkr.ecr.eu-south-1.amazonaws.com"  # eu-south-1's own account
    assert image == f"{registry_host}/pytorch-training:2.3.0-cpu-py311-ubuntu20.04-sagemaker"
    assert request["RoleArn"] == ROLE
    channels = {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in request["InputDataConfig"]
    }
    assert channels == {"catalogue": "s3://product-images/catalog/", "base": f"s3://{BUCKET}/models/{base}/"}
    hyper = {k: json.loads(v) for k, v in request["HyperParameters"].items()}
    assert hyper["sagemaker_program"] == "sagemaker_entry.py"
    assert (
        hyper["sagemaker_submit_directory"]
        == f"s3://{BUCKET}/models/.training/{name}/source/sourcedir.tar.gz"
    )
    assert (hyper["epochs"], hyper["image-size"], hyper["seed"]) == (1, 128, 0)
    assert request["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/models/.training/{name}/output"
    assert request["StoppingCondition"]["MaxRuntimeInSeconds"] == 86400
    assert {"sagemaker_entry.py", "requirements.txt", "visual_search/dev/training/finetune.py"} <= names
    assert not any("__pycache__" in n for n in names)
