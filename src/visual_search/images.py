"""Image bytes -> model-ready pixels, hardened against what users and attackers upload.

Decoding is the expensive half of embedding a photo, so a JPEG is decoded straight at a reduced
scale (``Image.draft``, a DCT-domain downscale, see DRAFT_FLOOR) and every other format is shrunk with
``reduce()`` before the bicubic resize. Bytes and pixel counts are checked before anything is
decoded, so a decompression bomb costs nothing. Every failure is a typed ``ImageError`` with a
message a user can act on.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .config import ImageLimits
from .errors import CorruptImageError, EmptyImageError, ImageTooLargeError, UnsupportedImageError

# The formats a product photo arrives in; anything else (SVG, HTML, PDF, ...) is refused.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"})
WHITE = (255, 255, 255)
# A JPEG may be decoded at a DCT scale whose short side is down to 80% of the model's input
# (stretched back up by the resize): for a 1000x750 photo that is 1/4 instead of 1/2 scale,
# 40% less decoding, with embeddings at cosine 0.993 on average to the larger decode and equal
# recall (docs/quality.md).
DRAFT_FLOOR = 0.8

# Truncated files must fail, not decode half-grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Pillow's global bomb guard is replaced by ours (ImageLimits.max_pixels, configurable and
# checked from the header before any pixel is decoded), so the two cannot disagree.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class Preprocess:
    """How a model wants its input: taken from the model card."""

    size: int
    crop_fraction: float = 0.875
    crop: str = "center"  # "center": square centre crop; "full": whole image squashed to square
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    interpolation: str = "bicubic"


_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
}


def open_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """Identify the image and check its size without decoding its pixels."""
    if not data:
        raise EmptyImageError("the image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(f"the image is {len(data):,} bytes; the limit is {limits.max_bytes:,} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UnsupportedImageError(
            "the data is not a supported image (expected JPEG, PNG, WebP, GIF, BMP or TIFF)"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError("the image's dimensions exceed the decoder's safety limit") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise CorruptImageError(f"the image header cannot be read: {exc}") from None
    if image.format not in SUPPORTED_FORMATS:
        raise UnsupportedImageError(
            f"{image.format} images are not supported; use JPEG, PNG, WebP, GIF, BMP or TIFF"
        )
    width, height = image.size
    if width < 1 or height < 1:
        raise CorruptImageError(f"the image has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(
            f"the image is {width}x{height} = {width * height:,} pixels; "
            f"the limit is {limits.max_pixels:,} pixels"
        )
    return image


@dataclass(frozen=True)
class Region:
    """A box in relative [0, 1] coordinates of the (EXIF-rotated) image: search one product in a
    photo of several. Validated by the API (422); here only applied."""

    x: float
    y: float
    width: float
    height: float

    def pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The box in pixels of a ``width`` x ``height`` image, at least one pixel each way."""
        left = min(width - 1, max(0, math.floor(self.x * width)))
        top = min(height - 1, max(0, math.floor(self.y * height)))
        right = max(left + 1, min(width, math.ceil((self.x + self.width) * width)))
        bottom = max(top + 1, min(height, math.ceil((self.y + self.height) * height)))
        return left, top, right, bottom


def _draft_for(image: Image.Image, prep: Preprocess, region: Region | None = None) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale while the crop keeps DRAFT_FLOOR of the
    model input's size (of the region's, when only a region is embedded)."""
    if image.format not in ("JPEG", "MPO"):
        return
    width, height = image.size
    fraction = prep.crop_fraction if prep.crop == "center" else 1.0
    if region is not None:
        fraction *= max(1e-3, min(region.width, region.height))
    needed = DRAFT_FLOOR * prep.size / max(fraction, 1e-6)
    scale = needed / min(width, height)
    if scale < 1.0:
        image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))


def _load(image: Image.Image) -> Image.Image:
    """Decode the first frame, raising a typed error for truncated or broken data."""
    try:
        image.seek(0)
        image.load()
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise CorruptImageError(f"the image data is truncated or corrupt: {exc}") from None
    except Image.DecompressionBombError:
        raise ImageTooLargeError("the image's dimensions exceed the decoder's safety limit") from None
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency is composited on white."""
    mode = image.mode
    if mode.startswith("I") or mode == "F":  # 16/32-bit greyscale: scale, do not clip
        values = np.asarray(image, dtype=np.float32)
        top = 65535.0 if values.max(initial=0) > 255 or mode.startswith("I;16") else 255.0
        image = Image.fromarray(np.clip(values * (255.0 / top), 0, 255).astype(np.uint8))
        mode = "L"
    if mode in ("P", "L", "RGB") and "transparency" in image.info:
        image = image.convert("RGBA")  # a tRNS colour, as optimisers write RGBA cut-outs
    elif mode == "P":
        image = image.convert("RGB")
    elif mode in ("LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, WHITE)
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image if image.mode == "RGB" else image.convert("RGB")


def _crop_box(width: int, height: int, prep: Preprocess) -> tuple[float, float, float, float]:
    if prep.crop == "full":
        return (0.0, 0.0, float(width), float(height))
    side = max(1.0, min(width, height) * prep.crop_fraction)
    left, top = (width - side) / 2.0, (height - side) / 2.0
    return (left, top, left + side, top + side)


def to_pixels(image: Image.Image, prep: Preprocess, fast: bool = True) -> np.ndarray:
    """A decoded RGB image -> normalised CHW float32 array of the model's input size.

    ``fast`` lets Pillow ``reduce()`` by an integer factor before the bicubic resize when the
    image is over 3x the target, which is near-identical and several times cheaper.
    """
    box = _crop_box(*image.size, prep)
    resized = image.resize(
        (prep.size, prep.size),
        resample=_RESAMPLE[prep.interpolation],
        box=box,
        reducing_gap=3.0 if fast else None,
    )
    # Channels first while still 8-bit, then normalise in place: per-channel constants broadcast
    # over whole planes, which is 6x cheaper than over the 3-wide last axis of an HWC array.
    array = np.asarray(resized).transpose(2, 0, 1).astype(np.float32, order="C")
    array -= np.asarray(prep.mean, np.float32).reshape(3, 1, 1)
    array *= (1.0 / np.asarray(prep.std, np.float32)).reshape(3, 1, 1)
    return array


def decode(data: bytes, prep: Preprocess, limits: ImageLimits, region: Region | None = None) -> np.ndarray:
    """Image file bytes -> the model's input tensor for one image (C, H, W); with ``region``,
    for that box of the EXIF-rotated image only."""
    return to_pixels(decode_rgb(data, prep, limits, region), prep)


def decode_rgb(
    data: bytes, prep: Preprocess, limits: ImageLimits, region: Region | None = None
) -> Image.Image:
    """Image file bytes -> the upright RGB image (or its ``region``), decoded at the reduced
    scale ``prep`` allows (what ``decode`` resizes; fine-tuning augments it first)."""
    image = open_image(data, limits)
    _draft_for(image, prep, region)
    image = _load(image)
    try:
        image = ImageOps.exif_transpose(image) or image
    except (OSError, ValueError, SyntaxError, TypeError, KeyError):
        pass  # a broken EXIF block should not cost us an otherwise good photo
    if region is not None:
        image = image.crop(region.pixels(*image.size))
    return _to_rgb(image)


def describe(data: bytes, limits: ImageLimits) -> dict:
    """Format and size of an image without decoding it (for logs and payloads)."""
    image = open_image(data, limits)
    return {"format": image.format, "width": image.size[0], "height": image.size[1]}
