"""`kb serve` runs the API under waitress; a client talks to it over loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from kb.config import is_kb_variable
from tests.live import Service, call


def test_serve_answers_over_http(live_server: str) -> None:
    status, added = call(live_server, "/add", {"id": "cat", "text": "The cat sat on the mat"})
    assert (status, added["ids"]) == (201, ["cat"])
    status, result = call(live_server, "/query", {"query": "A feline rested on the rug"})
    assert status == 200
    assert [m["id"] for m in result["matches"]] == ["cat"]
    status, error = call(live_server, "/query", {"query": ""})
    assert status == 422
    assert error["error"]["details"][0]["field"] == "query"


def test_a_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    """Said before the model loads and the store opens (a model that cannot load here: it
    was found only after both)."""
    env = {k: v for k, v in os.environ.items() if not is_kb_variable(k)}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env |= {"KB_CHROMA_PATH": str(tmp_path / "db"), "KB_PORT": str(port)}
        env |= {"KB_MODEL": str(tmp_path / "no-model")}
        done = subprocess.run(
            [sys.executable, "-m", "kb", "serve"], env=env, capture_output=True, text=True
        )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"Error: cannot listen on 127.0.0.1:{port} (KB_HOST, KB_PORT): Address already in use "
        "(another process is listening on it)"
    )
    assert not (tmp_path / "db").exists()


def raw_post(base: str, head: str, body: bytes = b"") -> bytes:
    """Send a POST's head (and body) over a socket; the response as read until closed."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(f"POST /add HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{head}\r\n".encode())
        sock.sendall(body)
        return b"".join(iter(lambda: sock.recv(65536), b""))


def test_waitress_refuses_a_huge_body_from_its_headers(service: Service) -> None:
    """Waitress read bodies up to 1 GiB (to disk) before the app's KB_MAX_REQUEST_BYTES 413.
    Now past twice the limit it answers from the Content-Length without waiting for a byte;
    a body a little over the limit still gets the app's JSON error."""
    service.env["KB_MAX_REQUEST_BYTES"] = "4096"
    base = service.start().base
    huge = raw_post(base, "Content-Type: application/json\r\nContent-Length: 300000000\r\n")
    assert huge.startswith(b"HTTP/1.1 413 ")
    assert b"text/plain" in huge
    status, error = call(base, "/add", {"id": "a", "text": "x" * 5000})
    assert status == 413
    assert error["error"]["code"] == "payload_too_large"
