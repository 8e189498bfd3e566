"""Region search: a collage of two real product photos (neither of them indexed), searched one
half at a time, finds each product (the whole collage gives one answer for both)."""

from __future__ import annotations

import io
import uuid

import pytest
from PIL import Image

from visual_search.catalog import Catalog, ImageSource
from visual_search.config import StoreSettings
from visual_search.images import Region
from visual_search.store import CatalogStore, Query, open_client_backend

LEFT, RIGHT = "Oatly-Oat-Milk", "Tropicana-Mandarin-Morning"


@pytest.fixture(scope="module")
def catalog(embedder, demo_images):
    settings = StoreSettings(path=":memory:", collection=f"region-{uuid.uuid4().hex[:8]}")
    store = CatalogStore(open_client_backend(settings), settings, embedder.model_id, embedder.dim)
    catalog = Catalog(embedder, store)
    held_out = {collage_photo(demo_images, LEFT).key, collage_photo(demo_images, RIGHT).key}
    sources = [
        ImageSource("demo", img.key, img.path.read_bytes(), img.metadata, content_type="image/jpeg")
        for img in demo_images
        if img.key not in held_out
    ]
    assert all(r.ok for r in catalog.index(sources).results)
    return catalog


def collage_photo(demo_images, product: str):
    return next(img for img in demo_images if img.metadata.get("product-id") == product)


def collage(demo_images) -> bytes:
    """The two photos side by side, each scaled to 400 px high, on one canvas."""
    halves = [
        Image.open(collage_photo(demo_images, p).path).convert("RGB").resize((400, 400))
        for p in (LEFT, RIGHT)
    ]
    canvas = Image.new("RGB", (800, 400), "white")
    canvas.paste(halves[0], (0, 0))
    canvas.paste(halves[1], (400, 0))
    buffer = io.BytesIO()
    canvas.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def top(catalog, data: bytes, region: Region | None) -> str:
    return catalog.search_image(data, Query(top_k=1), region).hits[0].payload["product_id"]


def test_each_half_of_a_collage_finds_its_product(catalog, demo_images):
    data = collage(demo_images)
    assert top(catalog, data, Region(0.0, 0.0, 0.5, 1.0)) == LEFT
    assert top(catalog, data, Region(0.5, 0.0, 0.5, 1.0)) == RIGHT


def test_a_region_is_taken_after_the_exif_rotation(catalog, demo_images):
    """The collage stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise to view):
    the region is in the coordinates of the photo as seen, not as stored."""
    viewed = Image.open(io.BytesIO(collage(demo_images)))
    stored = viewed.transpose(Image.Transpose.ROTATE_90)  # undone by orientation 6
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    assert top(catalog, buffer.getvalue(), Region(0.0, 0.0, 0.5, 1.0)) == LEFT
    assert top(catalog, buffer.getvalue(), Region(0.5, 0.0, 0.5, 1.0)) == RIGHT


def test_region_pixels_stay_inside_and_at_least_one_pixel():
    assert Region(0.0, 0.0, 0.5, 1.0).pixels(800, 400) == (0, 0, 400, 400)
    assert Region(0.999, 0.999, 0.0001, 0.0001).pixels(10, 10) == (9, 9, 10, 10)
