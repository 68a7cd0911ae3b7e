"""Start `kb serve` as a real process on a free loopback port, for tests that need HTTP."""

from __future__ import annotations

import json
import os
import signal
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

from kb.config import is_kb_variable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(
    base: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    method: str | None = None,
    key: str | None = None,
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        base + path, data=data, method=method or ("POST" if data else "GET")
    )
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class Service:
    """`kb serve` on its own store directory; can be stopped, killed and started again."""

    def __init__(self, store: Path, log: Path, **env: str) -> None:
        self.store, self.log = store, log
        # The shell's KB_* must not leak in (a module-scoped service starts before the
        # per-test environment clean-up runs).
        inherited = {k: v for k, v in os.environ.items() if not is_kb_variable(k)}
        self.env = {
            **inherited,
            "KB_CHROMA_PATH": str(store),
            "KB_HOST": "127.0.0.1",
            "KB_THREADS": "8",
            **env,
        }
        self.proc: subprocess.Popen | None = None
        self.base = ""

    def start(self, timeout: float = 120) -> Service:
        port = free_port()
        self.env["KB_PORT"] = str(port)
        self.base = f"http://127.0.0.1:{port}"
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kb", "serve"],
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"kb serve exited: {self.log.read_text()[-3000:]}")
            try:
                if call(self.base, "/health")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.kill()
        pytest.fail(f"kb serve did not answer within {timeout:.0f} s")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or an OOM kill."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    """A `kb serve` (not started yet) on a store under tmp_path; stopped after the test."""
    running = Service(tmp_path / "db", tmp_path / "serve.log")
    yield running
    running.stop()


@pytest.fixture
def live_server(service: Service) -> str:
    """The base URL of a running `kb serve` on its own store."""
    return service.start().base
