"""`kb serve` runs the API under waitress; a client talks to it over loopback."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

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
    was found only after both), and alone: the banner saying kb was on the port came first
    (review helper 91)."""
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
    assert done.stderr.splitlines() == [
        f"Error: cannot listen on 127.0.0.1:{port} (KB_HOST, KB_PORT): Address already in use "
        "(another process is listening on it)"
    ]
    assert not (tmp_path / "db").exists()


def test_a_port_in_use_is_a_one_line_error_for_workers_too(
    tmp_path: Path, chroma_server: str
) -> None:
    """Under gunicorn (KB_WORKERS > 1) the busy port took five tries a second apart and ten
    lines of gunicorn's log; kb binds it itself now, as for waitress, and says what it
    serves only once bound."""
    env = {k: v for k, v in os.environ.items() if not is_kb_variable(k)}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env |= {"KB_CHROMA_URL": chroma_server, "KB_PORT": str(port), "KB_WORKERS": "2"}
        done = subprocess.run(
            [sys.executable, "-m", "kb", "serve"], env=env, capture_output=True, text=True
        )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"Error: cannot listen on 127.0.0.1:{port} (KB_HOST, KB_PORT): Address already in use "
        "(another process is listening on it)"
    ]


def raw_post(base: str, head: str, body: bytes = b"") -> bytes:
    """Send a POST's head and body over a socket, in one send; the response as read until
    closed. Sent apart, the body could reach waitress after it had refused the head and
    closed: the kernel then resets the connection, and the client lost the answer it had
    not read yet (ConnectionResetError, 10 in 300 tries here, once in a CI run)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        start = f"POST /add HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{head}\r\n"
        sock.sendall(start.encode() + body)
        return b"".join(iter(lambda: sock.recv(65536), b""))


def test_waitress_refuses_a_huge_body_from_its_headers(service: Service) -> None:
    """Waitress read bodies up to 1 GiB (to disk) before the app's KB_MAX_REQUEST_BYTES 413.
    Now past twice the limit it answers from the Content-Length without waiting for a byte;
    a body a little over the limit still gets the app's JSON error."""
    service.env["KB_MAX_REQUEST_BYTES"] = "4096"
    base = service.start().base
    huge = raw_post(base, "Content-Type: application/json\r\nContent-Length: 300000000\r\n")
    assert huge.startswith(b"HTTP/1.1 413 ")
    head, _, body = huge.partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in head
    assert b"x-request-id: " in head.lower()  # as every answer (review helper 62)
    status, error = call(base, "/add", {"id": "a", "text": "x" * 5000})
    assert status == 413
    # waitress's own says what the app's says: the limit set, not twice it, and the field
    assert json.loads(body) == error
    assert error["error"]["code"] == "payload_too_large"
    assert "4096 bytes" in error["error"]["message"]
    assert [detail["field"] for detail in error["error"]["details"]] == ["body"]


def test_a_client_silent_mid_request_is_let_go_after_the_idle_timeout(service: Service) -> None:
    """KB_IDLE_TIMEOUT is waitress's channel_timeout (it was 120 s, fixed; waitress looked
    every 30 s): a connection that sent half a request and went quiet is closed after it."""
    service.env["KB_IDLE_TIMEOUT"] = "1"
    host, port = service.start().base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
        started = time.monotonic()
        assert sock.recv(65536) == b""  # closed, unanswered (a 30 s timeout raises)
    assert time.monotonic() - started < 10


def test_a_request_without_a_host_header_is_answered(live_server: str) -> None:
    """HTTP/1.0 without a Host header (HAProxy's default health check) was refused as
    addressed to 'waitress.invalid' (review helper 62): it is addressed to the address it
    connected to, and browsers always send one."""
    host, port = live_server.removeprefix("http://").split(":")
    for head, status in [("", b"200"), ("Host: evil.example\r\n", b"400")]:
        with socket.create_connection((host, int(port)), timeout=60) as sock:
            sock.sendall(f"GET /health HTTP/1.0\r\n{head}\r\n".encode())
            answer = b"".join(iter(lambda: sock.recv(65536), b""))
        assert answer.split(b" ", 2)[1] == status, answer[:200]


@pytest.mark.parametrize(
    ("head", "code", "message"),
    [
        ("Content-Length: -1\r\n", "bad_request", "Content-Length is invalid"),
        ("Transfer-Encoding: chunked\r\n", "bad_request", "chunk"),
    ],
)
def test_requests_waitress_refuses_itself_get_kbs_error_shape(
    live_server: str, head: str, code: str, message: str
) -> None:
    """They were text/plain ("Bad Request ... (generated by kb)")."""
    answer = raw_post(live_server, f"Content-Type: application/json\r\n{head}", b"zz\r\n")
    status, _, rest = answer.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 400 ")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in headers
    assert b"x-request-id: " in headers.lower()
    error = json.loads(body)["error"]
    assert (error["code"], error["details"]) == (code, [])
    assert message in error["message"]


