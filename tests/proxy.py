"""A TCP proxy in front of a server that can stop passing bytes on, either way: a server that
has stopped answering (paused, or cut off by a firewall that drops packets) without closing
its connections."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

POLL_S = 0.01


class Proxy:
    """Listens on a free loopback port and forwards each connection to `upstream` (a URL).
    While `requests` is held, what clients send is read but not passed on; while `responses`
    is held, what the server answers is. A hold ends by itself after `up_to` seconds, so a
    client that never gives up cannot hang a test for good. A client that hangs up does not
    close the server's side: what it sent reaches the server when the hold ends, and the
    server applies it, as a server applies a request whose client gave up waiting."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.requests, self.responses = threading.Event(), threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._sockets: list[socket.socket] = []
        self._closed = False
        self._tick = threading.Event()  # never set: a sleep
        self._armed, self._released = threading.Event(), threading.Event()
        self._claim = threading.Lock()
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    @contextlib.contextmanager
    def holding(self, direction: threading.Event, up_to: float = 15.0) -> Iterator[None]:
        direction.set()
        timer = threading.Timer(up_to, direction.clear)
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            direction.clear()

    def capture(self, up_to: float = 15.0) -> None:
        """Hold the next request that arrives (on whichever connection), and only it, until
        `release` or `up_to` seconds: other requests, before and after it, go through."""
        self._released.clear()
        self._armed.set()
        threading.Timer(up_to, self._released.set).start()

    def release(self) -> None:
        self._armed.clear()
        self._released.set()

    def _captured(self) -> bool:
        with self._claim:
            armed = self._armed.is_set()
            self._armed.clear()
        return armed

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._upstream)
            self._sockets += [client, server]
            for target, args in (
                (self._ask, (client, server)),
                (self._answer, (server, client)),
            ):
                threading.Thread(target=target, args=args, name="proxy", daemon=True).start()

    def _ask(self, client: socket.socket, server: socket.socket) -> None:
        """Client to server; a client that hangs up leaves the server's side open."""
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if self._armed.is_set() and self._captured():
                    self._released.wait()
                self._wait(self.requests)
                server.sendall(data)

    def _answer(self, server: socket.socket, client: socket.socket) -> None:
        """Server to client; the connection ends when either side is gone."""
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                self._wait(self.responses)
                client.sendall(data)
        for sock in (client, server):
            with contextlib.suppress(OSError):
                sock.close()

    def _wait(self, held: threading.Event) -> None:
        while held.is_set() and not self._closed:
            self._tick.wait(POLL_S)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
