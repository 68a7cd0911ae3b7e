"""One error shape for every failure: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from kb.errors import KBError, error_body, field_error, http_code

log = logging.getLogger(__name__)


def _render(
    status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
) -> Response:
    response = jsonify(error_body(code, message, details))
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(KBError)
    def kb_error(exc: KBError) -> Response:
        if exc.status >= 500:
            log.error("%s: %s", exc.code, exc.message)
        response = _render(exc.status, exc.code, exc.message, exc.details)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="kb"'
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        message = exc.description or exc.name
        details = []
        if exc.code == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"the request body is larger than the limit of {limit} bytes"
            details = [field_error("body", f"more than {limit} bytes", "too_large")]
        status = exc.code or 500
        response = _render(status, http_code(status, exc.name or ""), message, details)
        if exc.code == 405 and (allowed := exc.get_headers()):
            for name, value in allowed:
                if name.lower() == "allow":
                    response.headers["Allow"] = value
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return _render(500, "internal_error", "an internal error occurred; see the server log")
