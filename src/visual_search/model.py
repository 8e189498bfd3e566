"""The embedding model: one ONNX session per process, described by its model card.

A model is a folder holding ``model.onnx`` and ``model.json`` (the card: id, embedding size,
distance, preprocessing, output names, sha256 of the ONNX file). ``MODEL_DIR`` points at another
folder to swap models (say a CLIP image tower) with no code change. The session is created once
per process; Lambda handlers create it at import time so the init phase pays for it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .config import ImageLimits, Settings, get_settings
from .errors import ImageError, ModelError
from .images import Preprocess, Region, decode

if TYPE_CHECKING:  # pragma: no cover
    from .store import ModelFields

DISTANCES = ("cosine", "dot", "euclid")


def _per_channel(values: Sequence[float], name: str) -> tuple[float, float, float]:
    """An RGB triple of a model card (mean or std): three numbers."""
    channels = tuple(float(v) for v in values)
    if len(channels) != 3:
        raise ValueError(f"input.{name} needs three values (R, G, B), got {list(values)!r}")
    return channels[0], channels[1], channels[2]


@dataclass(frozen=True)
class ModelCard:
    id: str
    version: str
    embedding_dim: int
    distance: str
    preprocess: Preprocess
    input_name: str
    embedding_output: str
    logits_output: str | None
    sha256: str | None
    normalized: bool
    license: str | None
    source: dict

    @classmethod
    def load(cls, model_dir: Path) -> ModelCard:
        path = model_dir / "model.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelError(
                f"no model card at {path}; a model folder holds model.onnx and model.json (set MODEL_DIR)"
            ) from None
        except json.JSONDecodeError as exc:
            raise ModelError(f"model card {path} is not valid JSON: {exc}") from None
        try:
            inp = raw["input"]
            card = cls(
                id=str(raw["id"]),
                version=str(raw.get("version", "1")),
                embedding_dim=int(raw["embedding_dim"]),
                distance=str(raw["distance"]).lower(),
                preprocess=Preprocess(
                    size=int(inp["size"]),
                    crop=inp.get("crop", "center"),
                    crop_fraction=float(inp.get("crop_fraction", 1.0)),
                    mean=_per_channel(inp["mean"], "mean"),
                    std=_per_channel(inp["std"], "std"),
                    interpolation=inp.get("interpolation", "bicubic"),
                ),
                input_name=inp.get("name", "pixels"),
                embedding_output=raw["outputs"]["embedding"],
                logits_output=raw["outputs"].get("logits"),
                sha256=raw.get("sha256"),
                normalized=bool(raw.get("normalized", False)),
                license=raw.get("license"),
                source=raw.get("source", {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model card {path} is missing or has a bad field: {exc}") from None
        if card.distance not in DISTANCES:
            raise ModelError(f"model card {path}: distance must be one of {DISTANCES}")
        return card


def file_sha256(path: Path) -> str:
    # file_digest reads into one reused buffer: ~20% faster on the 19 MB model than new 1 MB
    # chunks (each a fresh allocation to fault in), and the check runs in every cold start.
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class Embedder:
    """Owns the ONNX session and turns image bytes into unit-length embedding vectors."""

    def __init__(
        self,
        model_dir: Path,
        threads: int = 1,
        max_batch: int = 16,
        limits: ImageLimits | None = None,
        verify: bool = True,
        flip_tta: bool = False,
        crop: str | None = None,
    ):
        import onnxruntime as ort  # heavy: imported only where a model is really loaded

        self.model_dir = Path(model_dir)
        self.card = ModelCard.load(self.model_dir)
        if crop:  # evaluation override: "center" (ImageNet's 87.5% centre crop) or "full"
            from dataclasses import replace

            fraction = 0.875 if crop == "center" else 1.0
            self.card = replace(
                self.card, preprocess=replace(self.card.preprocess, crop=crop, crop_fraction=fraction)
            )
        # Test-time augmentation: average the embeddings of the image and its mirror image.
        self.flip_tta = flip_tta
        onnx_path = self.model_dir / "model.onnx"
        if not onnx_path.is_file():
            raise ModelError(f"no model.onnx in {self.model_dir}")
        expected = self.card.sha256 if verify else None
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No busy-waiting between runs: on Lambda's few vCPUs the spinning threads would take
        # the CPU from the decoding threads that run between inferences (measured: a single
        # embed is ~20% faster without spinning, docs/benchmarks.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # The sha256 is computed while the session is made (hashlib releases the GIL): with a
        # second vCPU its ~13 ms of CPU overlap the session's instead of adding to the init's
        # wall-clock time. A file that does not match still fails here, before any embedding,
        # whatever the session made of it.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256") as hashing:
            digest = hashing.submit(file_sha256, onnx_path) if expected else None
            try:
                self.session = ort.InferenceSession(
                    str(onnx_path), options, providers=["CPUExecutionProvider"]
                )
            finally:
                if digest is not None and digest.result() != expected:
                    raise ModelError(f"{onnx_path} does not match the sha256 in its model card")
        self.max_batch = max(1, max_batch)
        self.limits = limits or ImageLimits()
        self._decoders = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="decode")
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        """The embedding space's id: the model, plus any change to how it embeds."""
        suffix = "+flip" if self.flip_tta else ""
        return self.card.id + suffix

    @property
    def fingerprint(self) -> str:
        """What, besides the id, decides the embedding space: the weights (sha256), the card's
        version and preprocessing, the output and pooling. A card edited without a new id
        still gets a different fingerprint, and its collection refuses the other's vectors."""
        card = self.card
        parts = {
            "version": card.version,
            "sha256": card.sha256,
            "dim": card.embedding_dim,
            "distance": card.distance,
            "preprocess": asdict(card.preprocess),
            "output": card.embedding_output,
            "normalized": card.normalized,
            "flip": self.flip_tta,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def dim(self) -> int:
        return self.card.embedding_dim

    @property
    def fields(self) -> ModelFields:
        """What a collection this model fills records of it: its id and fingerprint, and
        where the registry keeps it (the card's id and the weights' sha256)."""
        from .store import ModelFields

        return ModelFields(
            self.model_id,
            self.dim,
            self.card.distance,
            self.fingerprint,
            {"model_card_id": self.card.id, "model_sha256": self.card.sha256},
        )

    def preprocess(self, data: bytes, region: Region | None = None) -> np.ndarray:
        return decode(data, self.card.preprocess, self.limits, region)

    def preprocess_many(self, images: Sequence[bytes]) -> list[np.ndarray | ImageError]:
        """Decode in parallel (Pillow releases the GIL); bad images come back as their error."""

        def one(data: bytes) -> np.ndarray | ImageError:
            try:
                return self.preprocess(data)
            except ImageError as exc:
                return exc

        if len(images) == 1:
            return [one(images[0])]
        return list(self._decoders.map(one, images))

    def embed_pixels(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 -> (N, dim) float32 unit vectors, in batches of max_batch."""
        if batch.ndim != 4:
            raise ValueError(f"expected a (N, C, H, W) batch, got shape {batch.shape}")
        outputs = []
        for start in range(0, len(batch), self.max_batch):
            chunk = np.ascontiguousarray(batch[start : start + self.max_batch], dtype=np.float32)
            outputs.append(self._run(chunk))
        vectors = np.concatenate(outputs) if outputs else np.zeros((0, self.dim), np.float32)
        if self.flip_tta or not self.card.normalized:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        return vectors.astype(np.float32, copy=False)

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        def run(x):
            return self.session.run(
                [self.card.embedding_output],
                {self.card.input_name: x},
            )[0]

        if not self.flip_tta:
            return run(chunk)
        both = run(np.concatenate([chunk, np.ascontiguousarray(chunk[..., ::-1])]))
        return both[: len(chunk)] + both[len(chunk) :]

    def embed(self, data: bytes) -> np.ndarray:
        """One image's bytes -> its embedding; raises ImageError for bad input."""
        return self.embed_pixels(self.preprocess(data)[None])[0]

    def embed_many(self, images: Sequence[bytes]) -> list[np.ndarray | ImageError]:
        """Many images in one batched inference; each slot holds a vector or the image's error."""
        return self.embed_prepared(self.preprocess_many(images))

    def embed_prepared(self, decoded: Sequence[np.ndarray | ImageError]) -> list[np.ndarray | ImageError]:
        """Already decoded images (or their errors) -> vectors (or the same errors)."""
        good = [i for i, item in enumerate(decoded) if isinstance(item, np.ndarray)]
        results: list[np.ndarray | ImageError] = list(decoded)
        if good:
            vectors = self.embed_pixels(np.stack([np.asarray(decoded[i]) for i in good]))
            for i, vector in zip(good, vectors):
                results[i] = vector
        return results


def load_embedder(settings: Settings | None = None) -> Embedder:
    settings = settings or get_settings()
    return Embedder(
        settings.model_dir,
        threads=settings.ort_threads,
        max_batch=settings.max_batch,
        limits=settings.images,
        flip_tta=settings.flip_tta,
    )


def load_reranker(settings: Settings | None = None) -> Embedder | None:
    """The optional second, more precise model (RERANK_MODEL_DIR), or None."""
    settings = settings or get_settings()
    if not settings.rerank_model_dir:
        return None
    return Embedder(
        settings.rerank_model_dir,
        threads=settings.ort_threads,
        max_batch=settings.max_batch,
        limits=settings.images,
    )


@lru_cache(maxsize=1)
def get_embedder() -> Embedder:
    """The process-wide embedder (one ONNX session per process)."""
    return load_embedder()
