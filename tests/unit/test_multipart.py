"""The multipart/form-data reader of POST /search on its own (python-multipart underneath): what
a browser or curl sends comes out part by part, byte for byte; every malformed body is a
RequestError (400) with a message saying what is wrong, never another exception (a 500)."""

from __future__ import annotations

import base64

import pytest

from visual_search.api.requests import form_parts, multipart_search
from visual_search.errors import RequestError

BOUNDARY = "----WebKitFormBoundary7MA4YWxkTrZu0gW"
MEDIA = f"multipart/form-data; boundary={BOUNDARY}"
# Binary data with what a naive parser trips on: CRLFs, dashes, a boundary prefix without its end.
AWKWARD = b"\xff\xd8\r\n--\r\n--" + BOUNDARY[:-3].encode() + b"\r\n\x00\xff\xd9"


def part(headers: str, data: bytes, boundary: str = BOUNDARY) -> bytes:
    return f"--{boundary}\r\n{headers}\r\n\r\n".encode() + data + b"\r\n"


def closed(*parts: bytes, boundary: str = BOUNDARY) -> bytes:
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def test_a_browser_form_comes_out_part_by_part_byte_for_byte():
    body = closed(
        part('Content-Disposition: form-data; name="top_k"', b"5"),
        part(
            'Content-Disposition: form-data; name="image"; filename="café.jpg"\r\nContent-Type: image/jpeg',
            AWKWARD,
        ),
        part('Content-Disposition: form-data; name="a;b \\"c\\""', b""),
    )
    media = f'multipart/form-data; charset=utf-8; boundary="{BOUNDARY}"'
    parts = form_parts(media, body)
    assert [(p.name, p.filename) for p in parts] == [
        ("top_k", None),
        ("image", "café.jpg"),
        ('a;b "c"', None),
    ]
    assert [p.payload() for p in parts] == [b"5", AWKWARD, b""]


def test_transfer_encodings_are_decoded():
    body = closed(
        part(
            'Content-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
            "Content-Transfer-Encoding: base64",
            base64.encodebytes(AWKWARD),
        ),
        part(
            'Content-Disposition: form-data; name="category"\r\nContent-Transfer-Encoding: quoted-printable',
            b"Cr=C3=A8me",
        ),
    )
    image, category = form_parts(MEDIA, body)
    assert image.payload() == AWKWARD
    assert category.payload().decode() == "Crème"
    bad = closed(
        part('Content-Disposition: form-data; name="image"\r\nContent-Transfer-Encoding: base64', b"%%%")
    )
    with pytest.raises(RequestError, match="not valid base64"):
        form_parts(MEDIA, bad)[0].payload()


GOOD = closed(part('Content-Disposition: form-data; name="image"; filename="q.jpg"', AWKWARD))


@pytest.mark.parametrize(
    ("media", "body", "says"),
    [
        ("multipart/form-data", GOOD, "no boundary"),
        ("multipart/form-data; boundary=", GOOD, "no boundary"),
        ('multipart/form-data; boundary=""', GOOD, "no boundary"),
        ("multipart/form-data; boundary=other", GOOD, "cannot be parsed"),
        ("multipart/form-data; boundary=Ā☕", GOOD, "cannot be parsed"),  # not latin-1
        (
            f"multipart/form-data; boundary={'x' * 300}",
            closed(part("", b"", "x" * 300), boundary="x" * 300),
            "exceeds",
        ),
        (MEDIA, GOOD[: -len(f"--{BOUNDARY}--\r\n")], "ends before its closing boundary"),
        (MEDIA, GOOD[:60], "ends before its closing boundary"),
        (MEDIA, b"", "ends before its closing boundary"),
        (MEDIA, b"preamble\r\n" + GOOD, "cannot be parsed"),
        (MEDIA, closed(part("Content-Disposition form-data", b"x")), "cannot be parsed"),
        (MEDIA, closed(part("\r\n".join(f"X-H{i}: v" for i in range(9)), b"x")), "header count"),
        (MEDIA, closed(part("X-Long: " + "v" * 5000, b"x")), "header size"),
    ],
    ids=[
        "no-boundary",
        "empty-boundary",
        "quoted-empty-boundary",
        "wrong-boundary",
        "unicode-boundary",
        "boundary-300-bytes",
        "no-closing-boundary",
        "cut-in-a-header",
        "empty-body",
        "preamble",
        "header-without-colon",
        "nine-headers",
        "5k-header",
    ],
)
def test_malformed_bodies_are_request_errors(media, body, says):
    with pytest.raises(RequestError, match=says) as caught:
        form_parts(media, body)
    assert caught.value.code == "bad_request"


def test_the_search_form_one_image_and_its_options():
    body = closed(
        part('Content-Disposition: form-data; name="top_k"', b"3"),
        part('Content-Disposition: form-data; name="category"', b"Milk"),
        part('Content-Disposition: form-data; name="file"', AWKWARD),  # the name alone makes it the image
    )
    search = multipart_search(MEDIA, body, {"brand": ["Arla"]})
    assert search.image == AWKWARD
    assert search.options.top_k == 3
    assert search.options.filters.category == "Milk" and search.options.filters.brand == "Arla"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (closed(part('Content-Disposition: form-data; name="top_k"', b"3")), "no_image"),
        (closed(), "no_image"),
        (
            closed(
                part('Content-Disposition: form-data; name="image"; filename="a.jpg"', b"a"),
                part('Content-Disposition: form-data; name="other"; filename="b.jpg"', b"b"),
            ),
            "too_many_images",
        ),
    ],
    ids=["no-file", "no-parts", "two-files"],
)
def test_a_form_needs_exactly_one_image(body, code):
    with pytest.raises(RequestError) as caught:
        multipart_search(MEDIA, body, {})
    assert caught.value.code == code
