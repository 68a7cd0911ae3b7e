"""Bearer-key authorization and CORS, applied to every request before its view runs."""

from __future__ import annotations

from flask import Flask, Response, current_app, g, request

from kb.api.util import RouteDoc, state
from kb.auth import Role
from kb.errors import Forbidden, Unauthorized

CORS_HEADERS = "Authorization, Content-Type, X-Request-ID"
CORS_METHODS = "GET, POST, PATCH, DELETE, OPTIONS"


def route_doc() -> RouteDoc | None:
    """The matched view's description (None for an unknown route)."""
    if request.url_rule is None or request.endpoint is None:
        return None
    return getattr(current_app.view_functions[request.endpoint], "openapi", None)


def presented_role() -> Role | None:
    """The role of the request's key: WRITE when no keys are configured, None for no key or
    a key that is not configured."""
    keys = state().keys
    if not keys.enabled:
        return Role.WRITE
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return keys.role_of(token.strip())


def _authorize() -> None:
    doc = route_doc()
    if doc is None or doc.access == "public" or not state().keys.enabled:
        return
    role = presented_role()
    g.kb_role = role
    if role is None:
        header = request.headers.get("Authorization")
        why = "the API key is not valid" if header else "this route needs an API key"
        raise Unauthorized(f'{why}: send "Authorization: Bearer <key>"')
    if not role.allows(Role(doc.access)):
        raise Forbidden("this key is read-only; writes need a read-write key")


def _allowed_origin() -> str | None:
    origin = request.headers.get("Origin")
    allowed = state().settings.cors()
    if origin is None or not allowed:
        return None
    if "*" in allowed:
        return "*"
    return origin if origin in allowed else None


def _preflight() -> Response | None:
    """Answer a CORS preflight before authorization: browsers send it without credentials."""
    if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
        return None
    response = current_app.make_default_options_response()
    if _allowed_origin() is not None:
        response.status_code = 204
        response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
        response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
        response.headers["Access-Control-Max-Age"] = "600"
    return response


def _cors(response: Response) -> Response:
    origin = _allowed_origin()
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = "X-Request-ID"
        if origin != "*":
            response.headers.add("Vary", "Origin")
    return response


def register_security(app: Flask) -> None:
    @app.before_request
    def _guard() -> Response | None:
        answer = _preflight()
        if answer is None:
            _authorize()
        return answer

    app.after_request(_cors)
