"""`kb serve`'s drain on SIGTERM, seen by a client speaking HTTP/1.1 over a raw socket:
which answers it gets on a kept-alive connection, and that the server then closes it."""

from __future__ import annotations

import json
import re
import socket
import time
from dataclasses import dataclass

import pytest

from tests.live import Service, call


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


def split_answer(data: bytes, to_head: bool = False) -> tuple[Answer, bytes] | None:
    """The first HTTP answer in `data` and the bytes after it; None if it is not all there.
    `to_head`: it answers a HEAD (no body, whatever its Content-Length says)."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    if status.split()[1].startswith("1") or to_head:  # 100 Continue, or a HEAD's: no body
        return Answer(int(status.split()[1]), headers, b""), rest
    if headers.get("transfer-encoding") != "chunked":
        size = int(headers["content-length"])
        if len(rest) < size:
            return None
        return Answer(int(status.split()[1]), headers, rest[:size]), rest[size:]
    body = b""
    while True:
        line, sep, rest = rest.partition(b"\r\n")
        if not sep or len(rest) < int(line, 16) + 2:
            return None
        size = int(line, 16)
        body, rest = body + rest[:size], rest[size + 2 :]
        if not size:
            return Answer(int(status.split()[1]), headers, body), rest


def read_answer(sock: socket.socket, data: bytes = b"") -> tuple[Answer, bytes]:
    """Read until one whole answer is in; it and the bytes read past it."""
    while (split := split_answer(data)) is None:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole answer: {data[:300]!r}"
        data += chunk
    return split


def read_to_the_end(sock: socket.socket, data: bytes = b"") -> list[Answer]:
    """Every answer until the server closes the connection; a reset ends it too (what the
    client lost then is missing from the list)."""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    answers = []
    while data and (split := split_answer(data)) is not None:
        answer, data = split
        answers.append(answer)
    assert not data, f"a cut answer: {data[:300]!r}"
    return answers


def connect(service: Service, receive_buffer: int | None = None) -> socket.socket:
    host, port = service.base.removeprefix("http://").split(":")
    sock = socket.socket()
    if receive_buffer:  # set before connecting: the window the server may fill
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(120)
    sock.connect((host, int(port)))
    return sock


def get(path: str) -> bytes:
    """A GET that keeps the connection alive (HTTP/1.1's default)."""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def begin_add(sock: socket.socket, text: str) -> bytes:
    """Send a POST /add's head, asking to continue: the body to send later. Once the server's
    100 Continue is read, the request is being received (under way)."""
    body = json.dumps({"id": "late", "text": text}).encode()
    head = "POST /add HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    sock.sendall(f"{head}Expect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n".encode())
    assert read_answer(sock) == (Answer(100, {}, b""), b"")
    return body


def terminate_and_wait(service: Service, under_way: int) -> None:
    """SIGTERM, then wait until the drain has begun with at least `under_way` connections
    busy (the test's; the one that asked /health when the service started may not have been
    let go yet)."""
    assert service.proc is not None
    service.proc.terminate()
    deadline = time.monotonic() + 60
    while not (said := re.search(r"stopping: (\d+) request", service.log.read_text())):
        assert service.proc.poll() is None, service.log.read_text()[-2000:]
        assert time.monotonic() < deadline, service.log.read_text()[-2000:]
        time.sleep(0.05)
    assert int(said[1]) >= under_way, service.log.read_text()[-2000:]


def start_with_heavy_documents(service: Service) -> None:
    """Start the service holding 100 documents of 60 kB of metadata each: a listing of them
    is 6 MB, which a client reading slowly keeps under way."""
    service.start()
    blob = "lakes and rivers " * 3500
    documents = [
        {"id": f"n{i}", "text": f"Note {i}.", "metadata": {"blob": blob}} for i in range(100)
    ]
    assert call(service.base, "/add", {"documents": documents})[0] == 201


def test_an_answer_finished_during_the_drain_says_connection_close(service: Service) -> None:
    """It carried no `Connection: close`: an HTTP/1.1 client kept the connection and sent its
    next request into a server about to close it (review helper 86). The request is under
    way at the SIGTERM as one whose body is still arriving."""
    service.start()
    with connect(service) as sock:
        body = begin_add(sock, "A note whose body arrives after the SIGTERM.")
        terminate_and_wait(service, under_way=1)
        sock.sendall(body)
        answers = read_to_the_end(sock)
    assert [a.status for a in answers] == [201], answers
    assert answers[0].headers.get("connection") == "close"
    assert service.proc is not None
    assert service.proc.wait(timeout=60) == 0


def test_a_stray_crlf_after_a_body_does_not_hold_the_drain(service: Service) -> None:
    """A client may send an empty line after a request's body (RFC 9112 2.2: a server SHOULD
    ignore it). It counted as a request begun behind the answer: the answer did not say
    `Connection: close`, and the drain waited its whole GRACE_S for that request (review
    helper 97)."""
    service.start()
    with connect(service) as sock:
        body = begin_add(sock, "A note whose body arrives after the SIGTERM.")
        terminate_and_wait(service, under_way=1)
        sock.sendall(body + b"\r\n")
        answers = read_to_the_end(sock)
    assert [a.status for a in answers] == [201], answers
    assert answers[0].headers.get("connection") == "close"
    assert service.proc is not None
    assert service.proc.wait(timeout=60) == 0
    assert "under way after" not in service.log.read_text()


def shutting_down(answer: Answer) -> None:
    """A request the drain did not take: kb's error shape, and the connection closes."""
    assert answer.status == 503, answer
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers.get("connection") == "close"
    assert int(answer.headers["retry-after"]) > 0
    assert json.loads(answer.body)["error"]["code"] == "shutting_down"


@pytest.mark.parametrize("sent", ["pipelined", "after_its_answer"])
def test_a_request_behind_an_answer_under_way_gets_a_503(service: Service, sent: str) -> None:
    """A request pipelined behind an answer still being sent at the SIGTERM (6 MB of
    documents the client reads slowly), or sent on that kept-alive connection once the client
    has read it, was never answered: the connection closed under it (review helper 86). A
    request whose body is still arriving keeps the drain going meanwhile; it is answered."""
    start_with_heavy_documents(service)
    # a small window: the answer waits in the server's buffers until the client reads it
    with connect(service) as holding, connect(service, receive_buffer=4096) as reading:
        late = begin_add(holding, "A note whose body arrives after the SIGTERM.")
        reading.sendall(get("/documents?limit=100"))
        data = reading.recv(1)  # the answer has begun
        if sent == "pipelined":
            reading.sendall(get("/health"))
        terminate_and_wait(service, under_way=2)
        listed, data = read_answer(reading, data)
        if sent == "after_its_answer":
            reading.sendall(get("/health"))
        answers = [listed, *read_to_the_end(reading, data)]
        holding.sendall(late)
        held = read_to_the_end(holding)
    assert [a.status for a in answers] == [200, 503], answers
    assert len(json.loads(listed.body)["documents"]) == 100
    shutting_down(answers[1])
    assert [a.status for a in held] == [201]
    assert held[0].headers.get("connection") == "close"
    assert service.proc is not None
    assert service.proc.wait(timeout=60) == 0
    assert "Traceback" not in service.log.read_text()


def test_a_head_behind_an_answer_under_way_gets_a_503_without_a_body(service: Service) -> None:
    """The drain's 503 to a HEAD carried its JSON body, which the client then read as the
    start of the next pipelined answer (review helper 97; RFC 9110 9.3.2)."""
    start_with_heavy_documents(service)
    with connect(service) as holding, connect(service, receive_buffer=4096) as reading:
        late = begin_add(holding, "A note whose body arrives after the SIGTERM.")
        reading.sendall(get("/documents?limit=100"))
        data = reading.recv(1)
        reading.sendall(b"HEAD /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" + get("/health"))
        terminate_and_wait(service, under_way=2)
        listed, data = read_answer(reading, data)
        try:
            while chunk := reading.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
        holding.sendall(late)
        read_to_the_end(holding)
    assert listed.status == 200
    split = split_answer(data, to_head=True)
    assert split is not None, data
    head, rest = split
    assert head.status == 503
    assert int(head.headers["content-length"]) > 0  # what a GET's body would take
    assert rest.startswith(b"HTTP/1.1 503"), rest[:200]  # no body before the next answer
    following = split_answer(rest)
    assert following is not None
    shutting_down(following[0])
    assert not following[1]
