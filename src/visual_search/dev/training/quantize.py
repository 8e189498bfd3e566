"""``visual-search model quantize DIR --calibration FOLDER --out OUT``: a statically quantised model.

onnxruntime's static quantisation in QDQ form: int8 weights per output channel, uint8 activations
whose ranges are calibrated on catalogue photos preprocessed exactly as the service does
(``Embedder.preprocess``). The convolutions and matrix products run in int8; the pooling and the
normalisation of the embedding stay in float. The folder written is a model folder like any other
(``MODEL_DIR``, the Lambda model layer): its card records the precision, the calibration set and
the model it was made from. Needs the ``onnx`` package (the ``train`` extra).
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ...model import Embedder, file_sha256
from ..folders import LocalImage, scan

OPS: tuple[str, ...] | None = None  # None: every operator onnxruntime quantises
BATCH = 8  # photos per calibration batch


@dataclass(frozen=True)
class QuantizeOptions:
    model_dir: Path
    calibration: Path  # a catalogue folder (one subfolder per product)
    out: Path
    images: int = 256  # calibration photos at most, spread over the products
    method: str = "minmax"  # minmax | entropy | percentile
    seed: int = 0
    patterns: tuple[str, ...] = ()  # only file names matching these (``train_*``)


# A calibration photo: its product and how to read its bytes.
Shot = tuple[str, Callable[[], bytes]]


def calibration_photos(folder: Path, count: int, seed: int, patterns: Sequence[str] = ()) -> list[Shot]:
    """At most ``count`` photos of ``folder`` (whose file names match ``patterns``, if given),
    spread evenly over its products."""
    images: list[LocalImage] = scan(folder)
    if patterns:
        images = [i for i in images if any(fnmatch.fnmatchcase(i.path.name, p) for p in patterns)]
    if not images:
        raise ValueError(
            f"{folder}: no images to calibrate on" + (f" matching {','.join(patterns)}" if patterns else "")
        )
    return spread([(img.key.split("/")[0], img.path.read_bytes) for img in images], count, seed)


def spread(shots: Sequence[Shot], count: int, seed: int) -> list[Shot]:
    """At most ``count`` of the shots, taken from each product in turn (in a seeded order)."""
    by_product: dict[str, list[Shot]] = {}
    for shot in shots:
        by_product.setdefault(shot[0], []).append(shot)
    rng = np.random.default_rng(seed)
    queues = {p: [group[i] for i in rng.permutation(len(group))] for p, group in sorted(by_product.items())}
    chosen: list[Shot] = []
    while len(chosen) < count and any(queues.values()):
        for product in list(queues):
            if queues[product] and len(chosen) < count:
                chosen.append(queues[product].pop())
    return chosen


class _Reader:
    """onnxruntime's CalibrationDataReader: batches of the service's own model input."""

    def __init__(self, embedder: Embedder, photos: Sequence[Shot], advance: Callable[[int], None]):
        self.input_name = embedder.card.input_name
        self._batches = self._iterate(embedder, photos, advance)

    @staticmethod
    def _iterate(embedder: Embedder, photos: Sequence[Shot], advance) -> Iterator[np.ndarray]:
        for start in range(0, len(photos), BATCH):
            chunk = photos[start : start + BATCH]
            yield np.stack([embedder.preprocess(read()) for _, read in chunk]).astype(np.float32)
            advance(len(chunk))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:  # pragma: no cover - onnxruntime calls it for some methods only
        raise NotImplementedError


def quantize(
    options: QuantizeOptions,
    log: Callable[[str], None] = print,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
    shots: Sequence[Shot] | None = None,
) -> dict[str, Any]:
    """Write the int8 model folder; return its card. ``shots``: calibrate on these photos (a
    fine-tune's own catalogue) instead of ``options.calibration``'s folder."""
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:  # onnx is missing
        raise RuntimeError(
            f"quantisation needs the onnx package (pip install -e '.[train]'): {exc}"
        ) from None
    source = options.model_dir
    card = json.loads((source / "model.json").read_text())
    if card.get("precision") == "int8":
        raise ValueError(f"{source} is already an int8 model ({card['id']})")
    if options.out.resolve() == source.resolve():
        raise ValueError(f"--out {options.out} is the model's own folder; write the int8 model elsewhere")
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if shots is None:
        photos = calibration_photos(options.calibration, options.images, options.seed, options.patterns)
    else:
        photos = spread(shots, options.images, options.seed)
    embedder = Embedder(source)
    advance = progress("calibrating", len(photos)) if progress else (lambda n: None)
    started = time.perf_counter()
    options.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source / "model.onnx"), str(prepared), skip_symbolic_shape=True)
        written = Path(tmp) / "model.onnx"
        quantize_static(
            str(prepared),
            str(written),
            _Reader(embedder, photos, advance),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(OPS) if OPS else None,
            calibrate_method=methods[options.method],
        )
        shutil.move(str(written), options.out / "model.onnx")
    seconds = time.perf_counter() - started
    for extra in source.iterdir():  # the preprocessing config and anything else beside the model
        if extra.name not in ("model.onnx", "model.json", "weights.pt") and extra.is_file():
            shutil.copy2(extra, options.out / extra.name)
    int8 = dict(card)
    int8.update(
        id=f"{card['id']}-int8",
        precision="int8",
        sha256=file_sha256(options.out / "model.onnx"),
        quantization={
            "from": {"id": card["id"], "sha256": card.get("sha256")},
            "format": "QDQ",
            "weights": "int8, per output channel",
            "activations": "uint8",
            "operators": list(OPS) if OPS else "all onnxruntime quantises",
            "method": options.method,
            "calibration": {
                "folder": str(options.calibration),
                "patterns": list(options.patterns),
                "images": len(photos),
                "products": len({product for product, _ in photos}),
                "seed": options.seed,
            },
            "seconds": round(seconds, 1),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    (options.out / "model.json").write_text(json.dumps(int8, indent=2) + "\n")
    log(f"wrote {options.out} ({int8['id']}) from {card['id']}: {len(photos)} photos, {seconds:.0f} s")
    return int8
