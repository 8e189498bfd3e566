"""The training catalogue: photos labelled with product ids, decoded once, augmented per batch.

A SOURCE is a folder (one subfolder per product, ``products.csv`` optional, as ``visual-search
ingest ./folder`` reads it) or ``s3://bucket/prefix`` (product ids from the objects' metadata or
folders, as the ingest function derives them). No torch here: batches are numpy arrays.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from ...catalog import is_image_key, product_id_for
from ...config import ImageLimits
from ...images import Preprocess, decode, decode_rgb, to_pixels
from ..folders import scan

# Photos are kept decoded as squares this much larger than the input, so a random crop of 60%
# of the area is still resized down, not up.
CACHE_MARGIN = 1.15


@dataclass(frozen=True)
class Photo:
    product_id: str
    key: str  # the S3 key, or the path inside the folder
    read: Callable[[], bytes]


def photos_from(source: str, s3: Any = None) -> list[Photo]:
    """Every image of a folder or of ``s3://bucket/prefix``, in key order."""
    if source.startswith("s3://"):
        return _s3_photos(source, s3)
    folder = Path(source)
    if not folder.is_dir():
        raise ValueError(f"{source} is neither a folder nor s3://bucket/prefix")
    return [
        Photo(product_id_for(img.key, img.metadata), img.key, img.path.read_bytes) for img in scan(folder)
    ]


def _s3_photos(source: str, s3: Any) -> list[Photo]:
    from ...ops.sync import list_objects, parse_s3_url

    if s3 is None:
        from ...aws import s3_client

        s3 = s3_client()
    bucket, prefix = parse_s3_url(source)
    photos = []
    for obj in list_objects(s3, bucket, prefix):
        if obj.key.endswith("/"):
            continue
        head = s3.head_object(Bucket=bucket, Key=obj.key)
        if not is_image_key(obj.key, head.get("ContentType")):
            continue
        metadata = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}

        def read(key: str = obj.key) -> bytes:
            return s3.get_object(Bucket=bucket, Key=key)["Body"].read()

        photos.append(Photo(product_id_for(obj.key, metadata), obj.key, read))
    return photos


