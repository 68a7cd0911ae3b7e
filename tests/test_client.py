"""kb.client.KBClient against a real `kb serve` over loopback."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from kb.client import KBClient, KBClientError
from kb.schemas import DocumentIn

IDS = ["a", "/a", "a//b", "a/b", "a/", "//x", "a b?c#d%2F"]


def test_ids_with_slashes_and_reserved_characters_round_trip(live_server: str) -> None:
    """get() quoted ids leaving "/" as is, and the service merged "//": get("/a") answered
    the document "a"."""
    client = KBClient(live_server)
    client.add([DocumentIn(id=doc_id, text=f"The note called {doc_id}") for doc_id in IDS])
    for doc_id in IDS:
        got = client.get(doc_id)
        assert (got.id, got.text) == (doc_id, f"The note called {doc_id}")
    client.delete(["/a"])
    assert client.get("a").id == "a"
    with pytest.raises(KBClientError) as missing:
        client.get("/a")
    assert missing.value.status == 404


def test_a_service_that_stalls_after_its_headers_is_unreachable_not_a_traceback() -> None:
    """The body was read outside the client's error mapping: a read timeout after the
    headers escaped as a bare TimeoutError (`kb load --url` asking GET /info crashed)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def stall() -> None:
            conn, _ = server.accept()
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
            conn.sendall(b"Content-Length: 100\r\n\r\n{")
            time.sleep(2)
            conn.close()

        thread = threading.Thread(target=stall)
        thread.start()
        with pytest.raises(KBClientError) as raised:
            KBClient(f"http://127.0.0.1:{port}", timeout=0.5).info()
        thread.join()
    assert (raised.value.status, raised.value.code) == (0, "unreachable")


def hang_up_server(server: socket.socket, stop: threading.Event) -> None:
    """Reads each request and closes the connection without an answer (a service killed
    while it held the request)."""
    server.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        with conn:
            conn.recv(1 << 20)


def test_whether_an_unanswered_request_may_have_landed() -> None:
    """A request sent and left unanswered may have been carried out; a refused connection
    took nothing (kb load --url says which)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        stop = threading.Event()
        thread = threading.Thread(target=hang_up_server, args=(server, stop))
        thread.start()
        try:
            with pytest.raises(KBClientError) as unanswered:
                KBClient(f"http://127.0.0.1:{port}", timeout=5).stats()
        finally:
            stop.set()
            thread.join()
    with pytest.raises(KBClientError) as refused:
        KBClient(f"http://127.0.0.1:{port}", timeout=5).stats()  # closed: nothing listens
    assert (unanswered.value.code, unanswered.value.may_have_landed) == ("unreachable", True)
    assert (refused.value.code, refused.value.may_have_landed) == ("unreachable", False)
