"""The search page in headless Chromium (Debian's chromium, driven by Playwright): upload a
photo, see its product first; at a phone's and a desktop's width; region search by dragging a
box; the error state; screenshots as test artefacts in test-artifacts/."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image, ImageOps

WORDS = ("likely", "possible", "not sure")  # the page's words for a calibrated confidence
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


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def mirrored(image, tmp_path) -> Path:
    photo = tmp_path / "shopper-photo.jpg"
    ImageOps.mirror(Image.open(image.path).convert("RGB")).save(photo, "JPEG", quality=85)
    return photo


def boxes(page, selector: str) -> list[dict]:
    return page.eval_on_selector_all(selector, "els => els.map(e => e.getBoundingClientRect().toJSON())")


def test_on_a_phone_filters_sit_above_a_two_column_grid(stack, browser, demo_images, tmp_path):
    page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    page.goto(stack.api + "/")
    page.wait_for_function("document.querySelectorAll('#category option').length > 1")
    page.set_input_files("#file", str(mirrored(demo_images[12], tmp_path)))
    page.wait_for_selector("article.card", timeout=30_000)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
    aside, results = boxes(page, "aside")[0], boxes(page, "#results")[0]
    assert aside["bottom"] <= results["top"]  # the filters above the results
    cards = boxes(page, "article.card")
    assert len({round(c["left"]) for c in cards}) == 2 and all(c["right"] <= 390 for c in cards)
    label = page.inner_text("article.card .score")
    assert label in WORDS or label.startswith("similarity "), label
    # Once a photo is picked, the answer is in view: the first card's top is inside the screen.
    top = page.evaluate("document.querySelector('article.card').getBoundingClientRect().top")
    assert -1 < top < 844, top
    shot(page, "search-page-phone.png")
    page.close()


def test_on_a_desktop_details_more_results_and_price_fields(stack, browser, demo_images, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(stack.api + "/")
    assert page.get_attribute("link[rel=icon]", "href").startswith("data:image/svg+xml")
    page.wait_for_function("document.querySelectorAll('#category option').length > 1")
    page.fill("#top_k", "4")
    page.set_input_files("#file", str(mirrored(demo_images[30], tmp_path)))
    page.wait_for_function("document.querySelectorAll('article.card').length === 4")
    aside, results = boxes(page, "aside")[0], boxes(page, "#results")[0]
    assert aside["right"] <= results["left"]  # side by side
    assert not page.is_visible("#timings")  # timings only in the details view
    page.click("#details summary")
    assert "embed" in page.inner_text("#timings")
    page.click("#more")  # the next page, from next_offset
    page.wait_for_function("document.querySelectorAll('article.card').length === 8")
    ids = page.eval_on_selector_all("article.card", "els => els.map(e => e.dataset.productId)")
    assert len(set(ids)) == 8
    page.fill("#price_max", "1.5")  # a price field searches again by itself
    page.wait_for_function(
        "document.querySelectorAll('article.card').length > 0"
        " && [...document.querySelectorAll('article.card')]"
        ".every(c => Number(c.dataset.price) <= 1.5)",
        timeout=30_000,
    )
    shot(page, "search-page-desktop.png")
    page.close()


def test_a_failed_search_greys_the_results_and_says_why(stack, browser, demo_images, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(stack.api + "/")
    page.set_input_files("#file", str(mirrored(demo_images[3], tmp_path)))
    page.wait_for_selector("article.card", timeout=30_000)
    page.set_input_files("#file", {"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"not a photo"})
    page.wait_for_selector("#status.error")
    assert "400" in page.inner_text("#status")
    assert page.get_attribute("#results", "class") == "stale" and page.locator("article.card").count() > 0
    shot(page, "search-page-error.png")
    page.close()


def test_drag_a_box_on_the_photo_to_search_one_product_of_two(stack, browser, demo_images, tmp_path):
    """A collage of two products: the box over each half finds that product first."""
    from tests.integration.test_region_search import LEFT, RIGHT, collage

    photo = tmp_path / "two-products.jpg"
    photo.write_bytes(collage(demo_images))
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(stack.api + "/")
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("article.card", timeout=30_000)
    for product, (left, right) in ((LEFT, (0.02, 0.48)), (RIGHT, (0.52, 0.98))):
        box = page.query_selector("#frame img").bounding_box()
        page.evaluate("document.querySelector('#status').textContent = ''")
        page.mouse.move(box["x"] + left * box["width"], box["y"] + 0.02 * box["height"])
        page.mouse.down()
        page.mouse.move(box["x"] + right * box["width"], box["y"] + 0.98 * box["height"], steps=5)
        page.mouse.up()
        page.wait_for_function(
            "document.querySelector('#status').textContent.includes('products for the selected region')"
        )
        assert page.get_attribute("article.card", "data-product-id") == product
        assert page.is_visible("#box") and page.is_visible("#whole")
    shot(page, "search-page-region.png")
    page.click("#whole")  # back to the whole photo
    page.wait_for_function("!document.querySelector('#status').textContent.includes('region')")
    page.close()


def wait_calibrated(stack, timeout_s: float = 240.0) -> dict:
    """The stack calibrates the catalogue once its uploads settle (ADAPT_SETTLE_S), as adapt does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(stack.api + "/health", timeout=10) as response:
            health = json.load(response)
        if health.get("calibration"):
            return health
        time.sleep(2)
    raise AssertionError(f"the stack did not calibrate within {timeout_s} s: {health}")


