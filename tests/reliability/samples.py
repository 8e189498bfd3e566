"""Hostile and edge-case payloads shared by the reliability tests: broken, disguised and
oversized images, and small valid ones of extreme shapes. Every factory is deterministic."""

from __future__ import annotations

import io
import random
import struct
import zlib

from PIL import Image, ImageDraw

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A real decompression bomb: a valid 1-bit PNG of ``width`` x ``height`` zero pixels, ~50 KB
    on disk, 400 MB as 8-bit pixels and 1.2 GB as RGB if anything ever decoded it."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return PNG_SIGNATURE + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int, base: bytes) -> bytes:
    """A small JPEG whose frame header (SOF0) claims other dimensions."""
    at = base.find(b"\xff\xc0")
    assert at > 0, "baseline JPEG expected"
    patched = bytearray(base)
    patched[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(patched)


def gif_claiming(width: int, height: int) -> bytes:
    """A tiny GIF whose logical screen claims ``width`` x ``height``."""
    gif = encode(Image.new("P", (8, 8)), "GIF")
    return gif[:6] + struct.pack("<HH", width, height) + gif[10:]


def corrupt_png(base: bytes) -> bytes:
    """A PNG with a valid header and chunk CRCs whose compressed pixel data is garbage."""
    ihdr_end = 8 + 8 + 13 + 4
    junk = bytes(random.Random(7).randrange(256) for _ in range(600))
    return base[:ihdr_end] + png_chunk(b"IDAT", junk) + png_chunk(b"IEND", b"")


def noise_photo(size: tuple[int, int] = (96, 72), seed: int = 1) -> Image.Image:
    rng = random.Random(seed)
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        box = (
            sorted(rng.randrange(size[0]) for _ in range(2)),
            sorted(rng.randrange(size[1]) for _ in range(2)),
        )
        draw.rectangle(
            (box[0][0], box[1][0], box[0][1], box[1][1]), fill=tuple(rng.randrange(256) for _ in range(3))
        )
    return image


SVG = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" '
    b'width="20000" height="20000"><script>alert(1)</script><rect width="10" height="10"/></svg>'
)
HTML = b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)><p>not a photo</p></body></html>"
TEXT = b"SKU-123, Oat milk, 1.99 EUR\nthis is a text file with a .jpg name\n"


class Samples:
    """Every payload, built once."""

    def __init__(self):
        photo = noise_photo((96, 72))
        self.jpeg = encode(photo, "JPEG", quality=90)
        self.png = encode(photo, "PNG")
        self.bad = {  # name -> (bytes, the ImageError codes it may be refused with, status)
            "empty": (b"", {"empty_image"}, 400),
            "truncated-jpeg": (self.jpeg[: len(self.jpeg) // 2], {"corrupt_image"}, 400),
            "truncated-png": (self.png[: len(self.png) // 2], {"corrupt_image"}, 400),
            "corrupt-jpeg": (
                b"\xff\xd8\xff\xe0" + bytes(random.Random(3).randrange(256) for _ in range(700)),
                {"corrupt_image", "unsupported_image"},
                400,
            ),
            "corrupt-png": (corrupt_png(self.png), {"corrupt_image"}, 400),
            "text-as-jpeg": (TEXT, {"unsupported_image"}, 400),
            "svg": (SVG, {"unsupported_image"}, 400),
            "html": (HTML, {"unsupported_image"}, 400),
            "png-bomb-20000px": (png_bomb(), {"image_too_large"}, 413),
            "jpeg-claiming-60000px": (jpeg_claiming(60_000, 60_000, self.jpeg), {"image_too_large"}, 413),
            "gif-claiming-65535px": (gif_claiming(65_535, 65_535), {"image_too_large"}, 413),
        }
        self.edge = {  # valid images of extreme shapes: they must be searchable / indexed
            "1x1-png": encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"),
            "1x1-jpeg": encode(Image.new("RGB", (1, 1), (30, 200, 30)), "JPEG"),
            "30000x16-png": encode(noise_photo((30_000, 16), seed=5), "PNG"),
            "30000x8-jpeg": encode(noise_photo((30_000, 8), seed=6), "JPEG"),
        }
