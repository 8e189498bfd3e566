"""Catalogue adaptation: learned whitening fitted on the catalogue's own product labels.

Every catalogue labels its photos with ``product_id``. The scatter of a product's photos around
that product's mean is nuisance (lighting, shelf, angle, background); the spread of the products
around the catalogue's mean is what tells them apart. Learned whitening (Radenović, Tolias,
Chum, "Fine-tuning CNN Image Retrieval with No Human Annotation", TPAMI 2018) turns that into a
linear map, fitted with numpy in a second:

1. centre every vector on the catalogue mean;
2. whiten the within-product covariance ``C_w`` (products with 2+ photos contribute), shrunk
   towards the identity: ``C_w + s * mean_eigenvalue(C_w) * I``, so directions the catalogue saw
   little nuisance in are not blown up without bound (``s`` is the shrinkage);
3. optionally keep only the ``k`` directions along which the whitened catalogue spreads most
   (Radenović's rotation by the covariance of non-matching pairs; here the covariance of every
   photo around the catalogue mean, which estimates it);
4. L2-normalise, so cosine similarity stays a dot product.

:func:`choose` picks ``s`` (and ``k``) by cross-validation on the catalogue itself: rounds that
hold back one photo per product and query it against the rest, best recall@1; it keeps the raw
space (``projection`` None) when no candidate beats it or the catalogue is too small, and says
why. It fits on a sample stratified by product, so its cost is bounded whatever the catalogue's
size. The projection serialises to an ``.npz`` without pickle; its id is the sha256 of what
decides the space (mean, matrix, shrinkage), so a collection can record which one built it.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

SHRINKAGES = (0.03, 0.1, 0.3, 1.0, 3.0)
DIMS: tuple[int | None, ...] = (None, 512, 256)
MIN_PRODUCTS = 4  # products with 2+ photos needed before any fit is attempted
MIN_PHOTOS = 16  # photos in those products
MAX_SAMPLE = 20_000  # photos the fit reads at most (stratified by product)
FOLDS = 5  # cross-validation rounds at least, each holding back one photo per product
# ... and more rounds (each photo is held back at most once) until this many photos have been
# held back: 5 rounds of a 10-product catalogue are 50 queries, whose recall@1 has a standard
# error of ~6 points, too coarse to tell the candidates apart (the choice then depended on which
# photos the rounds drew). A catalogue of 60+ products reaches it in the first 5 rounds.
CV_QUERIES = 300
MAX_FOLDS = 30
# A catalogue's photos of one product often come from one session (same shelf, same light), so a
# held-back photo has near-duplicates left in the gallery and every candidate, the raw space
# included, finds it (measured: cross-validated recall@1 1.0 on grocery-dev's train_ photos).
# Each round therefore also hides this share of the product's other photos, the ones nearest to
# the held-back photo in the raw space, from the round's gallery and fit: the query must be
# found through photos unlike it, as a shopper's photo from another session is.
HIDE_NEAREST = 0.5
FORMAT = "visual-search-projection/1"


@dataclass(frozen=True)
class Projection:
    mean: np.ndarray  # (d,) float32, the catalogue mean
    matrix: np.ndarray  # (d, k) float32: x -> normalise((x - mean) @ matrix)
    shrinkage: float
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.mean, "<f4").tobytes())
        digest.update(np.asarray(self.matrix.shape, "<i8").tobytes())
        digest.update(np.ascontiguousarray(self.matrix, "<f4").tobytes())
        digest.update(np.float64(self.shrinkage).astype("<f8").tobytes())
        return digest.hexdigest()

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def input_dim(self) -> int:
        return int(self.matrix.shape[0])

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """(n, d) or (d,) model vectors -> L2-normalised float32 vectors in the adapted space."""
        x = np.asarray(vectors, np.float32)
        single = x.ndim == 1
        x = np.atleast_2d(x)
        if x.shape[1] != self.input_dim:
            raise ValueError(f"projection expects {self.input_dim}-d vectors, got {x.shape[1]}-d")
        out = _normalise((x - self.mean) @ self.matrix)
        return out[0] if single else out

    def to_bytes(self) -> bytes:
        meta = {"format": FORMAT, "shrinkage": float(self.shrinkage), "stats": self.stats}
        buffer = io.BytesIO()
        np.savez(
            buffer,
            mean=np.ascontiguousarray(self.mean, "<f4"),
            matrix=np.ascontiguousarray(self.matrix, "<f4"),
            meta=np.frombuffer(json.dumps(meta, sort_keys=True, default=_json_default).encode(), np.uint8),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Projection:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                mean, matrix = npz["mean"].astype(np.float32), npz["matrix"].astype(np.float32)
                meta = json.loads(npz["meta"].tobytes().decode())
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # one clear message
            raise ValueError(f"not a projection file: {exc}") from None
        if meta.get("format") != FORMAT:
            raise ValueError(f"not a projection file (format {meta.get('format')!r}, expected {FORMAT!r})")
        if mean.ndim != 1 or matrix.ndim != 2 or matrix.shape[0] != mean.shape[0]:
            raise ValueError(f"projection shapes do not agree: mean {mean.shape}, matrix {matrix.shape}")
        return cls(mean, matrix, float(meta["shrinkage"]), dict(meta.get("stats") or {}))


@dataclass(frozen=True)
class FitReport:
    projection: Projection | None  # None: keep the raw space
    reason: str  # why (chosen shrinkage and gain, or too small / no gain)
    table: list[dict]  # per candidate: shrinkage, dims, cv recall@1
    cv_recall_raw: float
    cv_recall_adapted: float | None


# --- the fit -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Decomposition:
    """What every shrinkage shares: the mean and the within-product covariance's eigenbasis.

    With fewer scatter photos than dimensions (the usual case below a few thousand photos) the
    covariance has low rank: its non-zero eigenpairs come from a thin SVD of the residuals, and
    every direction outside their span has eigenvalue 0.
    """

    mean: np.ndarray  # (d,) float64
    centred: np.ndarray  # (n, d) float64, the fit's vectors minus the mean
    eigenvalues: np.ndarray  # (m,) of C_w, >= 0; the other d - m are 0
    eigenvectors: np.ndarray  # (d, m) orthonormal columns
    mean_eigenvalue: float  # trace(C_w) / d
    products: int  # products with 2+ photos
    photos: int  # photos in them


def _decompose(vectors: np.ndarray, labels: np.ndarray) -> _Decomposition:
    x = np.asarray(vectors, np.float64)
    mean = x.mean(axis=0)
    residuals, products, photos = [], 0, 0
    for rows in _groups(labels).values():
        if len(rows) >= 2:
            group = x[rows]
            residuals.append(group - group.mean(axis=0))
            products, photos = products + 1, photos + len(rows)
    if not residuals:
        raise ValueError("no product has two photos: the within-product scatter is undefined")
    r = np.concatenate(residuals)
    d = x.shape[1]
    if len(r) < d:
        eigenvalues, eigenvectors = _thin_eigh(r)
        eigenvalues = eigenvalues / len(r)
    else:
        eigenvalues, eigenvectors = np.linalg.eigh(r.T @ r / len(r))
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    mean_eigenvalue = float(eigenvalues.sum() / d)
    if mean_eigenvalue <= 0:
        raise ValueError("every product's photos are identical: nothing to whiten")
    return _Decomposition(mean, x - mean, eigenvalues, eigenvectors, mean_eigenvalue, products, photos)


def _whitening(dec: _Decomposition, shrinkage: float) -> np.ndarray:
    """The symmetric (d, d) inverse square root of C_w + s * mean_eigenvalue * I."""
    if shrinkage <= 0:
        raise ValueError("shrinkage must be > 0")
    floor = shrinkage * dec.mean_eigenvalue
    outside = 1.0 / np.sqrt(floor)  # every direction where the scatter is 0
    scale = 1.0 / np.sqrt(dec.eigenvalues + floor) - outside
    v = dec.eigenvectors
    return (v * scale) @ v.T + outside * np.eye(v.shape[0])


def _top_directions(z: np.ndarray, dims: int) -> np.ndarray:
    """(d, <= dims) directions of largest spread of the whitened, centred catalogue ``z``."""
    if len(z) < z.shape[1]:  # through the (n, n) Gram matrix: cheaper than (d, d) when n < d
        return _thin_eigh(z)[1][:, :dims]
    _, vectors = np.linalg.eigh(z.T @ z)
    return vectors[:, ::-1][:, :dims]


def _thin_eigh(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-zero eigenpairs of ``a.T @ a`` (descending) for a wide ``a`` (n < d), from its Gram matrix."""
    values, u = np.linalg.eigh(a @ a.T)
    values, u = values[::-1], u[:, ::-1]
    keep = values > max(float(values[0]), 0.0) * 1e-10
    values, u = values[keep], u[:, keep]
    vectors = (a.T @ u) / np.sqrt(values)
    return values, vectors


