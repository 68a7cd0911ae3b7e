"""GET /openapi.json lists every route with its request and response schemas."""

from __future__ import annotations

import io
import re

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from kb.api.documents import LIST_PARAMS
from kb.store import KnowledgeStore
from tests.test_repair import LONG


def test_every_route_is_documented(app: Flask, client: FlaskClient) -> None:
    spec = client.get("/openapi.json").json
    assert spec["openapi"].startswith("3.")
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        assert path in spec["paths"], path
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operation = spec["paths"][path][method.lower()]
            assert operation["summary"]
            assert operation["responses"]


def test_schemas_are_referenced_and_defined(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").json
    text = str(spec["paths"])
    for name in re.findall(r"#/components/schemas/([\w-]+)", text):
        assert name in spec["components"]["schemas"], name
    add = spec["paths"]["/add"]["post"]
    assert add["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "AddRequest"
    )
    assert "201" in add["responses"]
    assert "409" in add["responses"]
    query_schema = spec["components"]["schemas"]["QueryResult"]["properties"]
    assert {"matches", "threshold", "rejected", "best_rejected_score"} <= set(query_schema)


def test_the_document_lists_the_statuses_the_api_answers(
    cooking: FlaskClient, store: KnowledgeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review helper 30: the 409 of a torn document on PATCH and /update, and the 503 of a
    failing store, were answered but not documented (schemathesis checks only what it sends)."""
    spec = cooking.get("/openapi.json").json

    def listed(method: str, path: str, response: TestResponse) -> None:
        assert str(response.status_code) in spec["paths"][path][method]["responses"], path

    long = " ".join([LONG] * 8)  # several chunks at the default size
    assert cooking.post("/add", json={"id": "ice", "text": long}).json["ids"] == ["ice"]
    store.records.delete(["ice#chunk1"])  # as an interrupted write of an older kb left it
    patch = cooking.patch("/documents/ice", json={"metadata": {"checked": True}})
    assert patch.status_code == 409
    listed("patch", "/documents/{doc_id}", patch)
    update = cooking.post("/update", json={"id": "ice", "metadata": {"checked": True}})
    assert update.status_code == 409
    listed("post", "/update", update)
    damaged = cooking.get("/documents/ice")  # and GET refuses to join what is left
    assert (damaged.status_code, damaged.json["error"]["code"]) == (409, "damaged_document")
    listed("get", "/documents/{doc_id}", damaged)

    monkeypatch.setattr(store.records, "_col", _Down())
    for method, path, url in [
        ("get", "/documents/{doc_id}", "/documents/pasta"),
        ("get", "/documents", "/documents"),
        ("get", "/health", "/health"),
    ]:
        response = getattr(cooking, method)(url)
        assert response.status_code == 503, response.json
        listed(method, path, response)
    assert "503" not in spec["paths"]["/openapi.json"]["get"]["responses"]
    assert cooking.get("/openapi.json").status_code == 200  # needs no store

    monkeypatch.undo()
    for method, path, url in [("get", "/stats", "/stats?x=1"), ("post", "/query", "/query?k=5")]:
        response = cooking.open(url, method=method, json={"query": "bread"})
        assert response.status_code == 422, response.json
        listed(method, path, response)
    assert "422" not in spec["paths"]["/health"]["get"]["responses"]  # a probe's parameters pass
    # every route answers 400 to %-escapes that are not UTF-8 (review helper 69)
    for method, path, raw in [  # as a server hands them over (PEP 3333: bytes as latin-1)
        ("get", "/documents/{doc_id}", {"PATH_INFO": "/documents/\xff"}),
        ("delete", "/documents/{doc_id}", {"PATH_INFO": "/documents/\xff"}),
        ("get", "/health", {"PATH_INFO": "/health", "QUERY_STRING": "x=%ff"}),
        ("get", "/stats", {"PATH_INFO": "/stats", "QUERY_STRING": "x=%ff"}),
        ("get", "/info", {"PATH_INFO": "/info", "QUERY_STRING": "x=%ff"}),
    ]:
        response = cooking.open(method=method.upper(), environ_overrides=raw)
        assert response.status_code == 400, (raw, response.json)
        listed(method, path, response)
    assert all("400" in op["responses"] for ops in spec["paths"].values() for op in ops.values())
    # 408 for a body that stops arriving (gunicorn's workers read it as the app asks, with
    # KB_IDLE_TIMEOUT on the socket): every route that reads one lists it
    stalled = cooking.post(
        "/add",
        input_stream=_Stalled(),
        content_type="application/json",
        environ_overrides={"CONTENT_LENGTH": "100"},
    )
    assert stalled.status_code == 408, stalled.json
    assert stalled.json["error"]["details"][0]["field"] == "body"
    listed("post", "/add", stalled)
    for ops in spec["paths"].values():
        assert all(("408" in op["responses"]) == ("requestBody" in op) for op in ops.values())


class _Stalled(io.BytesIO):
    """A request body whose client went quiet: the socket's read timed out."""

    def read(self, size: int | None = -1) -> bytes:
        raise TimeoutError("timed out")

    def readinto(self, buffer: object) -> int:  # type: ignore[override]
        raise TimeoutError("timed out")


class _Down:
    """A Chroma collection whose every call fails, as when its server has gone away (its
    metadata is an attribute read when it was fetched)."""

    metadata = None

    def __getattr__(self, name: str) -> object:
        def fail(*args: object, **kwargs: object) -> None:
            raise RuntimeError("connection refused")

        return fail


def test_listing_filters_are_documented(client: FlaskClient) -> None:
    """`?category=baking` is a metadata filter: the document says so (an exploded object),
    so clients and the fuzz test can send them."""
    (filters,) = [
        param
        for param in client.get("/openapi.json").json["paths"]["/documents"]["get"]["parameters"]
        if param["name"] == "filters"
    ]
    assert (filters["in"], filters["style"], filters["explode"]) == ("query", "form", True)
    assert filters["schema"]["type"] == "object"
    reserved = set(filters["schema"]["propertyNames"]["not"]["enum"])
    named = {param["name"] for param in LIST_PARAMS} - {"filters"}
    assert reserved == named
