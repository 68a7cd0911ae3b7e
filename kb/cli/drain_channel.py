"""waitress's connection (channel) and task for kb serve's drain (kb.cli.drain), imported
with waitress. Once the drain has begun, on each connection:

- the request at its head when it began (being run, waiting for a thread, or being received)
  is answered in full; any request behind it or after it gets a 503 `shutting_down` with
  Retry-After, without running;
- an answer with no request behind it says `Connection: close`, and the connection closes
  once it is sent. One with a request behind it keeps the connection for that request's 503.

Answers finished during the drain said nothing, so an HTTP/1.1 client sent its next request
into a connection about to close; a request pipelined behind one under way was never read,
and closing the connection over its unread bytes reset it, which could cost the client the
end of the answer before it too (review helper 86).
"""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

from waitress.channel import HTTPChannel
from waitress.task import WSGITask

from kb.cli.server_errors import answer_headers
from kb.errors import error_body

log = logging.getLogger("kb.cli.drain")

RETRY_AFTER_S = 5  # the Retry-After of a request refused while kb stops
SHUTTING_DOWN = (
    "kb is shutting down: the request was not run; send it again (to another instance, or "
    "once kb is back)"
)


def begun(request: Any) -> bool:
    """Whether waitress's parser of the request being read holds the start of one: bytes
    other than the empty lines a client may send before a request line (RFC 9112 2.2: a
    server SHOULD ignore at least one; waitress does). A CRLF sent after a body counted as a
    request begun: the answer before it kept its connection, and the drain waited GRACE_S
    for a request that never came (review helper 97)."""
    if request is None:
        return False
    return bool(request.completed or request.headers_finished or request.header_plus.strip())


def waiting(channel: Any) -> bool:
    """Whether the client has sent bytes not read yet (a request, or the start of one)."""
    try:
        return bool(channel.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # nothing to read (BlockingIOError), or the connection is gone
        return False


def _closes(task: Any) -> None:
    """During the drain, an answer with no request behind it closes its connection; set
    while its headers are built (waitress then says Connection: close and closes)."""
    if task.channel.draining and not task.channel.behind():
        task.request.headers["CONNECTION"] = "close"


class _Task(WSGITask):
    def build_response_header(self) -> bytes:
        _closes(self)
        return super().build_response_header()


class _ShuttingDown(_Task):
    """A 503 in kb's error shape for a request the drain does not take (the app is not
    called)."""

    complete = True  # no start_response to wait for

    def execute(self) -> None:
        body = json.dumps(error_body("shutting_down", SHUTTING_DOWN)).encode()
        self.status = "503 Service Unavailable"
        self.response_headers.extend([*answer_headers(), ("Retry-After", str(RETRY_AFTER_S))])
        self.content_length = len(body)
        # no body to a HEAD (RFC 9110 9.3.2; waitress does not strip it, and the app that
        # would is not called): a pipelined answer after it read the JSON as its start
        # (review helper 97)
        self.write(b"" if self.request.command == "HEAD" else body)
        log.info("stopping: answered 503 to %s %s", self.request.command, self.request.path)


class DrainingChannel(HTTPChannel):
    draining = False
    admitted: Any = None  # the request at the connection's head when the drain began

    def drain(self) -> None:
        """The drain begins (called by the thread of waitress's loop)."""
        with self.requests_lock:
            reading = self.request if begun(self.request) else None
            self.admitted = self.requests[0] if self.requests else reading
            self.draining = True

    def behind(self) -> bool:
        """Whether a request follows the one being answered (read, begun, or not read yet).
        The request being read is the one answered for a moment after it is complete (waitress
        hands it to a thread before it lets it go)."""
        reading = begun(self.request) and self.request not in self.requests
        return len(self.requests) > 1 or reading or waiting(self)

    @property
    def task_class(self) -> type[_Task]:
        """What answers the request at the head (HTTPChannel.service reads it)."""
        if self.draining and self.requests[0] is not self.admitted:
            return _ShuttingDown
        return _Task
