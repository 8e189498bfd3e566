"""Image folders on disk: the demo catalogue, backfills from a local folder, evaluation sets.

A catalogue folder has one subfolder per product (folder name = product id) and, optionally, a
``products.csv`` whose columns (``product_id`` plus e.g. ``category``, ``brand``, ``title``,
``price``) become each image's metadata, exactly as S3 user metadata would.
"""

from __future__ import annotations

import csv
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..catalog import IMAGE_EXTENSIONS

PACKAGE_ROOT = Path(__file__).resolve().parents[3]  # the checkout: src/visual_search/dev/folders.py
DEMO_CATALOG = PACKAGE_ROOT / "data" / "demo-catalog"


@dataclass(frozen=True)
class LocalImage:
    path: Path
    key: str  # path relative to the folder, with forward slashes, as an S3 key would be
    metadata: dict[str, str]

    @property
    def content_type(self) -> str:
        suffix = self.path.suffix.lower().lstrip(".")
        return {"jpg": "image/jpeg", "tif": "image/tiff"}.get(suffix, f"image/{suffix}")


def read_products(folder: Path) -> dict[str, dict[str, str]]:
    """``products.csv`` as {product_id: {column: value}} with S3-style metadata names."""
    table = folder / "products.csv"
    if not table.is_file():
        return {}
    with table.open(newline="", encoding="utf-8-sig") as handle:  # Excel's "CSV UTF-8" has a BOM
        rows = list(csv.DictReader(handle))
    products = {}
    for row in rows:
        product_id = (row.get("product_id") or "").strip()
        if product_id:
            products[product_id] = {
                ("product-id" if k == "product_id" else k.replace("_", "-")): v
                for k, v in row.items()
                if k and v
            }
    return products


def catalogue_gaps(folder: Path, images: list[LocalImage]) -> tuple[list[str], list[str]]:
    """(products.csv rows whose product has no photo, product folders with no row); both empty
    when the folder has no products.csv (every product then has only its folder's name)."""
    products = read_products(Path(folder))
    if not products:
        return [], []
    found = {img.key.split("/")[0] for img in images if "/" in img.key}
    return sorted(set(products) - found), sorted(found - set(products))


def scan(folder: Path) -> list[LocalImage]:
    """Every image under ``folder`` in a stable order, with its product's metadata."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    products = read_products(folder)
    images = []
    for path in sorted(_files(folder)):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            key = path.relative_to(folder).as_posix()
            product = path.parent.name if path.parent != folder else path.stem
            images.append(LocalImage(path, key, dict(products.get(product, {}))))
    return images


def _files(folder: Path) -> list[Path]:
    """Every file under ``folder``, following symlinked folders (a product folder linked in from
    elsewhere is a product like the others), but never a link back into a folder it is in."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        here = Path(root)
        real = os.path.realpath(here)
        depth = len(here.relative_to(folder).parts)
        if any(os.path.realpath(here.parents[i]) == real for i in range(depth)):
            dirs.clear()  # a loop: this folder is one of its own ancestors
            continue
        found += [here / name for name in files if (here / name).is_file()]
    return found


def ingest_folder(
    catalog, folder: Path, bucket: str, batch: int = 16, quiet: bool = False, prune: bool = False
) -> dict:
    """Index every image of a local catalogue folder through the normal indexing path.

    Resumable and idempotent: an image whose content hash matches its stored ETag, and whose
    products.csv row still says what its point says, is skipped. With ``prune``, points of
    ``bucket`` whose file is no longer in the folder are deleted.
    """
    from ..catalog import ImageSource, describes_same
    from ..ingest.pipeline import bare_etag
    from ..ops.sync import md5_etag

    images = scan(folder)
    counts = {"indexed": 0, "unchanged": 0, "failed": 0}
    from tqdm import tqdm

    bar = tqdm(total=len(images), desc=f"indexing {folder.name}", unit="img", disable=quiet, file=sys.stderr)
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        stored = catalog.stored([(bucket, img.key) for img in chunk])
        sources = []
        for img in chunk:
            data = img.path.read_bytes()
            etag = md5_etag(data)
            source = ImageSource(
                bucket, img.key, data, img.metadata, content_type=img.content_type, etag=etag
            )
            point = stored.get((bucket, img.key), {})
            if bare_etag(point.get("etag")) == etag and describes_same(point, source, catalog.model_id):
                counts["unchanged"] += 1
                continue
            sources.append(source)
        for result in catalog.index(sources).results if sources else []:
            if result.ok:
                counts["indexed"] += 1
            else:
                counts["failed"] += 1
                print(f"skipped {result.source.key}: {result.error}", file=sys.stderr)
        bar.update(len(chunk))
    bar.close()
    if prune:
        present = {img.key for img in images}
        gone = [
            (bucket, h.payload["key"])
            for h in catalog.images_in(bucket)
            if h.payload.get("key") not in present
        ]
        catalog.remove(gone)
        counts["deleted"] = len(gone)
    return counts
