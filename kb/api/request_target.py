"""Checks of the request's path and query string before its view runs.

Both must spell UTF-8: Werkzeug decodes any other bytes as U+FFFD, silently, so
`DELETE /documents/%ff` deleted the document whose id is "\ufffd" and `?author=%ff` asked for
an author of that name. And a route takes only the query parameters it documents: views read
their options from the body or the path, so `POST /query?top_k=1` answered five matches."""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from flask import Flask, request

from kb.api.security import route_doc
from kb.errors import BadRequest, ValidationFailed, field_error

PROBLEM = "is not UTF-8 once its %-escapes are decoded"


def check_request_target() -> None:
    """400 naming the path, or the query parameter (by its name, as far as it is readable),
    whose bytes are not UTF-8."""
    # PEP 3333: PATH_INFO holds the decoded bytes as latin-1 characters
    if not _utf8(request.environ.get("PATH_INFO", "").encode("latin-1")):
        _refuse("path", f"the path {PROBLEM}")
    for pair in request.query_string.split(b"&"):
        name, _, value = (
            unquote_to_bytes(part.replace(b"+", b" ")) for part in pair.partition(b"=")
        )
        if not (_utf8(name) and _utf8(value)):
            shown = name.decode("utf-8", "backslashreplace")
            _refuse(shown, f"the query parameter '{shown}' {PROBLEM}")


def check_query_parameters() -> None:
    """422 naming the first query parameter of a route that takes none (RouteDoc.refuses_query)."""
    doc = route_doc()
    if doc is None or not doc.refuses_query or request.method == "OPTIONS" or not request.args:
        return
    name = next(iter(request.args))
    route = re.sub(r"<(?:[^:>]*:)?([^>]*)>", r"<\1>", str(request.url_rule))
    problem = f"{request.method} {route} takes no query parameters"
    body = "; its options go in the JSON body" if doc.request is not None else ""
    message = f"{problem}{body} (got '{name}')"
    raise ValidationFailed(
        message, details=[field_error(name or "query string", problem, "unknown_parameter")]
    )


def register_request_target(app: Flask) -> None:
    app.before_request(check_request_target)
    app.before_request(check_query_parameters)


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _refuse(field: str, message: str) -> None:
    raise BadRequest(message, details=[field_error(field, PROBLEM, "encoding")])
