"""Operations routes: a consistent backup of the running store."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Response, request
from werkzeug.wsgi import wrap_file

from kb.api.util import documented, store
from kb.backup import snapshot

bp = Blueprint("admin", __name__)


@bp.get("/backup")
@documented(
    "A consistent backup of the store (gzip JSON lines; kb backup --url saves it)",
    errors=(),
    access="write",
    media_type="application/gzip",
)
def backup() -> Response:
    # Written in full first (writes wait meanwhile, reads do not), then streamed and closed.
    spool = snapshot(store())
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    response = Response(
        wrap_file(request.environ, spool), mimetype="application/gzip", direct_passthrough=True
    )
    response.headers["Content-Disposition"] = f'attachment; filename="kb-{stamp}.jsonl.gz"'
    return response
