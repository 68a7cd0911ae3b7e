"""The search page: GET / and its static assets from kb/web, public and free of data."""

from __future__ import annotations

import posixpath
from pathlib import Path

from flask import Blueprint, Response, abort, send_from_directory

from kb.api.util import documented

bp = Blueprint("ui", __name__)

WEB = Path(__file__).resolve().parent.parent / "web"
# The page loads only kb's own files and talks only to kb: a script injected through stored
# text could neither load code from elsewhere nor send the API key away. Trusted Types with
# no policy make the browser refuse HTML strings (innerHTML and the like) outright.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'; "
    "require-trusted-types-for 'script'; trusted-types 'none'"
)
# What /static/ serves: the page's scripts and styles. Not index.html, which only / sends,
# with its policy (from /static/ it would load without one).
STATIC_SUFFIXES = (".js", ".css")


def _static_headers(response: Response) -> Response:
    response.headers["X-Content-Type-Options"] = "nosniff"
    # Revalidate every time (cheap with the ETag): a new kb version must not run stale JS.
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/")
@documented(
    "The search page (no data, needs no key)",
    errors=(),
    access="public",
    media_type="text/html",
    uses_store=False,
)
def index() -> Response:
    response = _static_headers(send_from_directory(WEB, "index.html", mimetype="text/html"))
    response.headers["Content-Security-Policy"] = PAGE_POLICY
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/static/<path:filename>")
@documented(
    "The search page's scripts and styles",
    errors=(404,),
    access="public",
    media_type="text/*",
    uses_store=False,
)
def static(filename: str) -> Response:
    # send_from_directory refuses paths that leave WEB (404), so no traversal check here.
    if not posixpath.normpath(filename).endswith(STATIC_SUFFIXES):
        abort(404)
    return _static_headers(send_from_directory(WEB, filename))
