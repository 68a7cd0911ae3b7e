"""`kb serve` runs the API under waitress; a client talks to it over loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from kb.config import is_kb_variable
from tests.live import call


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
    env = {k: v for k, v in os.environ.items() if not is_kb_variable(k)}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env |= {"KB_CHROMA_PATH": str(tmp_path / "db"), "KB_PORT": str(port)}
        done = subprocess.run(
            [sys.executable, "-m", "kb", "serve"], env=env, capture_output=True, text=True
        )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"Error: cannot listen on 127.0.0.1:{port} (KB_HOST, KB_PORT): Address already in use "
        "(another process is listening on it)"
    )
