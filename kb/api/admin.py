"""Operations routes: a consistent backup of the running store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO

from flask import Blueprint, Response, request

from kb.api.util import documented, store
from kb.backup import snapshot

bp = Blueprint("admin", __name__)
BLOCK = 1 << 16


@bp.get("/backup")
@documented(
    "A consistent backup of the store (gzip JSON lines; kb backup --url saves it)",
    errors=(),
    access="write",
    media_type="application/gzip",
)
def backup() -> Response:
    # Written in full first (writes wait meanwhile, reads do not), then streamed; a HEAD
    # request (Flask answers it with this view) gets the headers without one being taken.
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    body = iter(()) if request.method == "HEAD" else _blocks(snapshot(store()))
    response = Response(body, mimetype="application/gzip")
    response.headers["Content-Disposition"] = f'attachment; filename="kb-{stamp}.jsonl.gz"'
    return response


def _blocks(spool: IO[bytes]) -> Iterator[bytes]:
    """The file's bytes; it is closed once read to the end or when the client goes away."""
    with spool:
        while block := spool.read(BLOCK):
            yield block
