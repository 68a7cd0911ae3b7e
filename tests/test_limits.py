"""Every limit is a clear 4xx that names the field, and a refused request changes nothing."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from kb.app import close_app, create_app
from kb.config import Settings
from kb.embeddings import Embedder
from kb.schemas import Info
from tests.conftest import changed

LIMITS = {
    "max_request_bytes": 4096,
    "max_answer_bytes": 1 << 20,
    "max_documents_per_request": 3,
    "max_text_chars": 200,
    "max_top_k": 10,
    "max_queries_per_request": 2,
    "max_query_chars": 100,
    "max_filter_depth": 2,
    "max_filter_conditions": 3,
    "max_filter_values": 3,
    "top_k": 5,
}


@pytest.fixture
def tight(settings: Settings, embedder: Embedder) -> Iterator[Flask]:
    app = create_app(changed(settings, **LIMITS), embedder=embedder)
    yield app
    close_app(app)


@pytest.fixture
def api(tight: Flask) -> FlaskClient:
    client = tight.test_client()
    assert client.post("/add", json={"id": "keep", "text": "A stored note."}).status_code == 201
    return client


def test_info_tells_the_request_limits(api: FlaskClient) -> None:
    """`kb load --url` cuts its batches by them (it used its own settings' values); the
    answer limit, KB_MAX_ANSWER_BYTES, was left out (review helper 91)."""
    limits = api.get("/info").json["limits"]
    assert limits == {
        "max_request_bytes": 4096,
        "max_answer_bytes": 1 << 20,
        "max_documents_per_request": 3,
        "max_text_chars": 200,
        "max_query_chars": 100,
        "max_queries_per_request": 2,
        "max_filter_depth": 2,
        "max_filter_conditions": 3,
        "max_filter_values": 3,
    }


def test_a_client_takes_the_limits_a_service_before_max_answer_bytes_tells(
    api: FlaskClient,
) -> None:
    """`kb load --url` reads /info's limits; one of a service that did not say
    max_answer_bytes failed validation, and the client dropped every limit it did say, so
    its batches were past them (review helper 106)."""
    from kb.cli.data import _with_service_limits

    info = api.get("/info").json
    del info["limits"]["max_answer_bytes"]

    class Older:
        def info(self) -> Info:
            return Info.model_validate(info)

    taken = _with_service_limits(Settings(), Older())  # type: ignore[arg-type]
    assert taken.max_documents_per_request == 3
    assert taken.max_request_bytes == 4096
    assert taken.max_answer_bytes == Settings().max_answer_bytes


def nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"a": 1}
    for _ in range(depth):
        node = {"$or": [node, {"b": 2}]}
    return node


CASES = [
    ("/add", {"text": "x" * 5000}, 413, None),
    ("/add", {"documents": [{"text": f"note {i}"} for i in range(4)]}, 422, "documents"),
    ("/add", {"text": "y" * 201}, 422, "text"),
    ("/add", {"documents": [{"text": "ok"}, {"text": "z" * 201}]}, 422, "documents.1.text"),
    ("/query", {"query": "note", "top_k": 11}, 422, "top_k"),
    ("/query", {"queries": ["a", "b", "c"]}, 422, "queries"),
    ("/query", {"query": "q" * 101}, 422, "query"),
    ("/query", {"queries": ["ok", "q" * 101]}, 422, "queries.1"),
    (
        "/query",
        {"query": "note", "where_document": {"$or": [{"$contains": "n"}] * 4}},
        422,
        "where_document",
    ),
    ("/query", {"query": "note", "where": nested(3)}, 422, "where"),
    ("/query", {"query": "note", "where": {"$and": [{"a": i} for i in range(4)]}}, 422, "where"),
    ("/delete", {"where": nested(3)}, 422, "where"),
    ("/delete", {"where": {"a": {"$nin": [1, 2, 3, 4]}}}, 422, "where.a.$nin"),
    ("/query", {"query": "note", "filters": {"a": ["1", "2", "3", "4"]}}, 422, "filters.a"),
]


@pytest.mark.parametrize(("path", "body", "status", "field"), CASES)
def test_each_limit_is_a_clear_error(
    api: FlaskClient, path: str, body: dict, status: int, field: str | None
) -> None:
    response = api.post(path, json=body)
    assert response.status_code == status, response.json
    error = response.json["error"]
    assert error["message"]
    if field is not None:
        assert any(d["field"].startswith(field) for d in error["details"]), error
    assert api.get("/health").json["documents"] == 1  # nothing was written or deleted
    assert api.get("/documents/keep").status_code == 200


def test_within_the_limits_everything_works(api: FlaskClient) -> None:
    assert api.post("/query", json={"query": "note", "top_k": 10}).status_code == 200
    assert api.post("/query", json={"query": "note", "where": nested(2)}).status_code == 200
    assert api.post("/query", json={"query": "n" * 100}).status_code == 200
    docs = [{"text": f"note {i}"} for i in range(3)]
    assert api.post("/add", json={"documents": docs}).status_code == 201
    # each limit is the most allowed, not the first refused
    at_most = {"id": "limit", "text": "t" * 200, "metadata": {"k" * 128: 1}}
    assert api.post("/add", json=at_most).status_code == 201


@pytest.mark.parametrize("extra", [0, 1, 5000])
def test_a_chunked_body_past_the_limit_is_a_413_not_a_cut_body(
    api: FlaskClient, extra: int
) -> None:
    """A body of unstated length, as gunicorn hands a chunked one over: Werkzeug's read
    stopped quietly at the limit, and the cut JSON was a 400 "not valid JSON"."""
    head, tail = b'{"id": "chunked", "text": "', b'"}'
    fill = LIMITS["max_request_bytes"] - len(head) - len(tail) + extra
    response = api.post(
        "/add",
        input_stream=io.BytesIO(head + b"t" * fill + tail),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    if extra == 0:  # exactly the limit: taken (its text is then too long for this store)
        assert response.json["error"]["details"][0]["field"] == "text", response.json
        return
    assert response.status_code == 413, response.json
    assert response.json["error"]["details"][0]["field"] == "body"
    assert api.get("/health").json["documents"] == 1


def test_a_default_above_its_limit_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="KB_MAX_TOP_K"):
        Settings(top_k=50, max_top_k=10)


INFINITE = '"where": {"minutes": {"$lt": 1e400}}'
TEXT = '"where_document": {"$contains": "note"}'


@pytest.mark.parametrize(
    ("path", "body"),
    [("/delete", f"{{{INFINITE}}}"), ("/query", f'{{"query": "note", {INFINITE}, {TEXT}}}')],
)
def test_a_bound_beyond_floats_is_a_clear_error(api: FlaskClient, path: str, body: str) -> None:
    """1e400 parses as infinity, which Chroma refused as an invalid where clause (a 503)."""
    response = api.post(path, data=body, content_type="application/json")
    assert response.status_code == 422, response.json
    assert response.json["error"]["details"][0]["field"] == "where.minutes.$lt"
    assert api.get("/health").json["documents"] == 1
