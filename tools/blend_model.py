"""Blend a base model and its fine-tune in weight space (WiSE-FT) into a new model folder.

    .venv/bin/pip install -e '.[train]'     # the onnx package
    .venv/bin/python tools/blend_model.py layers/model/efficientnet-lite0-384 \\
        layers/model/efficientnet-lite0-384-grocery --alpha 0.5 --out layers/model/grocery-wise50

``alpha`` 0 is the base model, 1 the fine-tune. A blend keeps part of a fine-tune's gain on its
own kind of product and gives back part of what it cost elsewhere; docs/quality.md has the
measured curve. The folder is a model folder like any other (``MODEL_DIR``, ``ModelFolder``);
quantise it with ``visual-search model quantize``. The code is
``src/visual_search/dev/training/blend.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from visual_search.dev.training.blend import blend  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="the pretrained model folder")
    parser.add_argument("tuned", type=Path, help="its fine-tune's model folder (the same graph)")
    parser.add_argument("--alpha", type=float, required=True, help="0: the base, 1: the fine-tune")
    parser.add_argument("--out", type=Path, required=True, help="the model folder to write")
    parser.add_argument("--model-id", help="the new model's id (default: the fine-tune's id + -wiseNN)")
    args = parser.parse_args(argv)
    try:
        card = blend(args.base, args.tuned, args.alpha, args.out, args.model_id)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"id": card["id"], "out": str(args.out), "blend": card["blend"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
