"""Document routes: add, get, list, update, delete."""

from __future__ import annotations

import contextlib
from typing import Any

from flask import Blueprint, Response, request

from kb import json_input
from kb.api.util import body, documented, fields_as_sent, reply, state, store, unusable
from kb.errors import ValidationFailed, field_error
from kb.filters import FilterLimits, compile_filter
from kb.schemas import (
    AddRequest,
    AddResponse,
    DeleteRequest,
    DeleteResponse,
    Document,
    DocumentList,
    UpdateFields,
    UpdateRequest,
    number_or_text,
    scalar_or_text,
)
from kb.store import WriteMode

bp = Blueprint("documents", __name__)

MAX_OFFSET = 2**31 - 1  # Chroma takes a 32-bit offset and fails (500) past it
OWN_PARAMS = ("limit", "offset", "where")  # a listing's other parameters are metadata filters
LIST_PARAMS = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
    {
        "name": "offset",
        "in": "query",
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
    },
    {"name": "where", "in": "query", "schema": {"type": "string"}, "description": "JSON filter"},
    {
        # `?category=baking&difficulty=advanced`: any other parameter is a metadata key
        "name": "filters",
        "in": "query",
        "style": "form",
        "explode": True,
        "schema": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "propertyNames": {"not": {"enum": list(OWN_PARAMS)}},
        },
        "description": "Metadata equality: key=value; a key given twice means any of. "
        "Values spelt as JSON numbers or true/false are typed, anything else is text.",
    },
]
ID_ERRORS = (400, 404, 413, 415, 422)
UPDATE_ERRORS = (*ID_ERRORS, 409)  # 409: the stored document is torn and the patch keeps text


@bp.post("/add")
@documented(
    "Add one document or many",
    request=AddRequest,
    response=AddResponse,
    status=201,
    statuses={
        201: "At least one document was created (added > 0)",
        200: "None was created: every document was skipped or updated (added = 0)",
    },
    errors=(400, 409, 413, 415, 422),
    access="write",
)
def add() -> tuple[Response, int]:
    req = body(AddRequest)
    # one document sent as the body's own fields: its errors name them so (`id`)
    single = req.documents is None
    with fields_as_sent("documents.0", "") if single else contextlib.nullcontext():
        result = store().add(req.items(), WriteMode(req.conflict_mode()), req.on_duplicate)
    # 201 Created only when something was: a request that skipped or replaced every
    # document was a 201 too (review helper 82)
    return reply(result, 201 if result.added else 200)


@bp.get("/documents/<doc_id:doc_id>")
@documented("Get one document", response=Document, errors=(404, 409))  # 409: damaged
def get_document(doc_id: str) -> tuple[Response, int]:
    return reply(store().get(doc_id))


@bp.get("/documents")
@documented(
    "List documents, optionally filtered",
    response=DocumentList,
    errors=(400, 422),
    query=LIST_PARAMS,
)
def list_documents() -> tuple[Response, int]:
    limit = _int_arg("limit", 20, 1, 1000)
    offset = _int_arg("offset", 0, 0, MAX_OFFSET)
    where = _json_arg("where")
    if "" in request.args:  # `?=value`: no metadata key to filter on
        problem = "a parameter without a name (?=value)"
        raise ValidationFailed(problem, details=[field_error("query string", problem)])
    if "where_document" in request.args:  # /query's, read as a metadata key: nothing listed
        problem = (
            "a listing filters by metadata only (a text filter is POST /query's; a metadata "
            'key of that name: ?where={"where_document": ...})'
        )
        raise ValidationFailed(
            f"where_document: {problem}", details=[field_error("where_document", problem)]
        )
    simple = {
        key: _typed(request.args.getlist(key)) for key in request.args if key not in OWN_PARAMS
    }
    limits = FilterLimits.of(state().settings)
    flt = compile_filter(simple or None, where, limits=limits, filters_field="")
    return reply(store().list_documents(flt, limit, offset))


@bp.patch("/documents/<doc_id:doc_id>")
@documented(
    "Update a document's text and/or metadata",
    request=UpdateFields,
    response=Document,
    errors=UPDATE_ERRORS,
    access="write",
)
def patch_document(doc_id: str) -> tuple[Response, int]:
    return reply(store().update(doc_id, body(UpdateFields)))


@bp.post("/update")
@documented(
    "Update a document (id in the body)",
    request=UpdateRequest,
    response=Document,
    errors=UPDATE_ERRORS,
    access="write",
)
def update() -> tuple[Response, int]:
    req = body(UpdateRequest)
    return reply(store().update(req.id, req))


@bp.delete("/documents/<doc_id:doc_id>")
@documented("Delete one document", response=DeleteResponse, errors=(404,), access="write")
def delete_document(doc_id: str) -> tuple[Response, int]:
    with fields_as_sent("ids.0", "id"):
        return reply(store().delete([doc_id]))


@bp.post("/delete")
@documented(
    "Delete documents by ids or by filter",
    request=DeleteRequest,
    response=DeleteResponse,
    errors=ID_ERRORS,
    access="write",
)
def delete() -> tuple[Response, int]:
    req = body(DeleteRequest)
    if req.ids is not None:
        return reply(store().delete(req.ids))
    flt = compile_filter(req.filters, req.where, limits=FilterLimits.of(state().settings))
    return reply(store().delete_where(flt))


def _one_arg(name: str) -> str | None:
    """A parameter that takes one value: given twice (`?limit=1&limit=2`), the first one
    was used, silently."""
    values = request.args.getlist(name)
    if len(values) > 1:
        raise ValidationFailed(
            f"{name}: given {len(values)} times; give it once",
            details=[field_error(name, f"given {len(values)} times; give it once")],
        )
    return values[0] if values else None


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = _one_arg(name)
    if raw is None:
        return default
    # spelt as JSON spells an integer: int() would also take "1_0", " 1" and "+1"
    value = number_or_text(raw)
    if not isinstance(value, int):
        value = low - 1
    if not low <= value <= high:
        bounds = f"{low}..{high}"
        raise ValidationFailed(
            f"{name}: must be an integer {bounds}",
            details=[field_error(name, f"must be an integer {bounds}")],
        )
    return value


def _json_arg(name: str) -> dict[str, Any] | None:
    raw = _one_arg(name)
    if raw is None:
        return None
    try:
        return json_input.loads_object(raw)
    except json_input.UnusableJSON as exc:
        raise unusable(exc, name) from exc
    except ValueError as exc:
        raise ValidationFailed(
            f"{name}: not valid JSON ({exc})", details=[field_error(name, "not valid JSON")]
        ) from exc


def _typed(values: list[str]) -> Any:
    """Query-string values: text, and numbers (spelt as JSON spells them) and true/false also
    typed (so ?author=NaN finds an author called NaN, ?zip=10001 the number and the text, as
    the search page does; a CSV column is typed cell by cell); repeated = any of."""
    typed: list[Any] = []
    for value in values:
        typed.extend([scalar_or_text(value), value])
    unique = list({(type(value), value): value for value in typed}.values())
    return unique[0] if len(unique) == 1 else unique
