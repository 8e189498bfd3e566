"""`visual-search ingest ./folder`: a local catalogue folder with its products.csv, indexed
through the normal path, resumable, and following edits of the folder's metadata."""

from __future__ import annotations

import shutil

import pytest

from visual_search.catalog import Catalog
from visual_search.config import StoreSettings
from visual_search.dev.folders import ingest_folder, read_products
from visual_search.store import CatalogStore, open_backend

BUCKET = "local"


@pytest.fixture
def catalog(embedder):
    settings = StoreSettings(path=":memory:", collection="folder")
    return Catalog(embedder, CatalogStore(open_backend(settings), settings, embedder.model_id, embedder.dim))


@pytest.fixture
def folder(tmp_path, demo_images):
    (tmp_path / "sku-1").mkdir()
    shutil.copy(demo_images[0].path, tmp_path / "sku-1" / "a.jpg")
    (tmp_path / "products.csv").write_text("product_id,category,price\nsku-1,Milk,1.99\n")
    return tmp_path


def stored(catalog) -> dict:
    return catalog.store.get_images([(BUCKET, "sku-1/a.jpg")])[(BUCKET, "sku-1/a.jpg")]


def test_a_rerun_skips_unchanged_images(catalog, folder):
    assert ingest_folder(catalog, folder, BUCKET, quiet=True)["indexed"] == 1
    assert ingest_folder(catalog, folder, BUCKET, quiet=True) == {"indexed": 0, "unchanged": 1, "failed": 0}


def test_an_edited_products_csv_is_applied_on_the_next_run(catalog, folder):
    ingest_folder(catalog, folder, BUCKET, quiet=True)
    (folder / "products.csv").write_text("product_id,category,price\nsku-1,Oat-Milk,2.49\n")
    assert ingest_folder(catalog, folder, BUCKET, quiet=True)["indexed"] == 1
    point = stored(catalog)
    assert point["category"] == "Oat-Milk" and point["price"] == 2.49


def test_a_products_csv_saved_with_a_byte_order_mark(folder):
    (folder / "products.csv").write_bytes(
        "\ufeffproduct_id,category,price\nsku-1,Milk,1.99\n".encode("utf-8")
    )
    assert read_products(folder) == {"sku-1": {"product-id": "sku-1", "category": "Milk", "price": "1.99"}}


def test_prune_deletes_the_points_of_files_gone_from_the_folder(catalog, folder, demo_images):
    (folder / "sku-2").mkdir()
    shutil.copy(demo_images[12].path, folder / "sku-2" / "b.jpg")
    ingest_folder(catalog, folder, BUCKET, quiet=True)
    (folder / "sku-2" / "b.jpg").rename(folder / "sku-1" / "b.jpg")  # moved to another product
    kept = ingest_folder(catalog, folder, BUCKET, quiet=True)
    assert "deleted" not in kept and catalog.store.count() == 3  # without --prune: kept
    pruned = ingest_folder(catalog, folder, BUCKET, quiet=True, prune=True)
    assert pruned["deleted"] == 1
    assert {h.payload["key"] for h in catalog.store.scroll()} == {"sku-1/a.jpg", "sku-1/b.jpg"}


def test_prune_is_for_folders_only(capsys):
    from visual_search.dev.cli import main

    assert main(["ingest", "s3://bucket/prefix", "--prune"]) == 1
    assert "reconcile" in capsys.readouterr().err


def test_symlinked_product_folders_are_followed_and_a_loop_is_not(tmp_path):
    """A catalogue folder assembled from links (a product folder kept elsewhere) is read whole;
    a link back into the catalogue does not make the scan go round for ever."""
    from visual_search.dev.folders import DEMO_CATALOG, scan

    products = sorted(p for p in DEMO_CATALOG.iterdir() if p.is_dir())[:3]
    catalogue = tmp_path / "catalogue"
    catalogue.mkdir()
    (catalogue / products[0].name).symlink_to(products[0], target_is_directory=True)  # linked
    for product in products[1:]:
        (catalogue / product.name).mkdir()
        for photo in product.iterdir():
            (catalogue / product.name / photo.name).symlink_to(photo)  # files linked, folder real
    (catalogue / products[1].name / "again").symlink_to(catalogue, target_is_directory=True)  # a loop
    images = scan(catalogue)
    photos = {p.name: sorted(f.name for f in p.iterdir() if f.is_file()) for p in products}
    found: dict[str, list[str]] = {}
    for img in images:
        product, name = img.key.split("/", 1)
        found.setdefault(product, []).append(name)
    assert {k: sorted(v) for k, v in found.items()} == photos  # every photo once, none through the loop
