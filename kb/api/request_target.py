"""The request's path and query string must spell UTF-8: Werkzeug decodes any other bytes
as U+FFFD, silently, so `DELETE /documents/%ff` deleted the document whose id is "\ufffd"
and `?author=%ff` asked for an author of that name."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from flask import Flask, request

from kb.errors import BadRequest, field_error

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


def register_request_target(app: Flask) -> None:
    app.before_request(check_request_target)


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _refuse(field: str, message: str) -> None:
    raise BadRequest(message, details=[field_error(field, PROBLEM, "encoding")])
