"""Build the OpenAPI 3.1 document from the routes and their pydantic models."""

from __future__ import annotations

import re
from typing import Any, Literal

from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from kb import __version__
from kb.api.util import RouteDoc
from kb.schemas import ErrorBody

REF = "#/components/schemas/{model}"
Mode = Literal["validation", "serialization"]
IGNORED_METHODS = {"HEAD", "OPTIONS"}


def build_spec(app: Flask, secured: bool = False) -> dict[str, Any]:
    """The document; `secured` (KB_API_KEYS set) adds the bearer scheme and 401/403."""
    routes = _routes(app)
    keyed = _models(routes)
    refs_by_key, schemas = models_json_schema(keyed, ref_template=REF)
    refs = {model: refs_by_key[(model, mode)] for model, mode in keyed}
    paths: dict[str, dict[str, Any]] = {}
    for path, method, doc in routes:
        operation = _operation(path, doc, refs)
        if secured and doc.access != "public":
            operation["security"] = [{"bearer": []}]
            for status in (401, 403) if doc.access == "write" else (401,):
                operation["responses"][str(status)] = _error(refs)
        paths.setdefault(path, {})[method.lower()] = operation
    components: dict[str, Any] = {"schemas": schemas.get("$defs", {})}
    if secured:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kb",
            "version": __version__,
            "description": "A knowledge base: store text with metadata, search it by meaning.",
        },
        "paths": paths,
        "components": components,
    }


def _routes(app: Flask) -> list[tuple[str, str, RouteDoc]]:
    found = []
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions[rule.endpoint]
        doc = getattr(view, "openapi", None) or RouteDoc(rule.endpoint.replace("_", " "))
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - IGNORED_METHODS):
            found.append((path, method, doc))
    return found


def _models(routes: list[tuple[str, str, RouteDoc]]) -> list[tuple[type[BaseModel], Mode]]:
    """Each model once: request bodies as validated, responses as serialized."""
    keyed: dict[type[BaseModel], Mode] = {ErrorBody: "serialization"}
    for _, _, doc in routes:
        if doc.request is not None:
            keyed.setdefault(doc.request, "validation")
        for model in (doc.response, *doc.alternatives):
            if model is not None:
                keyed.setdefault(model, "serialization")
    return list(keyed.items())


def _operation(path: str, doc: RouteDoc, refs: dict[type[BaseModel], Any]) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": doc.summary, "responses": {}}
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{([^}]+)}", path)
    ]
    if params or doc.query:
        op["parameters"] = params + doc.query
    if doc.request is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[doc.request]}},
        }
    if doc.response is not None:
        options = [refs[m] for m in (doc.response, *doc.alternatives)]
        schema = options[0] if len(options) == 1 else {"oneOf": options}
    elif doc.media_type == "application/json":
        schema = {"type": "object"}
    else:
        schema = {"type": "string"}
    content = {doc.media_type.split(";")[0]: {"schema": schema}}
    for status, meaning in {doc.status: "Success", **doc.statuses}.items():
        op["responses"][str(status)] = {"description": meaning, "content": content}
    unknown_parameter = (422,) if doc.refuses_query else ()
    # 400: any route, for a path or query whose %-escapes are not UTF-8 (request_target)
    every = (400, *unknown_parameter, 500)
    # 408: a route that reads a body, for one that stops arriving (gunicorn, KB_IDLE_TIMEOUT)
    stalled = (408,) if doc.request is not None else ()
    # 503: the store failed or is away; 504: a Chroma server did not answer in time
    store = (503, 504) if doc.uses_store else ()
    for status in (*doc.errors, *stalled, *every, *store):
        op["responses"][str(status)] = _error(refs)
    return op


def _error(refs: dict[type[BaseModel], Any]) -> dict[str, Any]:
    return {"description": "Error", "content": {"application/json": {"schema": refs[ErrorBody]}}}
