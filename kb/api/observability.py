"""Request ids, one structured log line per request, and Prometheus metrics."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, g, request

from kb import logs
from kb.api.util import state

log = logging.getLogger("kb.access")
INCOMING_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Each label value is a new series kept for the life of the process; the method comes from
# the request line, so anything else would let anyone grow /metrics without bound.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "<unmatched>"


def _labels() -> tuple[str, str]:
    """The (route, method) metric labels: the route pattern, never the path (both bounded)."""
    route = request.url_rule.rule if request.url_rule is not None else UNMATCHED
    method = request.method if request.method in KNOWN_METHODS else "other"
    return route, method


def _start() -> None:
    incoming = request.headers.get("X-Request-ID", "")
    # A caller's id is kept so its logs and ours line up; anything odd is replaced.
    g.kb_request_id = incoming if INCOMING_ID.fullmatch(incoming) else uuid.uuid4().hex
    g.kb_token = logs.request_id.set(g.kb_request_id)
    g.kb_started = time.perf_counter()


def _finish(response: Response) -> Response:
    rid = g.get("kb_request_id")
    if rid is None:  # a failure before _start ran (it runs first): nothing to record
        return response
    response.headers["X-Request-ID"] = rid
    seconds = time.perf_counter() - g.kb_started
    route, method = _labels()
    state().telemetry.observe_request(route, method, response.status_code, seconds)
    # The Authorization header and bodies never reach the log.
    log.info(
        "%s %s %s",
        request.method,
        request.path,
        response.status_code,
        extra={
            "method": request.method,  # the log keeps what was sent, to find who sent it
            "route": route,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round(seconds * 1000, 2),
            "bytes_in": request.content_length or 0,
            "remote": request.remote_addr,
        },
    )
    return response


def _reset(_: BaseException | None) -> None:
    token = g.pop("kb_token", None)
    if token is not None:
        logs.request_id.reset(token)


def register_observability(app: Flask) -> None:
    # Registered before the security hooks, so refused requests are logged and counted too.
    app.before_request(_start)
    app.after_request(_finish)
    app.teardown_request(_reset)
