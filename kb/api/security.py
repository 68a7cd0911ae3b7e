"""Bearer-key authorization, the Host check of a keyless service, and CORS, applied to
every request before its view runs."""

from __future__ import annotations

import ipaddress

from flask import Flask, Response, current_app, request

from kb.api.util import RouteDoc, state
from kb.auth import Role
from kb.errors import BadRequest, Forbidden, Unauthorized

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


def _check_host() -> None:
    """Without keys, answer only requests addressed to an IP address, localhost or a name in
    KB_ALLOWED_HOSTS (or KB_HOST). A page on a site whose name its owner re-points at
    127.0.0.1 (DNS rebinding) is same-origin with kb, so CORS does not stop it from reading
    and writing; it cannot make the browser send another Host than its own name."""
    if "Host" not in request.headers:  # HTTP/1.0 without one (a load balancer's check):
        return  # addressed to the address it connected to; a browser always sends one
    settings = state().settings
    allowed = settings.hosts()
    name = host_name(request.host)
    if "*" in allowed or name in allowed or name == settings.host.lower() or _is_local(name):
        return
    raise BadRequest(
        f"this service does not answer for the host {name!r} (the Host header): add it to "
        "KB_ALLOWED_HOSTS, or require API keys (KB_API_KEYS)"
    )


def host_name(host: str) -> str:
    """A Host header's name: no port, no IPv6 brackets, lower case, no trailing dot."""
    if host.startswith("["):
        name = host[1:].partition("]")[0]
    else:
        name = host.rpartition(":")[0] if ":" in host else host
    return name.lower().rstrip(".")


def _is_local(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):  # browsers keep these on loopback
        return True
    try:
        ipaddress.ip_address(name)  # an address cannot be re-pointed
    except ValueError:
        return False
    return True


def _authorize() -> None:
    if request.url_rule is None or not state().keys.enabled:
        return  # an unknown route is a 404 to everyone
    doc = route_doc()
    # A view added without a RouteDoc is treated as a write route: closed, not open.
    access = doc.access if doc is not None else "write"
    if access == "public":
        return
    if request.method == "OPTIONS":  # which methods a route takes: no write, whatever the route
        access = "read"
    role = presented_role()
    if role is None:
        header = request.headers.get("Authorization")
        why = "the API key is not valid" if header else "this route needs an API key"
        raise Unauthorized(f'{why}: send "Authorization: Bearer <key>"')
    if not role.allows(Role(access)):
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
    # every answer is what its Content-Type says: a browser must not sniff JSON into HTML
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    allowed = state().settings.cors()
    if allowed:  # the answer depends on the Origin (with '*' too: sent only with one), so
        response.headers.add("Vary", "Origin")  # a cache must not serve one to another
    origin = _allowed_origin()
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = "X-Request-ID"
    return response


def register_security(app: Flask) -> None:
    @app.before_request
    def _guard() -> Response | None:
        if not state().keys.enabled:
            _check_host()
        answer = _preflight()
        if answer is None:
            _authorize()
        return answer

    app.after_request(_cors)
