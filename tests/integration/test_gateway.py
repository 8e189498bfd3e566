"""The local stack's API gateway with slow and oversized clients: a body that stops arriving
gets a 408 after the read timeout, a declared Content-Length over the limit a 413 at once, and
neither holds other clients up. Real sockets on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import time
import urllib.request

import pytest

from visual_search.dev.devstack.gateway import MAX_BODY, Gateway

TIMEOUT_S = 1.0


def answer(event: dict, context) -> dict:
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({"ok": True}),
    }


@pytest.fixture
def gateway():
    gw = Gateway(answer, "127.0.0.1", 0, log=lambda m: None, read_timeout_s=TIMEOUT_S)
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


def raw_request(gateway: Gateway, head: bytes, body: bytes = b"") -> socket.socket:
    host, port = gateway.server.server_address[:2]
    sock = socket.create_connection((host, port), timeout=10)
    sock.sendall(head + body)
    return sock


def status_of(sock: socket.socket) -> tuple[int, bytes]:
    """The response's status and its whole bytes (head and the Content-Length of body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split(b" ", 2)[1]), head + b"\r\n\r\n" + body


def test_a_body_that_stops_arriving_gets_a_408_and_others_are_answered_meanwhile(gateway):
    head = b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\n"
    slow = raw_request(gateway, head, b"\xff\xd8" * 10)  # 20 of 1,000 bytes, then nothing
    started = time.monotonic()
    with urllib.request.urlopen(gateway.url + "/health", timeout=5) as fast:  # not held up
        assert fast.status == 200
    assert time.monotonic() - started < TIMEOUT_S
    status, data = status_of(slow)
    waited = time.monotonic() - started
    assert status == 408 and b"request_timeout" in data and b"did not arrive" in data
    assert TIMEOUT_S * 0.8 <= waited < TIMEOUT_S * 5
    slow.close()


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(gateway):
    head = f"POST /search HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode()
    sock = raw_request(gateway, head)  # no body at all: the answer must not wait for it
    started = time.monotonic()
    status, data = status_of(sock)
    assert status == 413 and b"body_too_large" in data
    assert time.monotonic() - started < TIMEOUT_S / 2
    sock.close()
