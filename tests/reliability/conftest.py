"""Fixtures and checks shared by the reliability tests.

``stack`` is the e2e suite's session fixture (``visual-search dev`` in a subprocess on free
127.0.0.1 ports), re-exported so the load test runs against the same local stack a user runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import resource
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import stack  # noqa: F401  (re-exported session fixture)
from tests.reliability.samples import Samples

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
ERROR_STATUSES = {400, 404, 405, 413, 415, 422}
# Text that would mean an exception leaked into a response.
LEAK_MARKERS = ("Traceback", 'File "', "site-packages", '.py", line', str(REPO))


@pytest.fixture(scope="session")
def samples() -> Samples:
    return Samples()


def assert_error(
    status: int,
    raw_body: str,
    headers: dict,
    expected_status: int | set[int],
    codes: str | set[str] | None = None,
) -> dict:
    """The documented status and the one error shape ``{"error": {"code", "message"[,
    "details"]}}``, as JSON, with no traceback or server path anywhere in the body."""
    expected = {expected_status} if isinstance(expected_status, int) else expected_status
    assert status in expected, f"status {status}, expected {sorted(expected)}: {raw_body[:500]}"
    for marker in LEAK_MARKERS:
        assert marker not in raw_body, f"{marker!r} leaked into the response: {raw_body[:500]}"
    content_type = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
    assert content_type.startswith("application/json"), content_type
    body = json.loads(raw_body)
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"code", "message"} <= set(error) <= {"code", "message", "details"}, error
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    if "details" in error:
        assert isinstance(error["details"], list) and all(isinstance(d, dict) for d in error["details"])
    if codes is not None:
        allowed = {codes} if isinstance(codes, str) else codes
        assert error["code"] in allowed, f"code {error['code']!r}, expected one of {sorted(allowed)}"
    return error


def max_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_now_mb() -> float:
    """Resident memory of this process right now (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def write_artifact(name: str, figures: dict[str, Any]) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    path.write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n")
    return path


class _Discard(io.TextIOBase):
    def write(self, text: str) -> int:
        return len(text)


def report(text: str) -> None:
    """Print a figure line past the muted stdout (pytest still captures it without -s)."""
    print(text, file=sys.__stdout__, flush=True)


@pytest.fixture(autouse=True)
def quiet_functions():
    """Mute the functions' JSON log lines and metric blobs on stdout (thousands of lines in the
    fuzz and soak runs). Log records still reach pytest's caplog: only the stdout handler of the
    service logger is pointed elsewhere. Figures are printed with ``report``."""
    from visual_search.observability import logger

    handlers = [h for h in logger._logger.handlers if isinstance(h, logging.StreamHandler)]
    previous = [h.setStream(_Discard()) for h in handlers]
    try:
        with contextlib.redirect_stdout(_Discard()):  # Metrics print their EMF blobs
            yield
    finally:
        for handler, stream in zip(handlers, previous):
            if stream is not None:
                handler.setStream(stream)
