"""Deadlines for the requests kb sends a Chroma server (KB_CHROMA_URL).

chromadb's HTTP client waits for ever (its httpx session has `timeout=None`), so a server that
stopped answering without closing its connections (paused, swapping, cut off by a firewall that
drops packets) held every search and write of kb for good, and a gunicorn worker's threads one
by one. kb bounds each wait: a read (a get, query or count) and a connection by
KB_CHROMA_TIMEOUT, a write by KB_CHROMA_WRITE_TIMEOUT (a large upsert takes a busy server tens
of seconds). The bound is on each wait for the server's next bytes, not on the whole call.

A write that timed out may still be applied: the server has its request and may finish it
later. The caller cannot tell, so `timed_out_writes` counts them (in the thread that sent
them) for kb.shared_replica, which leaves such a write's change-log entry pending, to be
settled as a dead writer's (kb.changes).
"""

from __future__ import annotations

import threading
from typing import Any

import httpx

from kb.config import Settings

READS = ("/get", "/query", "/search", "/count")  # POSTs (and a GET) that change nothing
CONNECT_S = 10.0  # at most, to open a connection (a server that is there accepts at once)

_local = threading.local()


def timed_out_writes() -> int:
    """Writes this thread sent whose answer did not come in time (their outcome unknown)."""
    return getattr(_local, "writes", 0)


def is_write(request: httpx.Request) -> bool:
    return request.method not in ("GET", "HEAD") and not request.url.path.endswith(READS)


class Deadlines(httpx.BaseTransport):
    """Wraps the session's transport: each request gets its kind's timeout."""

    def __init__(self, inner: httpx.BaseTransport, read_s: float, write_s: float) -> None:
        self.inner, self.read_s, self.write_s = inner, read_s, write_s

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        write = is_write(request)
        wait = self.write_s if write else self.read_s
        connect = min(wait, CONNECT_S)
        request.extensions["timeout"] = {
            "connect": connect,
            "read": wait,
            "write": wait,
            "pool": wait,
        }
        try:
            return self.inner.handle_request(request)
        except (httpx.ReadTimeout, httpx.WriteTimeout):  # sent, in part or whole: unknown
            if write:  # (the exception gets its request only once the client has it)
                _local.writes = timed_out_writes() + 1
            raise

    def close(self) -> None:
        self.inner.close()


def bound(client: Any, settings: Settings) -> None:
    """Give a chromadb HttpClient's session kb's deadlines (each client has its own; its
    admin client's, which reads the tenant and database as it is made, is not bounded)."""
    session = client._server._session  # chromadb 1.x: FastAPI's httpx.Client
    if not isinstance(session, httpx.Client):
        raise TypeError(f"chromadb's HTTP session is a {type(session).__name__}")
    session._transport = _bounded(session._transport, settings)
    # HTTP_PROXY / ALL_PROXY: httpx sends through a mounted transport instead, which kept
    # waiting for ever (review helper 86)
    session._mounts = {
        pattern: None if transport is None else _bounded(transport, settings)
        for pattern, transport in session._mounts.items()
    }


def _bounded(transport: httpx.BaseTransport, settings: Settings) -> Deadlines:
    inner = transport.inner if isinstance(transport, Deadlines) else transport
    return Deadlines(inner, settings.chroma_timeout, settings.chroma_write_timeout)


def probe(url: str, settings: Settings) -> None:
    """Ask the server for its heartbeat within KB_CHROMA_TIMEOUT: chromadb's client makes its
    first requests as it is created, before `bound` can apply, and would wait for ever."""
    wait = settings.chroma_timeout
    timeout = httpx.Timeout(wait, connect=min(wait, CONNECT_S))
    httpx.get(f"{url.rstrip('/')}/api/v2/heartbeat", timeout=timeout).raise_for_status()


def unanswered_write(exc: BaseException) -> bool:
    """Whether `exc` is a write the server had (in part or whole) and did not answer in time:
    it may still apply it (a connection never made sent nothing)."""
    if not isinstance(exc, httpx.ReadTimeout | httpx.WriteTimeout):
        return False
    try:
        return is_write(exc.request)
    except RuntimeError:  # no request attached
        return False


def timeout_message(exc: BaseException) -> str | None:
    """What to tell a client whose request to Chroma timed out (None: not a timeout)."""
    if not isinstance(exc, httpx.TimeoutException):
        return None
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return "the Chroma server did not accept a connection in time (KB_CHROMA_TIMEOUT)"
    if unanswered_write(exc):
        return (
            "the Chroma server did not answer a write in time (KB_CHROMA_WRITE_TIMEOUT); it "
            "may still apply it: read the documents back before sending them again (every "
            "kb process re-reads what the write touched within about two minutes)"
        )
    return "the Chroma server did not answer a read in time (KB_CHROMA_TIMEOUT)"
