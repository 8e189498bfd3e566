"""The search page in headless Chromium (Debian's chromium, driven by Playwright): upload a
photo, see its product first, save a screenshot as a test artefact."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageOps

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on this machine (scripts/test.sh installs Debian's "
    "chromium package when it can: apt-get as root)",
)


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield browser
        browser.close()


def test_upload_a_photo_and_see_its_product_first(stack, browser, demo_images, tmp_path):
    target = demo_images[44]
    photo = tmp_path / "shopper-photo.jpg"
    ImageOps.mirror(Image.open(target.path).convert("RGB")).save(photo, "JPEG", quality=85)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(stack.api + "/")
    page.wait_for_function("document.querySelectorAll('#category option').length > 1")
    assert "60 images indexed" in page.inner_text("#health")
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("article.card", timeout=30_000)
    first = page.query_selector("article.card")
    assert first.get_attribute("data-product-id") == target.metadata["product-id"]
    assert page.locator("article.card").count() == 10  # one card per product
    page.wait_for_function(
        "[...document.querySelectorAll('article.card img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "search-page.png"), full_page=True)
    # a filter narrows the grid, and an error shows as a message, not a broken page
    page.select_option("#category", "Juice")
    page.wait_for_function("document.querySelectorAll('article.card').length === 2")
    page.set_input_files(
        "#file", {"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"this is not a photo"}
    )
    page.wait_for_selector("#status.error")
    assert "400" in page.inner_text("#status")
    page.close()
