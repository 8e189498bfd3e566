"""``visual-search eval``, ``eval-clicks`` and ``audit``: measuring retrieval quality (the work is
../evaluate.py's, ../clicks.py's and ../audit.py's)."""

from __future__ import annotations

import json
from pathlib import Path

from .common import fraction, int_in, progress


def add_eval(sub) -> None:
    ev = sub.add_parser(
        "eval",
        help="measure retrieval quality on an image folder (leave-one-out)",
        description="Index every image of DIR (one subfolder per product) into a temporary "
        "collection and query with each image against all the others: recall@1, "
        "recall@5, recall@10, mAP@R, indexing images/s and query latency.",
    )
    ev.add_argument("folder", metavar="DIR", help="one subfolder per product")
    ev.add_argument(
        "--json", action="store_true", help="print one JSON object (metric keys, model id, timings)"
    )
    ev.add_argument("--limit", type=int_in(2), help="evaluate an even subset of this many images")
    _add_model_options(ev)
    _add_protocol_options(ev)
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=run_eval)


def _add_model_options(ev) -> None:
    ev.add_argument("--model-dir", help="another model folder (model.onnx + model.json)")
    ev.add_argument("--baseline", choices=["pixels"], help="evaluate the raw-pixel baseline")
    ev.add_argument(
        "--rerank-model-dir", help="rerank the candidates with this second model (RERANK_MODEL_DIR)"
    )
    ev.add_argument("--flip", action="store_true", help="average each embedding with its mirror image's")
    ev.add_argument(
        "--crop",
        choices=["center", "full"],
        help="override the card's crop: center = ImageNet's 87.5%% centre crop, full = the whole image",
    )


def _add_protocol_options(ev) -> None:
    ev.add_argument(
        "--queries",
        metavar="PATTERNS",
        help="split protocol: file names matching these comma-separated patterns ('val_*,test_*') "
        "are the queries, the rest the gallery (default: leave-one-out)",
    )
    ev.add_argument(
        "--gallery",
        metavar="PATTERNS",
        help="with --queries: only file names matching these patterns are the gallery, the others "
        "are left out ('iconic_*': the web-shop protocol, one studio photo per product)",
    )
    ev.add_argument(
        "--adapt",
        action="store_true",
        help="also measure the catalogue adaptation, fitted on the gallery only (leave-one-out: k folds)",
    )
    ev.add_argument("--folds", type=int_in(2), default=5, help="folds for leave-one-out with --adapt (5)")
    ev.add_argument(
        "--leave-out",
        type=fraction,
        default=0.0,
        metavar="FRACTION",
        help="with --queries and --adapt: this share of the products loses its gallery photos, so "
        "their queries measure 'not in our catalogue' (the confidence's no_match)",
    )


def add_audit(sub) -> None:
    au = sub.add_parser(
        "audit",
        help="list photos nearer to another product than to their own (likely mislabels)",
        description="Embed every image of DIR (one subfolder per product) and list the photos whose "
        "most similar photo of another product beats every photo of their own, worst first.",
    )
    au.add_argument("folder", metavar="DIR", help="one subfolder per product")
    au.add_argument("--top", type=int_in(1), default=50, help="suspects to list (default 50)")
    au.add_argument("--json", action="store_true", help="print one JSON object")
    au.set_defaults(func=run_audit)


def add_eval_clicks(sub) -> None:
    clicks = sub.add_parser(
        "eval-clicks",
        help="measure learning from shoppers' clicks through the API",
        description="Index the --catalogue photos, let a share of each product's --queries photos "
        "search and click through POST /search and POST /feedback, score the last half of them "
        "before and after (src/visual_search/dev/clicks.py).",
    )
    clicks.add_argument("folder", help="one folder per product (e.g. ../shared/datasets/grocery-dev-45)")
    clicks.add_argument("--catalogue", default="iconic_*", help="file patterns of the catalogue's photos")
    clicks.add_argument("--queries", default="val_*,test_*", help="file patterns of the shoppers' photos")
    clicks.add_argument("--share", type=float, default=0.5, help="share of each product's shoppers clicking")
    clicks.add_argument("--misclicks", type=float, default=0.0, help="share of clicks on a wrong product")
    clicks.add_argument("--seed", type=int, default=0)
    clicks.add_argument("--json", action="store_true", help="one JSON line")
    clicks.add_argument("--quiet", action="store_true", help="no progress bar")
    clicks.set_defaults(func=run_eval_clicks)


def _patterns(text: str | None) -> list[str] | None:
    """Comma-separated file-name patterns (None when none are given)."""
    return [p.strip() for p in text.split(",") if p.strip()] if text else None


def _embedders(args):
    """The model to evaluate (or the pixel baseline) and the optional reranker."""
    from ...config import get_settings
    from ...model import Embedder
    from ..evaluate import PixelEmbedder

    settings = get_settings()
    embedder: Embedder | PixelEmbedder
    if args.baseline == "pixels":
        embedder = PixelEmbedder()
    else:
        embedder = Embedder(
            Path(args.model_dir) if args.model_dir else settings.model_dir,
            threads=settings.ort_threads,
            max_batch=settings.max_batch,
            limits=settings.images,
            flip_tta=args.flip or settings.flip_tta,
            crop=args.crop,
        )
    reranker = None
    if args.rerank_model_dir:
        reranker = Embedder(
            Path(args.rerank_model_dir),
            threads=settings.ort_threads,
            max_batch=settings.max_batch,
            limits=settings.images,
            crop=args.crop,
        )
    return embedder, reranker


def run_eval(args) -> int:
    from ..evaluate import evaluate

    embedder, reranker = _embedders(args)
    bar = progress(None, None, f"evaluating {embedder.model_id}", args.json or args.quiet)
    queries, gallery = _patterns(args.queries), _patterns(args.gallery)
    if gallery and not queries:
        raise SystemExit("error: --gallery needs --queries (the split protocol)")
    result = evaluate(
        Path(args.folder),
        embedder,
        limit=args.limit,
        progress=bar.update,
        reranker=reranker,
        queries=queries,
        gallery=gallery,
        adapt=args.adapt,
        folds=args.folds,
        leave_out=args.leave_out,
    )
    bar.close()
    if args.json:
        print(json.dumps(result.as_json()))
        return 0
    print("\n".join(result.lines(args.folder)))
    return 0


def run_eval_clicks(args) -> int:
    from ..clicks import simulate

    bar = progress(None, None, "searching and clicking", args.json or args.quiet)
    result = simulate(
        Path(args.folder),
        _patterns(args.catalogue) or [],
        _patterns(args.queries) or [],
        share=args.share,
        misclicks=args.misclicks,
        seed=args.seed,
        progress=bar.update,
        total=lambda n: setattr(bar, "total", n),
        log=(lambda line: None) if args.json or args.quiet else bar.write,
    )
    bar.close()
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


def run_audit(args) -> int:
    from ...model import load_embedder
    from ..audit import audit

    embedder = load_embedder()
    bar = progress(None, None, f"auditing with {embedder.model_id}", args.json)
    photos, found = audit(Path(args.folder), embedder, progress=bar.update)
    bar.close()
    shown = found[: args.top]
    if args.json:
        print(json.dumps({"photos": photos, "suspects": [s.as_json() for s in shown], "total": len(found)}))
        return 0
    print(f"{len(found)} of {photos} photos are nearer to another product than to their own")
    for s in shown:
        print(f"  {s.key}: {s.other_product} ({s.other_key}) {s.other_best:.3f} > own {s.own_best:.3f}")
    return 0
