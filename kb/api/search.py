"""The query route."""

from __future__ import annotations

from flask import Blueprint, Response

from kb.api.util import body, documented, reply, store
from kb.schemas import BatchQueryResult, QueryRequest, QueryResult
from kb.search import search

bp = Blueprint("search", __name__)


@bp.post("/query")
@documented(
    "Search by meaning, with filters and a similarity threshold",
    request=QueryRequest,
    response=QueryResult,
    alternatives=[BatchQueryResult],
)
def query() -> tuple[Response, int]:
    req = body(QueryRequest)
    results = search(store(), req)
    if req.query is not None:
        return reply(results[0])
    return reply(BatchQueryResult(results=results))
