"""A local Chroma server process (`chroma run`, shipped with chromadb), started and awaited."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from kb.errors import StoreUnavailable

CHROMA = Path(sys.executable).with_name("chroma")


def start(data: Path, port: int, log: Path, timeout: float = 60) -> subprocess.Popen:
    """`chroma run` on 127.0.0.1:port over `data`, once it answers its heartbeat."""
    data.mkdir(parents=True, exist_ok=True)
    command = [str(CHROMA), "run", "--path", str(data), "--host", "127.0.0.1"]
    with log.open("ab") as sink:
        server = subprocess.Popen(
            [*command, "--port", str(port)], stdout=sink, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise StoreUnavailable(f"chroma run exited ({server.returncode}); see {log}")
        try:
            with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=2):
                return server
        except OSError:
            time.sleep(0.2)
    stop(server)
    raise StoreUnavailable(f"the Chroma server on {url} did not answer in {timeout:.0f} s")


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
