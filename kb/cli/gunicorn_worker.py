"""gunicorn's gthread worker with a limit on a client's silence in the middle of a request."""

from __future__ import annotations

import logging
import socket
from typing import Any

from gunicorn.workers.gthread import ThreadWorker


class IdleLimitedWorker(ThreadWorker):  # type: ignore[misc]
    """gthread reads a request's head and body blocking, with no timeout: a client that sent
    part of a request and then went quiet held a worker thread for good, and a few dozen such
    connections stopped every worker (review helper 68). Each connection's socket here waits
    KB_IDLE_TIMEOUT seconds for the next bytes, as waitress's `channel_timeout` does; then
    the connection is closed (a stalled body is a 408 from the app, `kb.api.util.body`)."""

    def init_process(self) -> None:
        self.log.error_log.addFilter(_SilenceInOneLine(self.app.settings.idle_timeout))
        super().init_process()

    def enqueue_req(self, conn: Any) -> None:
        # every connection passes here first from `accept`, before a thread reads it
        if not isinstance(conn.sock, _IdleLimitedSocket):
            conn.sock = _IdleLimitedSocket.adopt(conn.sock, self.app.settings.idle_timeout)
        super().enqueue_req(conn)


class _IdleLimitedSocket(socket.socket):
    """A socket whose blocking mode waits `limit` seconds a call: gthread sets its sockets
    blocking (`setblocking(True)`, which drops a timeout) before each request it reads."""

    limit: int

    @classmethod
    def adopt(cls, sock: socket.socket, limit: int) -> _IdleLimitedSocket:
        adopted = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        adopted.limit = limit
        adopted.setblocking(True)
        return adopted

    def setblocking(self, flag: bool) -> None:
        if flag:
            self.settimeout(self.limit)
        else:
            super().setblocking(False)

    def sendall(self, data: Any, flags: int = 0) -> None:
        """Each wait for the client to take more bytes is limited, not the whole send: a
        socket's timeout bounds all of `sendall`, and a 10 MB listing read steadily at 80
        KB/s was cut off (gunicorn writes a body with one `sendall`; review helper 76)."""
        view = memoryview(data).cast("B")
        while view:
            view = view[self.send(view, flags) :]


class _SilenceInOneLine(logging.Filter):
    """gthread logs a timeout reading a request's head as "Socket error processing request."
    with a 20-line traceback: one line instead, a line a connection closed."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], TimeoutError):
            record.msg = (
                "closed a connection silent for %d s mid-request, sending or reading nothing "
                "(KB_IDLE_TIMEOUT)"
            )
            record.args = (self.limit,)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True
