"""kb's gthread worker: its sockets limit a client's silence, not a response's whole send."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from kb.cli.gunicorn_worker import _IdleLimitedSocket


def test_a_slow_steady_reader_gets_the_whole_response() -> None:
    """A socket's timeout bounds all of sendall, and gunicorn writes a body with one: a 10 MB
    listing read steadily at 80 KB/s was cut off at KB_IDLE_TIMEOUT (review helper 76)."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    limited = _IdleLimitedSocket.adopt(ours, 1)
    body = bytes(range(256)) * 4096  # 1 MiB: about 3 s at the reader's pace
    got = bytearray()

    def read_slowly() -> None:
        while chunk := theirs.recv(65536):
            got.extend(chunk)
            time.sleep(0.05)

    reader = threading.Thread(target=read_slowly)
    reader.start()
    started = time.monotonic()
    try:
        limited.sendall(body)
    finally:
        limited.close()
        reader.join(timeout=60)
        theirs.close()
    assert time.monotonic() - started > 1  # longer than the limit, never silent that long
    assert bytes(got) == body


def test_a_client_silent_past_the_limit_is_let_go() -> None:
    ours, theirs = socket.socketpair()
    limited = _IdleLimitedSocket.adopt(ours, 1)
    try:
        with pytest.raises(TimeoutError):
            limited.recv(10)  # nothing sent
        limited.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        with pytest.raises(TimeoutError):
            limited.sendall(b"x" * 10_000_000)  # nothing read
    finally:
        limited.close()
        theirs.close()
