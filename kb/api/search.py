"""The query route."""

from __future__ import annotations

from flask import Blueprint, Response

from kb.api.util import body, documented, reply, state, store
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
    # an answer past KB_MAX_ANSWER_BYTES is a 422 (its request asks too much of the service;
    # a 413 would say its body is too large), raised before the rest of it is made
    results = search(store(), req, state().settings.max_answer_bytes)
    if req.query is not None:
        return reply(results[0])
    return reply(BatchQueryResult(results=results))
