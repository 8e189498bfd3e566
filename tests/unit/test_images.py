"""Decoding: every image mode and container we promise, and a typed error for each bad input."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from tests.conftest import jpeg_bytes, png_bytes
from visual_search.api.statuses import status_for
from visual_search.config import ImageLimits
from visual_search.errors import (
    CorruptImageError,
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
)
from visual_search.images import Preprocess, _draft_for, decode, open_image

PREP = Preprocess(size=224)
FULL = Preprocess(size=224, crop="full", crop_fraction=1.0)  # the shipped card's input
LIMITS = ImageLimits()
WHITE_PIXEL = (255 - 127) / 128


def gradient(width=320, height=240) -> Image.Image:
    """A photo-like image whose left and right halves differ, so flips and rotations show."""
    x = np.linspace(0, 255, width, dtype=np.float32)
    y = np.linspace(0, 255, height, dtype=np.float32)
    red = np.tile(x, (height, 1))
    green = np.tile(y[:, None], (1, width))
    blue = np.full((height, width), 60, np.float32)
    return Image.fromarray(np.stack([red, green, blue], -1).astype(np.uint8), "RGB")


def close(a: np.ndarray, b: np.ndarray, tol: float = 0.08) -> bool:
    return float(np.abs(a - b).mean()) < tol


def test_output_is_normalised_chw_float32():
    pixels = decode(jpeg_bytes(gradient()), PREP, LIMITS)
    assert pixels.shape == (3, 224, 224) and pixels.dtype == np.float32
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0


def test_exif_orientation_is_applied():
    upright = gradient(300, 200)
    # Stored rotated; EXIF orientation 6 says "rotate 90 degrees clockwise to display".
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    with_exif = decode(jpeg_bytes(stored, exif=exif.tobytes()), PREP, LIMITS)
    reference = decode(jpeg_bytes(upright), PREP, LIMITS)
    ignored = decode(jpeg_bytes(stored), PREP, LIMITS)
    assert close(with_exif, reference)
    assert not close(ignored, reference)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "1", "I;16"])
def test_modes_decode_to_rgb(mode):
    source = gradient()
    if mode == "I;16":
        grey = np.asarray(source.convert("L"), np.uint16) * 257
        image = Image.fromarray(grey)
        assert image.mode == "I;16"
        data = png_bytes(image)
    elif mode == "CMYK":
        data = jpeg_bytes(source)  # re-save below as CMYK JPEG
        buffer = io.BytesIO()
        source.convert("CMYK").save(buffer, "JPEG", quality=95)
        data = buffer.getvalue()
    else:
        data = png_bytes(source.convert(mode))
    pixels = decode(data, PREP, LIMITS)
    assert pixels.shape == (3, 224, 224)
    if mode in ("L", "I;16"):
        # greyscale: all three channels equal, and 16-bit is scaled, not clipped to white
        assert np.allclose(pixels[0], pixels[1]) and np.allclose(pixels[1], pixels[2])
        reference = decode(png_bytes(source.convert("L")), PREP, LIMITS)
        assert close(pixels, reference, 0.02)
    if mode == "CMYK":
        assert close(pixels, decode(jpeg_bytes(source, quality=95), PREP, LIMITS), 0.05)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparency_is_composited_on_white(mode):
    image = Image.new("RGBA", (200, 200), (255, 0, 0, 0))  # fully transparent red
    image.paste((0, 0, 255, 255), (80, 80, 120, 120))  # an opaque blue square in the middle
    pixels = decode(png_bytes(image.convert(mode)), PREP, LIMITS)
    corner = pixels[:, 5, 5]
    assert np.allclose(corner, WHITE_PIXEL, atol=0.02), corner
    assert pixels[:, 112, 112].tolist() != corner.tolist()


def test_palette_with_transparency_is_composited_on_white():
    image = Image.new("P", (100, 100), 0)
    image.putpalette([0, 0, 0] + [200, 10, 10] * 255)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", transparency=0)
    pixels = decode(buffer.getvalue(), PREP, LIMITS)
    assert np.allclose(pixels, WHITE_PIXEL, atol=0.02)


@pytest.mark.parametrize("mode,colour", [("L", 0), ("RGB", (0, 0, 0))])
def test_a_transparent_colour_chunk_is_composited_on_white(mode, colour):
    """Greyscale or RGB PNGs with a tRNS colour, as PNG optimisers write RGBA cut-outs."""
    image = Image.new(mode, (100, 100), colour)  # all of it the transparent colour
    buffer = io.BytesIO()
    image.save(buffer, "PNG", transparency=colour)
    pixels = decode(buffer.getvalue(), PREP, LIMITS)
    assert np.allclose(pixels, WHITE_PIXEL, atol=0.02)


def test_animated_gif_uses_first_frame():
    red, blue = Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))
    buffer = io.BytesIO()
    red.save(buffer, "GIF", save_all=True, append_images=[blue], duration=100, loop=0)
    pixels = decode(buffer.getvalue(), PREP, LIMITS)
    assert pixels[0].mean() > 0.9 and pixels[2].mean() < -0.9


def test_webp_decodes():
    buffer = io.BytesIO()
    gradient().save(buffer, "WEBP", quality=90)
    assert close(decode(buffer.getvalue(), PREP, LIMITS), decode(png_bytes(gradient()), PREP, LIMITS))


def test_large_jpeg_is_decoded_at_reduced_scale():
    big = gradient(4000, 3000)
    data = jpeg_bytes(big, quality=85)
    image = open_image(data, LIMITS)
    _draft_for(image, PREP)
    # The crop (87.5% of the short side) must still cover 224 px; libjpeg scales by 1/8 at most.
    assert image.size == (500, 375)
    assert min(image.size) * PREP.crop_fraction >= PREP.size
    # The drafted result matches a full decode closely.
    full = Image.open(io.BytesIO(data)).convert("RGB")
    from visual_search.images import to_pixels

    assert close(decode(data, PREP, LIMITS), to_pixels(full, PREP), 0.02)


def test_a_1000px_photo_is_decoded_at_quarter_scale():
    """1000x750 -> 250x188: the short side is 84% of 224, within DRAFT_FLOOR; the result stays
    close to resizing the full decode."""
    from visual_search.images import DRAFT_FLOOR, to_pixels

    data = jpeg_bytes(gradient(1000, 750), quality=90)
    image = open_image(data, LIMITS)
    _draft_for(image, FULL)
    assert image.size == (250, 188)
    assert min(image.size) >= DRAFT_FLOOR * FULL.size
    full = Image.open(io.BytesIO(data)).convert("RGB")
    assert close(decode(data, FULL, LIMITS), to_pixels(full, FULL), 0.02)


def test_draft_is_much_faster_than_a_full_decode():
    data = jpeg_bytes(gradient(4000, 3000), quality=85)
    started = time.perf_counter()
    Image.open(io.BytesIO(data)).convert("RGB")
    full = time.perf_counter() - started
    started = time.perf_counter()
    decode(data, PREP, LIMITS)
    drafted = time.perf_counter() - started
    assert drafted < full  # measured ~10x in docs/benchmarks.md; here only the direction


@pytest.mark.parametrize("size", [(1, 1), (30000, 1), (1, 30000), (30000, 4)])
def test_extreme_shapes_decode(size):
    pixels = decode(png_bytes(Image.new("RGB", size, (10, 200, 30))), PREP, LIMITS)
    assert pixels.shape == (3, 224, 224)
    assert np.isfinite(pixels).all()


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


BAD_INPUTS = {
    "empty": (b"", EmptyImageError),
    "text named jpg": (b"this is a product description, not a photo\n" * 20, UnsupportedImageError),
    "svg": (
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>',
        UnsupportedImageError,
    ),
    "html": (b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>", UnsupportedImageError),
    "pdf": (b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", UnsupportedImageError),
    "truncated jpeg": (truncated(jpeg_bytes(gradient(800, 600))), CorruptImageError),
    "truncated png": (truncated(png_bytes(gradient(800, 600))), CorruptImageError),
    "jpeg header only": (jpeg_bytes(gradient())[:40], CorruptImageError),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_raises_typed_error(name):
    data, expected = BAD_INPUTS[name]
    with pytest.raises(expected) as info:
        decode(data, PREP, LIMITS)
    assert isinstance(info.value, ImageError)
    assert str(info.value)  # a message a user can act on
    assert 400 <= status_for(info.value) < 500  # a client error in the API


def test_decompression_bomb_is_refused_before_decoding():
    # A tiny PNG that claims 20000 x 20000 pixels (400 MP).
    bomb = png_bytes(Image.new("1", (20000, 20000)), optimize=True)
    assert len(bomb) < 200_000
    started = time.perf_counter()
    with pytest.raises(ImageTooLargeError) as info:
        decode(bomb, PREP, LIMITS)
    assert time.perf_counter() - started < 1.0
    assert status_for(info.value) == 413 and "pixels" in str(info.value)


def test_pixel_limit_is_configurable():
    data = png_bytes(Image.new("RGB", (100, 100)))
    with pytest.raises(ImageTooLargeError):
        decode(data, PREP, ImageLimits(max_pixels=9_999))
    assert decode(data, PREP, ImageLimits(max_pixels=10_000)).shape == (3, 224, 224)


def test_byte_limit_is_configurable():
    data = jpeg_bytes(gradient())
    with pytest.raises(ImageTooLargeError) as info:
        decode(data, PREP, ImageLimits(max_bytes=len(data) - 1))
    assert "bytes" in str(info.value)
    assert decode(data, PREP, ImageLimits(max_bytes=len(data))).shape == (3, 224, 224)


def test_full_image_crop_keeps_the_borders():
    image = Image.new("RGB", (300, 300), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 15, 300))  # a white band at the left edge
    centre = decode(png_bytes(image), PREP, LIMITS)
    full = decode(png_bytes(image), Preprocess(size=224, crop="full"), LIMITS)
    assert centre[:, :, :5].mean() < -0.9  # the centre crop cut the band away
    assert full[:, :, :5].mean() > 0.9


@pytest.mark.parametrize(
    "size,photo,drafted",
    [
        (224, (1000, 750), (250, 188)),  # 1/4: 188 px >= 80% of 224
        (384, (1000, 750), (500, 375)),  # 1/2: 1/4 (188 px) would be 49% of 384
        (384, (1200, 900), (600, 450)),  # 1/2: 1/4 (225 px) would be 59% of 384
        (384, (2400, 1800), (600, 450)),  # 1/4
        (448, (1000, 750), (500, 375)),  # 1/2 only: 1/4 (188 px) would be 42% of 448
        (448, (4000, 3000), (500, 375)),  # 1/8
        (448, (600, 450), (600, 450)),  # 1/2 (225 px) is too small: full size
    ],
)
def test_draft_decodes_at_the_scale_the_input_size_needs(size, photo, drafted):
    """The model input decides the DCT scale: a larger input keeps more of the photo."""
    from dataclasses import replace

    from visual_search.images import DRAFT_FLOOR, to_pixels

    prep = replace(FULL, size=size)
    data = jpeg_bytes(gradient(*photo), quality=90)
    image = open_image(data, LIMITS)
    _draft_for(image, prep)
    assert image.size == drafted
    assert min(image.size) >= DRAFT_FLOOR * size or image.size == photo
    pixels = decode(data, prep, LIMITS)
    assert pixels.shape == (3, size, size)
    full = Image.open(io.BytesIO(data)).convert("RGB")
    assert close(pixels, to_pixels(full, prep), 0.02)
