"""``visual-search bench``: where the milliseconds of an embedding go.

Every timing is also given as a ratio of a bare onnxruntime ``session.run`` on an already
prepared tensor, measured in the same run, so numbers from different machines compare.
"""
from __future__ import annotations

import io
import json
import platform
import statistics
import time
from dataclasses import replace
from typing import Callable

import numpy as np
from PIL import Image

from .config import available_cpus, get_settings
from .folders import DEMO_CATALOG, scan
from .model import load_embedder

SIZES = {"224px PNG": (224, "PNG"), "1000px JPEG": (1000, "JPEG"), "4000px JPEG": (4000, "JPEG")}


def timed(fn: Callable[[], object], repeat: int) -> dict[str, float]:
    fn()  # warm-up
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000.0)
    samples.sort()
    return {"median_ms": round(statistics.median(samples), 3),
            "p90_ms": round(samples[int(0.9 * (len(samples) - 1))], 3)}


def sample_image(side: int, fmt: str) -> bytes:
    """A real demo photo scaled to ``side`` px on its long edge, saved as ``fmt``."""
    photo = Image.open(scan(DEMO_CATALOG)[0].path).convert("RGB")
    photo = photo.resize((side, side * 3 // 4), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    photo.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def naive_preprocess(data: bytes, prep) -> np.ndarray:
    """Full decode then resize, without draft()/reduce(): the baseline our decoder beats."""
    from .images import to_pixels

    image = Image.open(io.BytesIO(data))
    image.load()
    return to_pixels(image.convert("RGB"), replace(prep, interpolation="bicubic"), fast=False)


def embed_breakdown(repeat: int) -> dict:
    embedder = load_embedder()
    card = embedder.card
    tensor = embedder.preprocess(sample_image(224, "PNG"))[None]
    bare = timed(lambda: embedder.session.run([card.embedding_output], {card.input_name: tensor}),
                 repeat)["median_ms"]
    rows = []
    for name, (side, fmt) in SIZES.items():
        data = sample_image(side, fmt)
        decode = timed(lambda: embedder.preprocess(data), repeat)["median_ms"]
        naive = timed(lambda: naive_preprocess(data, card.preprocess), repeat)["median_ms"]
        infer = timed(lambda: embedder.embed_pixels(tensor), repeat)["median_ms"]
        total = timed(lambda: embedder.embed(data), repeat)["median_ms"]
        rows.append({"image": name, "bytes": len(data), "decode_preprocess_ms": decode,
                     "naive_decode_preprocess_ms": naive,
                     "inference_ms": infer, "total_ms": total,
                     "decode_vs_inference": round(decode / infer, 2),
                     "total_vs_bare_run": round(total / bare, 2)})
    return {"model": card.id, "bare_session_run_ms": bare, "threads": embedder.session
            .get_session_options().intra_op_num_threads, "embed": rows}


def machine() -> dict:
    import onnxruntime

    return {"python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpus": available_cpus(),
            "onnxruntime": onnxruntime.__version__}


def print_table(report: dict) -> None:
    print(f"model {report['model']}, bare session.run {report['bare_session_run_ms']} ms "
          f"({report['threads']} threads)")
    header = ("image", "bytes", "decode+prep ms", "naive decode+prep ms", "inference ms", "total ms", "decode/infer",
              "total/bare run")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in report["embed"]:
        print(f"| {row['image']} | {row['bytes']:,} | {row['decode_preprocess_ms']} | "
              f"{row['naive_decode_preprocess_ms']} | {row['inference_ms']} | {row['total_ms']} | {row['decode_vs_inference']} | "
              f"{row['total_vs_bare_run']} |")


def run_bench(args) -> int:
    get_settings()
    report = {"machine": machine(), **embed_breakdown(args.repeat)}
    if not args.json:
        print_table(report)
    print(json.dumps(report))
    return 0
