"""Timing helpers shared by ``visual-search bench`` and its scale section: medians of repeated
calls, the bare ``session.run`` every ratio is taken against, sample photos, markdown tables."""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from .folders import DEMO_CATALOG, scan


def samples_ms(
    fn: Callable[[], object], repeat: int, clock: Callable[[], float] = time.perf_counter
) -> list[float]:
    """``repeat`` sorted milliseconds of ``fn`` by ``clock``, after one warm-up call."""
    fn()
    samples = []
    for _ in range(repeat):
        started = clock()
        fn()
        samples.append((clock() - started) * 1000.0)
    return sorted(samples)


def timed(fn: Callable[[], object], repeat: int) -> dict[str, float]:
    samples = samples_ms(fn, repeat)
    return {
        "median_ms": round(statistics.median(samples), 3),
        "p90_ms": round(samples[int(0.9 * (len(samples) - 1))], 3),
    }


def scaled_photo(path, side: int, fmt: str) -> bytes:
    """A real photo scaled to ``side`` x 3/4 ``side`` px, saved as ``fmt`` (JPEG quality 90)."""
    photo = Image.open(path).convert("RGB")
    photo = photo.resize((side, side * 3 // 4), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    photo.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def sample_image(side: int, fmt: str) -> bytes:
    """The first demo photo scaled to ``side`` px on its long edge, saved as ``fmt``."""
    return scaled_photo(scan(DEMO_CATALOG)[0].path, side, fmt)


def prepared_batch(embedder, batch: int) -> np.ndarray:
    """A model-ready tensor (the model's input size) of ``batch`` copies of a sample image."""
    return np.stack([embedder.preprocess(sample_image(224, "PNG"))] * batch)


def bare_run_ms(embedder, repeat: int, batch: int = 1) -> float:
    """Median ms of session.run alone on a prepared batch: the yardstick of every ratio."""
    card = embedder.card
    tensor = prepared_batch(embedder, batch)
    return timed(lambda: embedder.session.run([card.embedding_output], {card.input_name: tensor}), repeat)[
        "median_ms"
    ]


def markdown(headers: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += [
        "| " + " | ".join(f"{v:,}" if isinstance(v, int) else str(v) for v in row) + " |" for row in rows
    ]
    return "\n".join(lines)
