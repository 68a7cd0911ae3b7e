"""Start `kb serve` as a real process on a free loopback port, for tests that need HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(base: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[str]:
    """The base URL of a `kb serve` process on its own store; stopped after the test."""
    port = free_port()
    env = {
        **os.environ,
        "KB_CHROMA_PATH": str(tmp_path / "db"),
        "KB_PORT": str(port),
        "KB_HOST": "127.0.0.1",
        "KB_THREADS": "4",
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kb", "serve"], env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"kb serve exited: {log.read_text()[-2000:]}")
        try:
            if call(base, "/health")[0] == 200:
                break
        except OSError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("kb serve did not answer within 120 s")
    yield base
    proc.terminate()
    proc.wait(timeout=30)
