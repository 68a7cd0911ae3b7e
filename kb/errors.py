"""Errors that carry their HTTP status; one handler renders them all in one shape."""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

# Problems an error's details list at most: a request naming a million unknown ids had a
# reply of 75 MB (review helper 80).
MAX_DETAILS = 100


class KBError(Exception):
    """A failure a client can act on: status, stable code, human message, optional details."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        code: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        # the first MAX_DETAILS problems; the message says how many there are
        self.details = (details or [])[:MAX_DETAILS]
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def extended(self, more: str) -> KBError:
        """This error with `more` after its message; its kind, code, status and details kept
        (rebuilt by its type, an error whose constructor takes other arguments broke)."""
        error = copy.copy(self)
        error.message = f"{self.message}; {more}"
        error.args = (error.message,)
        return error


def error_body(
    code: str, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The one error shape, for kb's errors and for the answers of Flask and waitress."""
    return {"error": {"code": code, "message": message, "details": details or []}}


def http_code(status: int, reason: str) -> str:
    """An HTTP error's code in that shape: its reason in snake case ("Bad Request" is
    bad_request), and kb's own code for a 413."""
    if status == PayloadTooLarge.status:
        return PayloadTooLarge.code
    return re.sub(r"\W+", "_", reason.lower()).strip("_") or "error"


class BadRequest(KBError):
    status = 400
    code = "bad_request"


class ValidationFailed(KBError):
    """Well-formed JSON whose content is wrong; details name each field."""

    status = 422
    code = "validation_error"


class Unauthorized(KBError):
    """No valid API key was presented."""

    status = 401
    code = "unauthorized"


class Forbidden(KBError):
    """The key is valid but its role does not allow this (a read-only key on a write)."""

    status = 403
    code = "forbidden"


class NotFound(KBError):
    status = 404
    code = "not_found"


class Conflict(KBError):
    status = 409
    code = "conflict"


class RequestTimeout(KBError):
    status = 408
    code = "request_timeout"


class PayloadTooLarge(KBError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(KBError):
    status = 415
    code = "unsupported_media_type"


class ConfigError(KBError):
    """The service cannot start or serve as configured (wrong model path, mismatched store)."""

    status = 500
    code = "config_error"


class ModelMismatch(ConfigError):
    """The collection was built with another embedding model or dimension."""

    status = 409
    code = "model_mismatch"


class StoreUnavailable(KBError):
    status = 503
    code = "store_unavailable"


class StoreTimeout(StoreUnavailable):
    """The Chroma server did not answer in time (KB_CHROMA_TIMEOUT, KB_CHROMA_WRITE_TIMEOUT);
    `may_have_landed` when what it did not answer was a write, which it may still apply."""

    status = 504
    code = "store_timeout"
    may_have_landed = False


def named(ids: Sequence[str], limit: int = 10) -> str:
    """Ids for a message: the first `limit`, quoted, and how many more."""
    shown = ", ".join(f"'{i}'" for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def field_error(field: str, message: str, kind: str = "value_error") -> dict[str, Any]:
    """One entry of an error's details: which field, what is wrong with it."""
    return {"field": field, "message": message, "type": kind}


def field_errors(exc: ValidationError, root: str = "body") -> list[dict[str, Any]]:
    """A pydantic validation error as details entries: the field's dotted path, the message."""
    return [
        field_error(
            ".".join(str(part) for part in err["loc"]) or root,
            err["msg"].removeprefix("Value error, "),
            err["type"],
        )
        for err in exc.errors(include_url=False)
    ]
