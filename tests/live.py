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

PORT_TRIES = 3  # ports tried before a start fails (each taken by another process meanwhile)


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` different free loopback ports (each held until all are chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


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
        self._logged = 0  # the log's size when the last start began

    def start(self, timeout: float = 120) -> Service:
        # free_port() lets its port go before kb serve binds it: another process on the
        # machine may take it meanwhile, and kb serve then exits saying it cannot listen.
        # That is the port's fault, not kb's: start again on another one.
        for _ in range(PORT_TRIES):
            if self._started(free_port(), timeout):
                return self
        pytest.fail(f"kb serve found its port taken {PORT_TRIES} times: {self._tail()}")

    def _started(self, port: int, timeout: float) -> bool:
        """Whether kb serve answers on `port`; False if it exited because the port was taken
        (any other exit, or no answer within `timeout`, fails the test)."""
        self.env["KB_PORT"] = str(port)
        self.base = f"http://127.0.0.1:{port}"
        self._logged = self.log.stat().st_size if self.log.exists() else 0
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
                if f"cannot listen on 127.0.0.1:{port} " in self._tail():
                    return False
                pytest.fail(f"kb serve exited: {self._tail()}")
            try:
                status, health = call(self.base, "/health")
            except (OSError, ValueError):  # not listening yet (or not kb, answering no JSON)
                status, health = 0, None
            if status == 200 and self._answered_by_this_store(health):
                return True
            time.sleep(0.2)
        self.kill()
        pytest.fail(f"kb serve did not answer within {timeout:.0f} s")

    def _answered_by_this_store(self, health: Any) -> bool:
        """Whether a /health answer is this service's: until kb serve finds the port taken
        and exits, whatever took it (another kb serve, say) may be the one answering."""
        if "KB_CHROMA_URL" in self.env or "KB_API_KEYS" in self.env:
            return True  # no folder to tell it by, or not shown to a caller without a key
        store = health.get("store") if isinstance(health, dict) else None
        where = str(Path(self.env["KB_CHROMA_PATH"]))
        return isinstance(store, dict) and store.get("location") == where

    def _tail(self) -> str:
        """The end of what the last start wrote to the log."""
        return self.log.read_bytes()[self._logged :].decode(errors="replace")[-3000:]

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
