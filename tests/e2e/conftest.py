"""The local stack as a user runs it: `visual-search dev` in a subprocess on free ports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningStack:
    def __init__(
        self,
        data_dir: Path,
        demo: bool = True,
        api_port: int = 0,
        s3_port: int = 0,
        env: dict[str, str] | None = None,
    ):
        self.api_port, self.s3_port = api_port or free_port(), s3_port or free_port()
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.s3_url = f"http://127.0.0.1:{self.s3_port}"
        self.data_dir = data_dir
        args = [
            sys.executable,
            "-m",
            "visual_search",
            "dev",
            "--api-port",
            str(self.api_port),
            "--s3-port",
            str(self.s3_port),
            "--data-dir",
            str(data_dir),
        ]
        if not demo:
            args.append("--no-demo")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("QDRANT_", "AWS_ENDPOINT"))} | (
            env or {}
        )
        self.log_path = data_dir.parent / f"stack-{self.api_port}-{time.monotonic_ns()}.log"
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(args, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log_path.read_text()

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.api + path, timeout=30) as response:
            return json.loads(response.read())

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the stack exited early:\n{self.output()}")
            if "Ctrl-C stops" in self.output():
                return
            time.sleep(0.2)
        raise AssertionError(f"the stack did not start in {timeout} s:\n{self.output()}")

    def kill(self) -> None:
        """kill -9: no clean-up of any kind."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self.log.close()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    running = RunningStack(tmp_path_factory.mktemp("stack") / "data")
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()