def fingerprint(photos: Sequence[Photo]) -> str:
    """A short digest of the catalogue's keys and labels (recorded in the card)."""
    digest = hashlib.sha256()
    for photo in sorted(photos, key=lambda p: p.key):
        digest.update(f"{photo.key}\t{photo.product_id}\n".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Split:
    """Which photos train and which validate, decided once by the seed."""

    train: list[int]  # indices of training photos (labels: trained products)
    gallery: list[int]  # the validation gallery: every photo that is not a query
    queries: list[int]
    unseen_products: list[str]  # whole products held back from training


def split(
    photos: Sequence[Photo],
    seed: int,
    vectors: np.ndarray | None = None,
    query_fraction: float = 0.15,
    unseen_fraction: float = 0.1,
    min_products_for_unseen: int = 20,
) -> Split:
    """Hold back ``query_fraction`` of each product's photos (products with 3 or more) as
    queries and, with ``min_products_for_unseen`` products or more, ``unseen_fraction`` of the
    products entirely (half their photos gallery, half queries). The rest trains.

    With ``vectors`` (the base model's embeddings) a product's held-back photos are one cluster:
    a random photo and those most like it. A catalogue photographed in one session has many
    near-duplicates (the same shelf, a step to the side); held back at random, each would still
    have its twin in the gallery and in training, and every model would find it (the base
    scores recall@1 1.0 on grocery-dev's catalogue that way). Held back as a cluster, they must
    be found through photos unlike them, as a shopper's photo taken in another session is.
    """
    rng = np.random.default_rng(seed)
    by_product: dict[str, list[int]] = {}
    for i, photo in enumerate(photos):
        by_product.setdefault(photo.product_id, []).append(i)
    products = sorted(by_product)
    unseen: list[str] = []
    if len(products) >= min_products_for_unseen:
        count = max(2, round(unseen_fraction * len(products)))
        unseen = sorted(str(p) for p in rng.choice(products, size=count, replace=False))
    train, gallery, queries = [], [], []
    for product in products:
        members = [int(i) for i in rng.permutation(by_product[product])]
        if product in unseen:
            half = len(members) // 2
            queries += members[:half]
            gallery += members[half:]
            continue
        held = max(1, round(query_fraction * len(members))) if len(members) >= 3 else 0
        if vectors is not None and held:
            anchor = vectors[members[0]]
            members = [members[j] for j in np.argsort(-(vectors[members] @ anchor), kind="stable")]
        queries += members[:held]
        train += members[held:]
        gallery += members[held:]
    return Split(sorted(train), sorted(gallery), sorted(queries), unseen)


def view_mask(photos: Sequence[Photo], patterns: Sequence[str]) -> list[bool]:
    """True for the shoppers' photos: a file name (``val_*``) or key (``shopper/*``) matches."""
    names = [(PurePosixPath(p.key).name, p.key) for p in photos]
    return [
        any(fnmatch.fnmatchcase(n, pat) or fnmatch.fnmatchcase(k, pat) for pat in patterns) for n, k in names
    ]


def split_with_views(photos: Sequence[Photo], views: Sequence[bool]) -> Split:
    """Every catalogue photo trains and is the gallery; the shoppers' photos of the catalogue's
    products are the queries (never trained on): the evidence a shop's own shoppers give."""
    catalogue = [i for i, v in enumerate(views) if not v]
    known = {photos[i].product_id for i in catalogue}
    queries = [i for i, v in enumerate(views) if v and photos[i].product_id in known]
    return Split(catalogue, catalogue, queries, [])


class PhotoCache:
    """Photos decoded once: the eval input exactly as the service computes it (kept as uint8)
    and a larger square uint8 copy that training crops from."""

    def __init__(
        self,
        photos: Sequence[Photo],
        prep: Preprocess,
        limits: ImageLimits | None = None,
        progress: Callable[[int], None] | None = None,
    ):
        self.prep = prep
        self.side = round(prep.size * CACHE_MARGIN)
        limits = limits or ImageLimits()
        big = Preprocess(self.side, crop="full", crop_fraction=1.0, interpolation=prep.interpolation)
        self._mean = np.asarray(prep.mean, np.float32).reshape(3, 1, 1)
        self._std = np.asarray(prep.std, np.float32).reshape(3, 1, 1)
        self.squares = np.zeros((len(photos), self.side, self.side, 3), np.uint8)
        self.eval_u8 = np.zeros((len(photos), 3, prep.size, prep.size), np.uint8)
        for i, photo in enumerate(photos):
            data = photo.read()
            # The service's own decode (images.decode), stored as the 8-bit values it normalised.
            pixels = decode(data, prep, limits)
            self.eval_u8[i] = np.clip(np.rint(pixels * self._std + self._mean), 0, 255)
            image = decode_rgb(data, big, limits)
            self.squares[i] = np.asarray(image.resize((self.side, self.side), Image.Resampling.BICUBIC))
            if progress:
                progress(1)

    def __len__(self) -> int:
        return len(self.squares)

    def eval_batch(self, indices: Sequence[int]) -> np.ndarray:
        """The model input of these photos as the service computes it (normalised NCHW)."""
        return ((self.eval_u8[list(indices)].astype(np.float32) - self._mean) / self._std).astype(np.float32)

    def augmented(
        self,
        indices: Sequence[int] | np.ndarray,
        rng: np.random.Generator,
        area: tuple[float, float],
        jitter: float,
        hflip: bool,
    ) -> np.ndarray:
        """A training batch: random resized crop, mirror, colour jitter; normalised NCHW."""
        out = np.zeros((len(indices), 3, self.prep.size, self.prep.size), np.float32)
        for n, i in enumerate(indices):
            image = Image.fromarray(self.squares[i])
            image = image.crop(_crop_box(self.side, rng, area))
            if hflip and rng.random() < 0.5:
                image = ImageOps.mirror(image)
            pixels = to_pixels(image, self.prep)  # squashed to the input, normalised
            out[n] = _jitter(pixels, rng, jitter, self.prep)
        return out


def _crop_box(side: int, rng: np.random.Generator, area: tuple[float, float]) -> tuple[int, int, int, int]:
    """A box of ``area`` (fraction) of the square, aspect ratio 3/4 to 4/3."""
    fraction = rng.uniform(*area)
    ratio = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    w = min(side, round(side * np.sqrt(fraction * ratio)))
    h = min(side, round(side * np.sqrt(fraction / ratio)))
    left = int(rng.integers(0, side - w + 1))
    top = int(rng.integers(0, side - h + 1))
    return left, top, left + w, top + h


def _jitter(pixels: np.ndarray, rng: np.random.Generator, amount: float, prep: Preprocess) -> np.ndarray:
    """Brightness, contrast and saturation each scaled by a factor in [1 - amount, 1 + amount]."""
    if amount <= 0:
        return pixels
    mean = np.asarray(prep.mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(prep.std, np.float32).reshape(3, 1, 1)
    rgb = pixels * std + mean  # back to 0..255
    brightness, contrast, saturation = rng.uniform(1 - amount, 1 + amount, size=3)
    rgb = rgb * brightness
    grey = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])[None]
    rgb = (rgb - grey.mean()) * contrast + grey.mean()
    grey = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])[None]
    rgb = (rgb - grey) * saturation + grey
    return ((np.clip(rgb, 0, 255) - mean) / std).astype(np.float32)