def _projection(dec: _Decomposition, shrinkage: float, dims: int | None) -> Projection:
    matrix = _whitening(dec, shrinkage)
    if dims is not None and dims < matrix.shape[1]:
        matrix = matrix @ _top_directions(dec.centred @ matrix, dims)
    stats = {
        "products": dec.products,
        "photos": dec.photos,
        "dims": int(matrix.shape[1]),
        "cv_recall_raw": None,
        "cv_recall_adapted": None,
        "fitted_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return Projection(dec.mean.astype(np.float32), matrix.astype(np.float32), float(shrinkage), stats)


def fit(vectors: np.ndarray, labels: Sequence[str], shrinkage: float, dims: int | None = None) -> Projection:
    """Fit one projection (no cross-validation): ``labels[i]`` is the product of ``vectors[i]``."""
    x, y = _check(vectors, labels)
    return _projection(_decompose(x, y), shrinkage, dims)


# --- choosing by cross-validation ----------------------------------------------------------------


def choose(
    vectors: np.ndarray,
    labels: Sequence[str],
    shrinkages: Sequence[float] = SHRINKAGES,
    dims: Sequence[int | None] = DIMS,
    min_products: int = MIN_PRODUCTS,
    min_photos: int = MIN_PHOTOS,
    max_sample: int = MAX_SAMPLE,
    folds: int = FOLDS,
    seed: int = 0,
    hide_nearest: float = HIDE_NEAREST,
) -> FitReport:
    """Cross-validate every (shrinkage, dims) on the catalogue and fit the best on all of it.

    Each round (``folds`` at least, more until ``CV_QUERIES`` photos have been held back, at
    most ``MAX_FOLDS``) holds back one photo of every product that has 2+ photos and
    queries it against the rest, less the ``hide_nearest`` share of its product's photos most
    like it (the round's fit sees only what its gallery holds); a candidate's score is
    recall@1 over all rounds, ties broken by the mean rank of the right product's nearest photo.
    The raw space is kept unless the best candidate is strictly better.
    """
    x, y = _check(vectors, labels)
    x, y = _canonical(x, y)
    rng = np.random.default_rng(seed)
    rows = sample_rows(y, max_sample, rng)
    x, y = x[rows], y[rows]
    counts = {label: len(r) for label, r in _groups(y).items()}
    multi = {label: n for label, n in counts.items() if n >= 2}
    photos = sum(multi.values())
    if len(multi) < min_products or photos < min_photos:
        reason = (
            f"too small to adapt: {len(multi)} products with 2+ photos ({photos} photos); "
            f"needs {min_products} products and {min_photos} photos: keeping the raw space"
        )
        return FitReport(None, reason, [], float("nan"), None)
    candidates = [(float(s), d) for s in shrinkages for d in dims]
    rounds = min(max(folds, math.ceil(CV_QUERIES / len(multi))), MAX_FOLDS)
    raw_hits, scores, queries = _cross_validate(x, y, candidates, rounds, rng, hide_nearest)
    cv_raw = raw_hits[0] / queries
    table = [
        {
            "shrinkage": s,
            "dims": d or x.shape[1],
            "cv_recall@1": round(hits / queries, 4),
            "cv_mean_rank": rank,
        }
        for (s, d), (hits, rank) in zip(candidates, scores)
    ]
    dims_of = [d or x.shape[1] for _, d in candidates]  # on a tie, fewer dimensions (cheaper to store)
    best = max(range(len(candidates)), key=lambda i: (scores[i][0], -scores[i][1], -dims_of[i]))
    best_hits, best_rank = scores[best]
    cv_adapted = best_hits / queries
    shrinkage, best_dims = candidates[best]
    if (best_hits, -best_rank) <= (raw_hits[0], -raw_hits[1]):
        reason = (
            f"no candidate beats the raw space in cross-validation (raw recall@1 {cv_raw:.3f}, "
            f"best {cv_adapted:.3f} at shrinkage {shrinkage}): keeping the raw space"
        )
        return FitReport(None, reason, table, round(cv_raw, 4), round(cv_adapted, 4))
    started = time.perf_counter()
    projection = _projection(_decompose(x, y), shrinkage, best_dims)
    stats = {
        **projection.stats,
        "cv_recall_raw": round(cv_raw, 4),
        "cv_recall_adapted": round(cv_adapted, 4),
        "cv_queries": queries,
        "sampled": len(y),
        "fit_seconds": round(time.perf_counter() - started, 3),
    }
    projection = replace(projection, stats=stats)
    reason = (
        f"shrinkage {shrinkage}, {projection.dim} dims: cross-validated recall@1 "
        f"{cv_raw:.3f} -> {cv_adapted:.3f} over {queries} held-back photos "
        f"({len(multi)} products, {photos} photos)"
    )
    return FitReport(projection, reason, table, round(cv_raw, 4), round(cv_adapted, 4))


def _cross_validate(
    x: np.ndarray,
    y: np.ndarray,
    candidates: list[tuple[float, int | None]],
    folds: int,
    rng: np.random.Generator,
    hide_nearest: float,
) -> tuple[tuple[int, float], list[tuple[int, float]], int]:
    """(raw (hits, mean rank), per candidate (hits, mean rank), queries) over the rounds."""
    groups = {label: rng.permutation(r) for label, r in _groups(y).items() if len(r) >= 2}
    raw = [0, 0.0]
    per = [[0, 0.0] for _ in candidates]
    queries = 0
    for round_ in range(folds):
        held = np.array([r[round_] for r in groups.values() if len(r) - 1 > round_], dtype=np.int64)
        if len(held) < 2:
            break
        mask = np.ones(len(y), bool)
        mask[held] = False
        for q in held:  # its near-duplicates too: the query must be found through other photos
            mask[_nearest_same_product(x, y, q, mask, hide_nearest)] = False
        gallery_x, gallery_y, query_x, query_y = x[mask], y[mask], x[held], y[held]
        queries += len(held)
        _score(raw, _normalise(query_x) @ _normalise(gallery_x).T, query_y, gallery_y)
        try:
            dec = _decompose(gallery_x, gallery_y)
        except ValueError:
            continue  # this round's gallery has no scatter: every candidate scores a miss
        spaces = _CandidateSpaces(dec, query_x)
        for slot, (shrinkage, dims) in zip(per, candidates):
            _score(slot, spaces.sims(shrinkage, dims), query_y, gallery_y)
    if not queries:
        return (0, 0.0), [(0, 0.0) for _ in candidates], 1
    return (
        (int(raw[0]), raw[1] / queries),
        [(int(h), r / queries) for h, r in per],
        queries,
    )


class _CandidateSpaces:
    """A round's query and gallery vectors in each candidate space, cheaply.

    With fewer gallery photos than dimensions every candidate is computed from inner products
    (kernel form: ``x W^2 y`` through the scatter's eigenbasis, and kernel PCA for the reduced
    dimensions), never forming the (d, d) whitening; otherwise the matrix is applied directly.
    """

    def __init__(self, dec: _Decomposition, query_x: np.ndarray):
        self.dec = dec
        self.query = np.asarray(query_x, np.float64) - dec.mean
        self.kernel = (
            dec.eigenvectors.shape[1] < dec.centred.shape[1] and len(dec.centred) < dec.centred.shape[1]
        )
        if self.kernel:
            v = dec.eigenvectors
            self.ag, self.aq = dec.centred @ v, self.query @ v
            self.gg, self.qg = dec.centred @ dec.centred.T, self.query @ dec.centred.T
            self.qq = (self.query**2).sum(axis=1)

        self._cache: dict[float, tuple] = {}

    def sims(self, shrinkage: float, dims: int | None) -> np.ndarray:
        """(queries, gallery) cosine similarities in the candidate's space."""
        if not self.kernel:
            if shrinkage not in self._cache:
                matrix = _whitening(self.dec, shrinkage)
                self._cache[shrinkage] = (self.dec.centred @ matrix, self.query @ matrix, None)
            zg, zq, _ = self._cache[shrinkage]
            if dims is not None and dims < zg.shape[1]:
                keep = _top_directions(zg, dims)
                zg, zq = zg @ keep, zq @ keep
            return _normalise(zq) @ _normalise(zg).T
        k_gg, k_qg, q_norm2 = self._kernels(shrinkage)
        if dims is None:  # every dimension: cosine straight from the kernel
            g_norm2 = np.clip(np.diag(k_gg), 1e-300, None)
            return k_qg / np.sqrt(np.clip(q_norm2, 1e-300, None)[:, None] * g_norm2[None, :])
        values, a = self._kernel_pca(shrinkage, k_gg)
        values, a = values[:dims], a[:, :dims]
        zq, zg = k_qg @ a / np.sqrt(values), a * np.sqrt(values)
        return _normalise(zq) @ _normalise(zg).T

    def _kernels(self, shrinkage: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if shrinkage not in self._cache:
            floor = shrinkage * self.dec.mean_eigenvalue
            w = 1.0 / (self.dec.eigenvalues + floor) - 1.0 / floor
            k_gg = (self.ag * w) @ self.ag.T + self.gg / floor
            k_qg = (self.aq * w) @ self.ag.T + self.qg / floor
            q_norm2 = (self.aq**2 * w).sum(axis=1) + self.qq / floor
            self._cache[shrinkage] = (k_gg, k_qg, q_norm2, None)
        return self._cache[shrinkage][:3]

    def _kernel_pca(self, shrinkage: float, k_gg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The whitened gallery's own directions (descending), computed once per shrinkage."""
        cached = self._cache[shrinkage]
        if cached[3] is None:
            values, a = np.linalg.eigh(k_gg)
            values, a = values[::-1], a[:, ::-1]
            keep = values > max(float(values[0]), 0.0) * 1e-10
            self._cache[shrinkage] = (*cached[:3], (values[keep], a[:, keep]))
        return self._cache[shrinkage][3]


def _nearest_same_product(x: np.ndarray, y: np.ndarray, q: int, mask: np.ndarray, share: float) -> np.ndarray:
    """Rows of the ``share`` of ``q``'s product's still-visible photos nearest to it (leaving one)."""
    rows = np.flatnonzero((y == y[q]) & mask)
    hide = min(int(len(rows) * share), len(rows) - 1)
    if hide <= 0:
        return rows[:0]
    sims = _normalise(x[rows]) @ _normalise(x[q : q + 1])[0]
    return rows[np.argsort(-sims)[:hide]]


def _score(slot: list, sims: np.ndarray, qy: np.ndarray, gy: np.ndarray) -> None:
    """Add recall@1 hits and the rank of the right product's nearest photo to ``slot``."""
    order = np.argsort(-sims, axis=1)
    right = gy[order] == qy[:, None]
    first = right.argmax(axis=1)  # rank (0-based) of the first photo of the right product
    slot[0] += int((first == 0).sum())
    slot[1] += float(first.sum())


# --- helpers -------------------------------------------------------------------------------------


def sample_rows(labels: np.ndarray, max_sample: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices of at most ``max_sample`` photos, stratified by product.

    Every product keeps up to ``cap`` photos, ``cap`` the largest count that fits the budget
    (at least 2, so each kept product still has a scatter); when even 2 per product is too many,
    a random subset of products is kept.
    """
    groups = list(_groups(labels).values())
    if len(labels) <= max_sample:
        return np.arange(len(labels))
    sizes = np.array([len(g) for g in groups])
    cap = max(2, _largest_cap(sizes, max_sample))
    if np.minimum(sizes, cap).sum() > max_sample:
        keep = rng.permutation(len(groups))
        total, chosen = 0, []
        for i in keep:
            take = min(sizes[i], cap)
            if total + take > max_sample:
                continue
            chosen.append(i)
            total += take
        groups = [groups[i] for i in sorted(chosen)]
    rows = [rng.permutation(g)[:cap] for g in groups]
    return np.sort(np.concatenate(rows))


def _largest_cap(sizes: np.ndarray, budget: int) -> int:
    low, high = 1, int(sizes.max())
    while low < high:
        mid = (low + high + 1) // 2
        if np.minimum(sizes, mid).sum() <= budget:
            low = mid
        else:
            high = mid - 1
    return low


def _canonical(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The photos in an order that depends only on what they are (label, then vector), so the
    same catalogue gets the same fit whichever order its store or folder lists it in."""
    order = np.lexsort((*(x[:, i] for i in range(min(4, x.shape[1]) - 1, -1, -1)), y))
    return x[order], y[order]


def _groups(labels: np.ndarray) -> dict[str, np.ndarray]:
    order = np.argsort(labels, kind="stable")
    values, starts = np.unique(labels[order], return_index=True)
    return {str(v): rows for v, rows in zip(values, np.split(order, starts[1:]))}


def _check(vectors: np.ndarray, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(vectors, np.float32)
    if x.ndim != 2 or not len(x):
        raise ValueError(f"vectors must be a non-empty (n, d) array, got shape {x.shape}")
    y = np.asarray([str(label) for label in labels])
    if len(y) != len(x):
        raise ValueError(f"{len(x)} vectors but {len(y)} labels")
    if not np.isfinite(x).all():
        raise ValueError("vectors contain NaN or infinity")
    return x, y


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
