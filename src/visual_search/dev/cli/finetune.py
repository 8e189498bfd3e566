"""``visual-search finetune``: train the model on a catalogue's own photos (the work is
../training/'s: here, on this machine, or as a SageMaker job)."""

from __future__ import annotations

from .common import int_in, log_to_stderr, progress


def add(sub) -> None:
    finetune = sub.add_parser(
        "finetune",
        help="fine-tune the model on a catalogue's own photos (needs the train extra: torch)",
        description="Train the current model's architecture from its ImageNet weights on the "
        "product labels of SOURCE, validate on shoppers' photos (--shopper-views) or held-back "
        "ones and write a model folder (model.onnx + model.json) for MODEL_DIR when it beats the "
        "base model (or the held-back photos cannot tell; --force writes it anyway).",
    )
    finetune.add_argument("source", help="a folder (one subfolder per product) or s3://bucket/prefix")
    finetune.add_argument(
        "--out", help="the model folder to write (with --sagemaker --wait: where the job's model is unpacked)"
    )
    _add_training_options(finetune)
    _add_sagemaker_options(finetune)
    finetune.add_argument("--quiet", action="store_true", help="no progress bars")
    finetune.set_defaults(func=run)


def _add_training_options(finetune) -> None:
    finetune.add_argument("--epochs", type=int_in(0, 100), help="training epochs (default 4)")
    finetune.add_argument(
        "--image-size", type=int_in(32, 1024), help="input px (default: the current model's)"
    )
    finetune.add_argument("--seed", type=int, default=0, help="seed of the split, order and augmentation")
    finetune.add_argument("--device", choices=["cpu", "cuda"], help="default: CUDA when present, else CPU")
    finetune.add_argument("--lr", type=float, help="peak learning rate (default 1e-4)")
    finetune.add_argument(
        "--shopper-views",
        metavar="PATTERNS",
        help="file names or keys matching these comma-separated patterns ('val_*,test_*', "
        "'shopper/*') are shoppers' photos: never trained on, the accept check decides on them "
        "(default: the shopper views shoppers' clicks left under shopper-views/ once there are "
        "30 of them from 3 products or more, else photos of each product held back)",
    )
    finetune.add_argument(
        "--force", action="store_true", help="write the model even when the accept check refuses it"
    )
    finetune.add_argument(
        "--int8",
        action="store_true",
        help="also write OUT-int8: the fine-tuned model statically quantised, calibrated on SOURCE",
    )
    finetune.add_argument("--reindex", action="store_true", help="then move the catalogue to the new model")


def _add_sagemaker_options(finetune) -> None:
    finetune.add_argument(
        "--sagemaker",
        action="store_true",
        help="run the fine-tune as a SageMaker training job (AWS's PyTorch image, this trainer as entry "
        "point) on the photos of s3://bucket/prefix; needs --role and MODELS_BUCKET",
    )
    finetune.add_argument("--role", metavar="ARN", help="with --sagemaker: the job's execution role")
    finetune.add_argument(
        "--instance-type", default="ml.m5.2xlarge", help="with --sagemaker: the instance (ml.m5.2xlarge)"
    )
    finetune.add_argument(
        "--wait",
        action="store_true",
        help="with --sagemaker: follow the job, then publish its model to the registry when it beat the "
        "current one",
    )
    finetune.add_argument(
        "--then-reindex",
        metavar="QUEUE",
        help="with --sagemaker: then move the catalogue to the published model through this ingest queue",
    )
    finetune.add_argument("--job-name", help="with --sagemaker: the training job's name (default: by time)")
    finetune.add_argument(
        "--max-runtime",
        type=int_in(60, 28 * 86400),
        default=86400,
        metavar="S",
        help="with --sagemaker: stop the job after S seconds (86400)",
    )


def run(args) -> int:
    if args.sagemaker:
        if not args.role:
            raise ValueError("--sagemaker needs --role ARN (the template's TrainingRoleArn output)")
        from ..training import sagemaker

        return sagemaker.run(args, log_to_stderr)
    if not args.out:
        raise ValueError("give --out DIR: the model folder to write")
    from ..training.command import run as train

    return train(args, lambda desc, total: progress(None, total, desc, args.quiet))