def serve(tmp_path: Path, *args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not is_kb_variable(k)}
    env |= {"KB_CHROMA_PATH": str(tmp_path / "db"), "KB_MODEL": str(tmp_path / "no-model")}
    return subprocess.run(
        [sys.executable, "-m", "kb", "serve", *args],
        env=env | variables,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "variables", "said"),
    [
        (["--host", "999.1.1.1"], {}, "cannot listen on '999.1.1.1' (--host, KB_HOST): not an"),
        (["--host", "nosuch.invalid"], {}, "cannot listen on 'nosuch.invalid' (--host, KB_HOST)"),
        ([], {"KB_HOST": ""}, "no address to listen on: KB_HOST is empty (--host, KB_HOST)"),
    ],
    ids=["no-address", "no-name", "empty"],
)
def test_a_host_that_is_not_this_machines_is_a_one_line_error(
    tmp_path: Path, args: list[str], variables: dict[str, str], said: str
) -> None:
    """waitress's ValueError ("Invalid host/port specified") was a traceback."""
    done = serve(tmp_path, *args, **variables)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith(f"Error: {said}")
    assert not (tmp_path / "db").exists()


def test_workers_with_a_chroma_server_that_does_not_answer_is_one_line(tmp_path: Path) -> None:
    """Checked before gunicorn forks: each worker failed to boot with its own traceback (247
    lines), and gunicorn exited 3."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: a connection is refused
        done = serve(tmp_path, "--workers", "2", KB_CHROMA_URL=f"http://127.0.0.1:{port}")
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        f"Error: cannot reach the Chroma server at http://127.0.0.1:{port} (KB_CHROMA_URL): "
        "[Errno 111] Connection refused"
    ]


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["serve", "--port", "99999"], "--port"),
        (["serve", "--threads", "-1"], "--threads"),
        (["serve", "--workers", "0"], "--workers"),
        (["serve", "--host", ""], "--host"),
        (["cluster", "--chroma-port", "99999"], "--chroma-port"),
        (["cluster", "--chroma-port", "0"], "--chroma-port"),
    ],
)
def test_serving_options_out_of_range_are_usage_errors_naming_the_option(
    tmp_path: Path, args: list[str], option: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--port 99999` was refused as "KB_PORT: Input should be ..." (exit 1), and
    `cluster --chroma-port 99999` ended in an OverflowError traceback."""
    from click.testing import CliRunner

    from kb.cli import main

    monkeypatch.chdir(tmp_path)  # cluster's default --path is relative
    done = CliRunner().invoke(main, args, env={"KB_CHROMA_PATH": str(tmp_path / "db")})
    assert done.exit_code == 2, done.output
    assert f"Invalid value for '{option}'" in done.output
    assert not (tmp_path / "db").exists()


def test_sigterms_while_it_closes_do_not_cut_the_close_short(service: Service) -> None:
    """`make serve` stopped by SIGTERM: make passes the SIGTERM it gets on to kb serve, which
    the same signal to the process group had reached already. The second, arriving while the
    app closed, made kb serve say "Aborted!" (then "kb serve interrupted") and exit non-zero."""
    base = service.start().base
    assert call(base, "/add", {"id": "a", "text": "a note to keep"})[0] == 201
    proc = service.proc
    assert proc is not None
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:  # every one after the first
        proc.send_signal(signal.SIGTERM)  # lands while the app closes
        time.sleep(0.02)
    assert proc.wait(timeout=30) == 0, service.log.read_text()[-2000:]
    assert "interrupted" not in service.log.read_text()
    assert "Aborted" not in service.log.read_text()


def test_sigterm_lets_the_requests_under_way_finish_and_takes_no_new_ones(
    service: Service,
) -> None:
    """waitress's run() left its loop at the signal and gave its threads 5 s; kb then closed
    the app under a request still embedding: a 3,000-document /add sent a second before the
    SIGTERM was answered 500, and answers written after the loop stopped were never sent.
    Closing waitress's listener closed its trigger too, which cut a streamed backup short
    (review helper 86)."""
    base = service.start().base
    assert service.proc is not None
    first = [{"id": f"s{i}", "text": f"Stored note {i} about lakes."} for i in range(3000)]
    assert call(base, "/add", {"documents": first, "on_duplicate": "ignore"})[0] == 201
    documents = [
        {"id": f"d{i}", "text": f"Note {i} on rivers, mountains and the weather in spring."}
        for i in range(3000)
    ]
    answers: list[tuple[int, Any]] = []
    backups: list[bytes] = []

    def back_up() -> None:
        with urllib.request.urlopen(f"{base}/backup", timeout=120) as response:
            backups.append(response.read())

    adding = threading.Thread(
        target=lambda: answers.append(call(base, "/add", {"documents": documents}))
    )
    backing_up = threading.Thread(target=back_up)
    adding.start()
    time.sleep(1.0)  # the add is being embedded
    backing_up.start()
    time.sleep(0.3)  # the backup is being streamed
    service.proc.terminate()
    host, port = base.removeprefix("http://").split(":")
    refused = False
    while adding.is_alive() and not refused:  # no new connection is taken meanwhile
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
            time.sleep(0.05)
        except ConnectionRefusedError:
            refused = True
    adding.join(120)
    backing_up.join(120)
    assert service.proc.wait(timeout=60) == 0
    logged = service.log.read_text()
    assert "stopping: 2 request(s) under way" in logged  # both were under way at the SIGTERM
    assert "Bad file descriptor" not in logged
    assert refused
    assert answers[0][0] == 201, answers[0][1]
    lines = gzip.decompress(backups[0]).decode().splitlines()  # whole: its gzip ends
    assert len(lines) == 1 + json.loads(lines[0])["records"]
    assert call(service.start().base, "/health")[1]["documents"] == 6000
