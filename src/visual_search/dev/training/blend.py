"""A weight-space blend of a pretrained model and its fine-tune (WiSE-FT).

A fine-tune on one kind of product (grocery) moves the network towards that kind and away from
what ImageNet taught it about everything else. Interpolating every weight between the base model
and the fine-tuned one, ``(1 - alpha) * base + alpha * tuned``, keeps most of the fine-tune's gain
on its own kind while giving back most of what it lost elsewhere (Wortsman et al., "Robust
fine-tuning of zero-shot models", 2022). Both models must be the same exported graph (a fine-tune
of the base, exported by ``export.py``): same initializer names and shapes. The blend is done on
the ONNX initializers, so it needs the ``onnx`` package but not torch. The folder written is a
model folder like any other; its card records both parents and ``alpha``.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ...model import file_sha256


def _load(folder: Path) -> tuple[Any, dict[str, Any]]:
    import onnx

    card = json.loads((folder / "model.json").read_text())
    if card.get("precision") == "int8":
        raise ValueError(f"{folder} is an int8 model ({card['id']}): blend the fp32 models, then quantise")
    return onnx.load(str(folder / "model.onnx")), card


def blend_initializers(base: Any, tuned: Any, alpha: float) -> int:
    """Write ``(1 - alpha) * base + alpha * tuned`` into ``tuned``'s float initializers; return
    how many differed. Refuses graphs whose initializers do not match one for one."""
    from onnx import numpy_helper

    by_name = {init.name: init for init in base.graph.initializer}
    names = [init.name for init in tuned.graph.initializer]
    if sorted(names) != sorted(by_name):
        missing = sorted(set(names) ^ set(by_name))[:3]
        raise ValueError(f"the two models are not the same graph (initializers differ: {missing} ...)")
    changed = 0
    for init in tuned.graph.initializer:
        a = numpy_helper.to_array(by_name[init.name])
        b = numpy_helper.to_array(init)
        if a.shape != b.shape:
            raise ValueError(f"initializer {init.name}: shape {a.shape} in the base, {b.shape} fine-tuned")
        if b.dtype.kind != "f" or np.array_equal(a, b):
            continue
        mixed = ((1.0 - alpha) * a.astype(np.float64) + alpha * b.astype(np.float64)).astype(b.dtype)
        init.CopyFrom(numpy_helper.from_array(mixed, init.name))
        changed += 1
    return changed


def blend(base_dir: Path, tuned_dir: Path, alpha: float, out: Path, model_id: str | None = None) -> dict:
    """Write the blended model folder ``out``; return its card."""
    import onnx

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within [0, 1] (0: the base model, 1: the fine-tune), got {alpha}")
    if out.resolve() in (base_dir.resolve(), tuned_dir.resolve()):
        raise ValueError(f"--out {out} is one of the two models' folders; write the blend elsewhere")
    base, base_card = _load(base_dir)
    tuned, card = _load(tuned_dir)
    if base_card.get("input") != card.get("input"):
        raise ValueError("the two models preprocess differently (their cards' input differ): not one graph")
    changed = blend_initializers(base, tuned, alpha)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(tuned, str(out / "model.onnx"))
    for extra in tuned_dir.iterdir():  # the preprocessing config and anything else beside the model
        if extra.name not in ("model.onnx", "model.json", "weights.pt") and extra.is_file():
            shutil.copy2(extra, out / extra.name)
    blended = dict(card)
    blended.update(
        id=model_id or f"{card['id']}-wise{round(alpha * 100):02d}",
        sha256=file_sha256(out / "model.onnx"),
        blend={
            "method": "weight-space interpolation (WiSE-FT): (1 - alpha) * base + alpha * fine-tuned",
            "alpha": alpha,
            "base": {"id": base_card["id"], "sha256": base_card.get("sha256")},
            "fine_tuned": {"id": card["id"], "sha256": card.get("sha256")},
            "initializers_blended": changed,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    (out / "model.json").write_text(json.dumps(blended, indent=2) + "\n")
    return blended