def test_confidence_in_words_and_the_we_may_not_carry_this_state(stack, browser, demo_images, tmp_path):
    health = wait_calibrated(stack)
    page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    page.goto(stack.api + "/")
    page.wait_for_function("document.querySelectorAll('#category option').length > 1")
    page.set_input_files("#file", str(mirrored(demo_images[30], tmp_path)))
    page.wait_for_selector("article.card[data-confidence]", timeout=30_000)
    cards = page.query_selector_all("article.card")
    confidences = [float(c.get_attribute("data-confidence")) for c in cards]
    words = [c.query_selector(".score").inner_text() for c in cards]
    assert all(w in WORDS for w in words) and confidences == sorted(confidences, reverse=True)
    threshold = health["calibration"]["no_match_threshold"]
    expected = ["not sure" if c < threshold else "likely" if c >= 0.7 else "possible" for c in confidences]
    assert words == expected
    assert cards[0].get_attribute("data-product-id") == demo_images[30].metadata["product-id"]
    assert page.is_hidden("#nomatch") == (confidences[0] >= threshold)
    page.close()
    # A shop that wants to be surer (?min_confidence=1): the same photo is now "we may not carry
    # this", the closest products still shown, and the banner is in view on the phone.
    page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    page.goto(stack.api + "/?min_confidence=1")
    page.wait_for_function("document.querySelectorAll('#category option').length > 1")
    page.set_input_files("#file", str(mirrored(demo_images[30], tmp_path)))
    page.wait_for_selector("#nomatch:not([hidden])", timeout=30_000)
    assert page.locator("article.card").count() > 0
    assert page.inner_text("article.card .score") == "not sure"  # the banner and the card agree
    top = page.evaluate("document.querySelector('#nomatch').getBoundingClientRect().top")
    assert -1 < top < 844, top  # scrolled to it (to a fraction of a pixel)
    shot(page, "search-page-no-match.png")
    page.close()


def test_more_like_this_and_not_this_buttons_steer_the_answer(stack, browser, demo_images, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(stack.api + "/")
    page.wait_for_function("document.querySelectorAll('#category option').length > 1")
    page.set_input_files("#file", str(mirrored(demo_images[7], tmp_path)))
    page.wait_for_selector("article.card", timeout=30_000)

    def ranking() -> list[str]:
        return page.eval_on_selector_all("article.card", "els => els.map(e => e.dataset.productId)")

    def click_and_wait(selector: str) -> None:
        """Click, then wait for the search it starts to be answered and drawn."""
        with page.expect_response(lambda r: r.url.endswith("/search")):
            page.click(selector)
        page.wait_for_selector("#search:not([disabled])")

    before = ranking()
    click_and_wait("article.card >> nth=0 >> button.negative")
    after = ranking()
    assert before[0] not in after and set(after) == set(before) - {before[0]}
    assert "not 1" in page.inner_text("#steering")
    wanted = after[-1]
    click_and_wait(f"article.card[data-product-id='{wanted}'] button.positive")
    assert ranking().index(wanted) < len(after) - 1  # the product asked for moved up
    click_and_wait("#unsteer")
    assert ranking() == before and page.is_hidden("#steering")
    page.close()


def test_this_is_it_turns_the_photo_into_a_view_of_the_product(stack, browser, demo_images, tmp_path):
    """The shopper's pick goes through POST /feedback; the local stack indexes the photo as a
    photo of that product (then the test deletes it again: the stack is shared)."""
    from visual_search.aws import s3_client

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(stack.api + "/")
    page.wait_for_function("document.querySelectorAll('#category option').length > 1")
    page.set_input_files("#file", str(mirrored(demo_images[3], tmp_path)))
    page.wait_for_selector("article.card button.pick", timeout=30_000)
    wanted = page.eval_on_selector("article.card >> nth=1", "e => e.dataset.productId")
    with page.expect_response(lambda r: r.url.endswith("/feedback")) as answer:
        page.click("article.card >> nth=1 >> button.pick")
    taken = answer.value.json()
    assert answer.value.status == 200 and taken["product_id"] == wanted
    page.wait_for_selector("article.card >> nth=1 >> button.picked")
    assert page.eval_on_selector_all("button.pick", "els => els.every(b => b.disabled)")
    assert "Thanks" in page.inner_text("#status")
    page.close()

    def points_become(n: int) -> None:
        deadline = time.monotonic() + 60
        while stack.get("/health")["points"] != n:
            assert time.monotonic() < deadline, f"the catalogue did not reach {n} points"
            time.sleep(0.2)

    points_become(61)
    view = taken["view"]
    head = s3_client(stack.s3_url).head_object(Bucket=view["bucket"], Key=view["key"])
    assert head["Metadata"]["product-id"] == wanted and head["Metadata"]["source"] == "shopper"
    s3_client(stack.s3_url).delete_object(Bucket=view["bucket"], Key=view["key"])
    points_become(60)
