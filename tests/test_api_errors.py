"""Bad input: one JSON error shape with the right status, naming the field; nothing changes."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from kb.app import close_app, create_app
from kb.config import Settings
from kb.embeddings import Embedder
from kb.errors import MAX_DETAILS, ValidationFailed
from kb.filters import CompiledFilter
from kb.schemas import MAX_METADATA_BYTES, MAX_METADATA_VALUES, DocumentIn, metadata_bytes
from tests.conftest import changed

NESTED = {"author": {"name": "Ada"}}

BAD_REQUESTS = [
    # (method, path, json body, status, field named in details or message)
    ("post", "/add", {}, 422, "body"),
    ("post", "/add", {"text": ""}, 422, "text"),
    ("post", "/add", {"text": "   "}, 422, "text"),
    ("post", "/add", {"text": "\u200b \ufeff\u2060"}, 422, "text"),
    ("post", "/add", {"text": "\u0000\t\u00a0"}, 422, "text"),
    ("post", "/update", {"id": "pasta", "text": "\u200b"}, 422, "text"),
    ("post", "/add", {"text": 42}, 422, "text"),
    ("post", "/add", {"id": "..", "text": "ok"}, 422, "id"),  # GET /documents/.. is /
    ("post", "/add", {"documents": [{"id": ".", "text": "ok"}]}, 422, "documents.0.id"),
    ("post", "/add", {"text": "ok", "metadata": NESTED}, 422, "metadata"),
    ("post", "/add", {"text": "ok", "metadata": {"_kb_doc": "x"}}, 422, "metadata"),
    ("post", "/add", {"text": "ok", "metadata": {"n": None}}, 422, "metadata"),
    ("post", "/add", {"text": "ok", "metadata": {"l": [1, "a"]}}, 422, "metadata"),
    ("post", "/add", {"text": "ok", "metadata": "flat"}, 422, "metadata"),
    ("post", "/add", {"text": "ok", "id": ""}, 422, "id"),
    ("post", "/add", {"text": "ok", "id": "a#chunk3"}, 422, "id"),
    ("post", "/add", {"text": "ok", "id": " pasta"}, 422, "id"),  # " pasta" beside "pasta"
    ("post", "/add", {"text": "ok", "id": "pasta "}, 422, "id"),
    ("post", "/add", {"text": "ok", "id": "a\x7fb"}, 422, "id"),  # DEL, a control character
    ("post", "/add", {"text": "ok", "metadata": {"chroma:document": "x"}}, 422, "metadata"),
    ("post", "/add", {"text": "ok", "metadata": {"k" * 129: 1}}, 422, "metadata"),
    ("post", "/query", {"query": "x", "where": {"chroma:x": 1}}, 422, "where.chroma:x"),
    ("post", "/add", {"text": "ok", "colour": "red"}, 422, "colour"),
    ("post", "/add", {"documents": []}, 422, "documents"),
    ("post", "/add", {"documents": [{"text": "ok"}, {"txt": "typo"}]}, 422, "documents.1"),
    ("post", "/add", {"documents": [{"text": "a"}], "text": "b"}, 422, "body"),
    ("post", "/add", {"text": "ok", "upsert": "yes"}, 422, "upsert"),
    ("post", "/query", {}, 422, "body"),
    ("post", "/query", {"query": ""}, 422, "query"),
    ("post", "/query", {"query": 5}, 422, "query"),
    ("post", "/query", {"query": "x", "queries": ["y"]}, 422, "body"),
    ("post", "/query", {"queries": ["ok", " "]}, 422, "queries.1"),
    # invisible only (a zero-width space, a BOM): refused as in a text (review helper 99)
    ("post", "/query", {"query": "\u200b"}, 422, "query"),
    ("post", "/query", {"queries": ["ok", "\ufeff\u200b "]}, 422, "queries.1"),
    ("post", "/query", {"query": "x", "top_k": 0}, 422, "top_k"),
    ("post", "/query", {"query": "x", "top_k": 101}, 422, "top_k"),
    ("post", "/query", {"query": "x", "top_k": "5"}, 422, "top_k"),
    ("post", "/query", {"query": "x", "min_score": 1.5}, 422, "min_score"),
    ("post", "/query", {"query": "x", "min_score": -1.01}, 422, "min_score"),
    ("post", "/query", {"query": "x", "where": {"a": {"$like": 1}}}, 422, "where.a.$like"),
    ("post", "/query", {"query": "x", "where": {"$xor": []}}, 422, "where.$xor"),
    (
        "post",
        "/query",
        {"query": "x", "where": {"date": {"$gte": "last week"}}},
        422,
        "where.date.$gte",
    ),
    (
        "post",
        "/query",
        {"query": "x", "where": {"date": {"$gte": "2024-13-45"}}},
        422,
        "where.date.$gte",
    ),
    ("post", "/query", {"query": "x", "where": {"a": {"$in": []}}}, 422, "where.a.$in"),
    ("post", "/query", {"query": "x", "where": {"a": [1, 2]}}, 422, "where.a"),
    ("post", "/query", {"query": "x", "where": {"$and": [{"a": 1}, "b"]}}, 422, "where.$and.1"),
    ("post", "/query", {"query": "x", "where": {}}, 422, "where"),
    ("post", "/query", {"query": "x", "filters": {"a": {"b": 1}}}, 422, "filters.a"),
    ("post", "/query", {"query": "x", "where_document": {"$has": "y"}}, 422, "where_document.$has"),
    (
        "post",
        "/query",
        {"query": "x", "where_document": {"$contains": ""}},
        422,
        "where_document.$contains",
    ),
    ("post", "/query", {"query": "x", "lambda": 2}, 422, "lambda"),
    ("post", "/query", {"query": "x", "mode": "fuzzy"}, 422, "mode"),
    ("post", "/query", {"query": "x", "fusion": "max"}, 422, "fusion"),
    ("post", "/add", {"text": "ok", "on_duplicate": "maybe"}, 422, "on_duplicate"),
    ("post", "/delete", {}, 422, "body"),
    ("post", "/delete", {"where": {}}, 422, "body"),
    ("post", "/delete", {"ids": []}, 422, "ids"),
    ("post", "/delete", {"ids": ["a"], "where": {"b": 1}}, 422, "body"),
    ("post", "/delete", {"where": {"a": {"$bad": 1}}}, 422, "where.a.$bad"),
    ("post", "/update", {"text": "no id"}, 422, "id"),
    ("post", "/update", {"id": "pasta"}, 422, "body"),
    ("post", "/update", {"id": "pasta", "metadata": NESTED}, 422, "metadata"),
    ("patch", "/documents/pasta", {"text": ""}, 422, "text"),
    ("patch", "/documents/pasta", {}, 422, "body"),
    # Lone surrogates: JSON's "\ud800" escapes parse, but no UTF-8 encoder takes them.
    ("post", "/add", {"text": "lone \ud800"}, 422, "text"),
    ("post", "/add", {"text": "ok", "id": "s\ud800"}, 422, "id"),
    ("post", "/add", {"text": "ok", "metadata": {"k\ud800": "v"}}, 422, "metadata"),
    ("post", "/add", {"text": "ok", "metadata": {"k": ["v", "\udc00"]}}, 422, "metadata.k.1"),
    ("post", "/add", {"documents": [{"text": "ok"}, {"text": "\udfff"}]}, 422, "documents.1.text"),
    ("post", "/query", {"query": "lone \ud800"}, 422, "query"),
    ("post", "/query", {"queries": ["ok", "\ud800"]}, 422, "queries.1"),
    ("post", "/query", {"query": "x", "filters": {"k": "\ud800"}}, 422, "filters.k"),
    ("post", "/query", {"query": "x", "where": {"a": "\ud800"}}, 422, "where.a"),
    (
        "post",
        "/query",
        {"query": "x", "where_document": {"$contains": "\ud800"}},
        422,
        "where_document.$contains",
    ),
    ("post", "/update", {"id": "pasta", "text": "t \ud800"}, 422, "text"),
    ("post", "/update", {"id": "pasta", "metadata": {"a": "\ud800"}}, 422, "metadata.a"),
    ("post", "/delete", {"ids": ["pasta", "\ud800"]}, 422, "ids.1"),
    ("patch", "/documents/pasta", {"text": "\ud800"}, 422, "text"),
    # options that would change nothing: refused, not ignored
    ("post", "/add", {"text": "x", "upsert": False, "on_conflict": "upsert"}, 422, "body"),
    ("post", "/update", {"id": "pasta", "text": "t", "replace_metadata": True}, 422, "body"),
    ("patch", "/documents/pasta", {"text": "t", "replace_metadata": True}, 422, "body"),
    ("post", "/query", {"query": "x", "lambda": 0.3}, 422, "body"),
    ("post", "/query", {"query": "x", "mode": "dense", "fusion": "rrf"}, 422, "body"),
]


def assert_error_shape(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json, response.get_data(as_text=True)
    error = response.json["error"]
    assert set(error) == {"code", "message", "details"}
    assert isinstance(error["code"], str)
    assert error["code"]
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["details"], list)
    return error


@pytest.mark.parametrize(("method", "path", "body", "status", "field"), BAD_REQUESTS)
def test_bad_input_is_a_clear_json_error_and_changes_nothing(
    cooking: FlaskClient, method: str, path: str, body: Any, status: int, field: str
) -> None:
    before = cooking.get("/documents?limit=100").json
    response = getattr(cooking, method)(path, json=body)
    error = assert_error_shape(response, status)
    named = [detail.get("field", "") for detail in error["details"]]
    assert any(name.startswith(field) for name in named) or field in error["message"], error
    assert cooking.get("/documents?limit=100").json == before


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/add", {"text": "ok", "metadata": {"scores": [1, 2.5]}}, "metadata"),
        (
            "/add",
            {"documents": [{"text": "a"}, {"text": "b", "metadata": {"scores": [2.5, 1]}}]},
            "documents.1.metadata",
        ),
        ("/update", {"id": "pasta", "metadata": {"scores": [3, 0.5]}}, "metadata"),
    ],
)
def test_a_list_mixing_integers_and_decimals_is_refused_naming_the_key(
    cooking: FlaskClient, path: str, body: Any, field: str
) -> None:
    """Chroma refuses [1, 2.5]: kb says so itself, naming the key, before the store is
    asked (which would fail the whole batch)."""
    before = cooking.get("/documents?limit=100").json
    error = assert_error_shape(cooking.post(path, json=body), 422)
    (detail,) = error["details"]
    assert detail["field"].startswith(field), error
    assert "'scores'" in error["message"]
    assert "integers or all decimals" in error["message"]
    assert cooking.get("/documents?limit=100").json == before


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/add"),
        ("post", "/query"),
        ("post", "/delete"),
        ("post", "/update"),
        ("patch", "/documents/pasta"),
    ],
)
def test_malformed_json_is_400_on_every_body_route(
    cooking: FlaskClient, method: str, path: str
) -> None:
    for raw in (b'{"text": "unterminated', b"", b"NaN", b'{"query": NaN}'):
        response = getattr(cooking, method)(path, data=raw, content_type="application/json")
        error = assert_error_shape(response, 400)
        assert "JSON" in error["message"]
    response = getattr(cooking, method)(path, json=["not", "an", "object"])
    assert_error_shape(response, 422)


@pytest.mark.parametrize(
    ("method", "path", "raw", "key"),
    [
        ("post", "/delete", '{"ids": ["pasta"], "ids": ["no-such-id"]}', "ids"),
        ("post", "/add", '{"text": "first", "text": "second"}', "text"),
        ("post", "/add", '{"documents": [{"text": "a", "metadata": {"k": 1, "k": 2}}]}', "k"),
        ("post", "/query", '{"query": "x", "where": {"a": 1, "a": 2}}', "a"),
        ("patch", "/documents/pasta", '{"text": "new", "text": "newer"}', "text"),
    ],
)
def test_a_key_given_twice_is_422_naming_it_and_changes_nothing(
    cooking: FlaskClient, method: str, path: str, raw: str, key: str
) -> None:
    """json.loads keeps the last value: a delete's first ids were dropped, silently."""
    before = cooking.get("/documents?limit=100").json
    response = getattr(cooking, method)(path, data=raw, content_type="application/json")
    error = assert_error_shape(response, 422)
    assert f"key '{key}' is given twice in one object" in error["message"]
    assert error["details"][0]["field"] == "body"
    assert cooking.get("/documents?limit=100").json == before


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ({"where": "null"}, "where", "must be a JSON object (got null)"),
        ({"where": "[1]"}, "where", "must be a JSON object (got an array)"),
        ({"": "1"}, "query string", "a parameter without a name"),
        ({"where": '{"a": ' + "9" * 5000 + "}"}, "where", "more than 4300 digits"),
        # /query's text filter, read as a metadata key: an empty listing, 200 (review
        # helper 100)
        ({"where_document": '{"$contains": "pasta"}'}, "where_document", "metadata only"),
    ],
)
def test_a_listing_parameter_that_is_no_filter_is_422_naming_it(
    cooking: FlaskClient, query: dict[str, str], field: str, message: str
) -> None:
    """?where=null listed every document; ?=1 was the metadata key ''."""
    error = assert_error_shape(cooking.get("/documents", query_string=query), 422)
    assert error["details"][0]["field"] == field
    assert message in error["message"]


def test_bad_json_names_the_body_and_a_huge_number_says_what_is_wrong(cooking) -> None:
    raw = '{"query": "x", "top_k": ' + "9" * 5000 + "}"
    error = assert_error_shape(
        cooking.post("/query", data=raw, content_type="application/json"), 422
    )
    assert error["message"] == "body: holds an integer of more than 4300 digits"
    assert "sys.set_int_max_str_digits" not in error["message"]
    response = cooking.post("/query", data='{"query": ', content_type="application/json")
    assert assert_error_shape(response, 400)["details"][0]["field"] == "body"


def nested_and(levels: int, leaf: str = '{"a": 1}') -> str:
    return '{"$and": [' * levels + leaf + "]}" * levels


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/add", "[" * 100_000 + "]" * 100_000),
        ("/add", '{"text": "x", "metadata": {"a": ' + "[" * 2000 + "]" * 2000 + "}}"),
        ("/add", '{"text": "x", "metadata": {"a": ' + "[" * 300 + "]" * 300 + "}}"),
        ("/query", '{"query": "x", "where": ' + nested_and(500) + "}"),
        ("/query", '{"query": "x", "filters": {"a": ' + '{"b": ' * 2000 + "1" + "}" * 2000 + "}}"),
        ("/delete", '{"where": ' + nested_and(3000) + "}"),
    ],
)
def test_json_nested_too_deep_is_422_naming_the_body(
    cooking: FlaskClient, path: str, raw: str
) -> None:
    """json.loads recurses once per level: thousands of levels were a RecursionError (500)."""
    before = cooking.get("/documents?limit=100").json
    response = cooking.post(path, data=raw, content_type="application/json")
    error = assert_error_shape(response, 422)
    assert error["details"][0]["field"] == "body"
    assert "deeper than 200 levels" in error["message"]
    assert cooking.get("/documents?limit=100").json == before


@pytest.mark.parametrize(
    ("where", "field", "message"),
    [
        (nested_and(3000), "where", "deeper than 200 levels"),
        (nested_and(150), "where", "deeper than 200 levels"),
        (nested_and(20), "where.$and.0", "nest at most 8 levels"),
        ('{"a": "\\ud800"}', "where.a", "lone UTF-16 surrogate (\\ud800)"),
        ('{"$or": [{"a": 1}, {"b\\udc00": 2}]}', "where.$or.1", "key 'b\\udc00'"),
        ('{"a": 1, "a": 2}', "where", "key 'a' is given twice in one object"),
    ],
)
def test_where_parameter_too_deep_with_a_surrogate_or_a_key_twice_is_422_naming_it(
    cooking: FlaskClient, where: str, field: str, message: str
) -> None:
    response = cooking.get("/documents", query_string={"where": where})
    error = assert_error_shape(response, 422)
    assert error["details"][0]["field"].startswith(field), error
    assert message in error["message"]


def test_the_deepest_filter_settings_allow_is_refused_by_the_filter_limit(
    settings, embedder
) -> None:
    """The JSON bound sits past KB_MAX_FILTER_DEPTH's maximum, so a filter one level too deep
    is told the filter's limit, not a generic nesting error."""
    from kb.app import close_app, create_app
    from kb.config import Settings

    rules = Settings.model_fields["max_filter_depth"].metadata
    deepest = next(rule.le for rule in rules if hasattr(rule, "le"))
    app = create_app(settings.model_copy(update={"max_filter_depth": deepest}), embedder=embedder)
    try:
        raw = '{"query": "x", "where": ' + nested_and(deepest + 1, '{"a": {"$in": [1]}}') + "}"
        response = app.test_client().post("/query", data=raw, content_type="application/json")
        error = assert_error_shape(response, 422)
        assert f"nest at most {deepest} levels" in error["message"]
    finally:
        close_app(app)


def test_oversize_request_is_413(settings, embedder) -> None:
    from kb.app import close_app, create_app

    app = create_app(settings.model_copy(update={"max_request_bytes": 2048}), embedder=embedder)
    try:
        response = app.test_client().post("/add", json={"text": "x" * 5000})
        error = assert_error_shape(response, 413)
        assert error["code"] == "payload_too_large"
        assert "2048" in error["message"]
        assert [d["field"] for d in error["details"]] == ["body"]  # as every limit names one
    finally:
        close_app(app)


def test_text_and_batch_limits_are_422(settings, embedder) -> None:
    from kb.app import close_app, create_app

    limited = settings.model_copy(
        update={"max_text_chars": 50, "max_documents_per_request": 2, "max_queries_per_request": 2}
    )
    app = create_app(limited, embedder=embedder)
    try:
        client = app.test_client()
        long = assert_error_shape(client.post("/add", json={"text": "y" * 51}), 422)
        assert long["details"][0]["field"] == "text"
        assert (
            "text has 51 characters; at most 50 (KB_MAX_TEXT_CHARS)"
            in (long["details"][0]["message"])
        )
        docs = [{"text": f"doc {i}"} for i in range(3)]
        assert_error_shape(client.post("/add", json={"documents": docs}), 422)
        assert_error_shape(client.post("/query", json={"queries": ["a", "b", "c"]}), 422)
        assert client.get("/health").json["documents"] == 0
    finally:
        close_app(app)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("get", "/documents/ghost", 404),
        ("delete", "/documents/ghost", 404),
        ("patch", "/documents/ghost", 404),
        ("get", "/no-such-route", 404),
        ("get", "/add", 405),
        ("put", "/query", 405),
        ("get", "/documents?limit=0", 422),
        ("get", "/documents?offset=-1", 422),
        ("get", "/documents?limit=abc", 422),
        ("get", "/documents?limit=1_0", 422),
        ("get", "/documents?limit=%201", 422),
        ("get", "/documents?offset=1.0", 422),
        ("get", "/documents?where=%7Bnot-json", 422),
        ("get", "/documents?where=%7B%22a%22%3A%7B%22%24zz%22%3A1%7D%7D", 422),
    ],
)
def test_error_shape_on_path_and_query_errors(
    cooking: FlaskClient, method: str, path: str, status: int
) -> None:
    kwargs = {"json": {"text": "x"}} if method == "patch" else {}
    assert_error_shape(getattr(cooking, method)(path, **kwargs), status)


@pytest.mark.parametrize(
    "flt",
    [
        CompiledFilter(where={"minutes": {"$lt": float("inf")}}),
        CompiledFilter(where_document={"$regex": "(?<!x)a"}),
    ],
)
def test_a_filter_chroma_refuses_is_a_validation_error(store, flt: CompiledFilter) -> None:
    """Past kb's own checks (built here directly), Chroma's InvalidArgumentError is a 422
    saying what the store refused, not a 503 "store unavailable"."""
    with pytest.raises(ValidationFailed, match="the store rejected the request"):
        store.records.ids(flt)


def test_metadata_of_more_values_than_a_document_may_hold_is_refused(client: FlaskClient) -> None:
    """Chroma failed the compaction of a record of more than 5,461 metadata entries, and
    with it every later write and read of the collection, after a restart too (review
    helper 26): kb refuses such metadata, on add and on a patch that would grow it."""
    tags = [f"t{i}" for i in range(MAX_METADATA_VALUES)]
    full = {"id": "full", "text": "Many tags.", "metadata": {"tags": tags}}
    assert client.post("/add", json=full).status_code == 201
    over = {"id": "over", "text": "Too many.", "metadata": {"tags": tags, "one": 1}}
    for response in (
        client.post("/add", json=over),
        client.post("/add", json={"documents": [{"text": "Fine."}, over]}),
        client.patch("/documents/full", json={"metadata": {"one": 1}}),
    ):
        assert response.status_code == 422, response.json
        (detail,) = response.json["error"]["details"]
        assert detail["field"].endswith("metadata"), detail
        assert f"{MAX_METADATA_VALUES:,}" in detail["message"]
    assert client.get("/documents/full").json["metadata"] == {"tags": tags}
    assert client.get("/documents").json["total"] == 1
    # at the cap, every value a date: each has a twin, and the record is still in bounds
    dates = {f"d{i:04d}": "2024-01-01" for i in range(MAX_METADATA_VALUES)}
    dated = {"id": "dated", "text": "Dated.", "metadata": dates}
    assert client.post("/add", json=dated).status_code == 201
    assert client.get("/documents/dated").json["metadata"] == dates
    assert client.post("/add", json={"id": "after", "text": "Still writable."}).status_code == 201


def test_a_document_stored_before_the_metadata_cap_can_be_updated_without_growing(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A text-only update, or a patch removing a key, was refused (review helper 29)."""
    monkeypatch.setattr("kb.schemas.MAX_METADATA_VALUES", 10**6)  # as before the cap
    big = {"tags": [f"t{i}" for i in range(MAX_METADATA_VALUES + 1)], "a": 1, "b": 2}
    assert (
        client.post("/add", json={"id": "old", "text": "Old.", "metadata": big}).status_code == 201
    )
    monkeypatch.setattr("kb.schemas.MAX_METADATA_VALUES", MAX_METADATA_VALUES)
    assert client.post("/update", json={"id": "old", "text": "Rewritten."}).status_code == 200
    assert client.patch("/documents/old", json={"metadata": {"a": None}}).status_code == 200
    grown = client.patch("/documents/old", json={"metadata": {"c": 3}})
    assert grown.status_code == 422, grown.json
    stored = client.get("/documents/old").json
    assert (stored["text"], stored["metadata"]) == ("Rewritten.", {"b": 2, "tags": big["tags"]})


def test_metadata_larger_than_a_document_may_hold_is_refused(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every chunk carries its document's metadata: one request of about 1 MB (a 1 MB value
    on a text of 108 chunks) took 434 MB of disk (review helper 62). A document's metadata
    is capped as JSON bytes, on add, on a patch that grows it, and in a load's records; a
    document stored before the cap keeps its metadata and may shrink it."""
    text = " ".join(f"Sentence {i} of a long report on storage." for i in range(200))
    at_cap = {"summary": "x" * (MAX_METADATA_BYTES - len('{"summary": ""}'))}
    assert metadata_bytes(at_cap) == MAX_METADATA_BYTES
    doc = {"id": "full", "text": text, "metadata": at_cap}
    assert client.post("/add", json=doc).status_code == 201
    over = {"id": "over", "text": text, "metadata": {**at_cap, "more": "é"}}
    for response in (
        client.post("/add", json=over),
        client.post("/add", json={"documents": [{"text": "Fine."}, over]}),
        client.patch("/documents/full", json={"metadata": {"one": 1}}),
        client.post("/update", json={"id": "full", "metadata": {"a": "b"}}),
    ):
        assert response.status_code == 422, response.json
        (detail,) = response.json["error"]["details"]
        assert detail["field"].endswith("metadata"), detail
        assert f"at most {MAX_METADATA_BYTES:,}" in detail["message"]
    assert client.get("/documents/full").json["metadata"] == at_cap
    assert client.get("/documents").json["total"] == 1
    monkeypatch.setattr("kb.schemas.MAX_METADATA_BYTES", 10**9)  # as before the cap
    big = {"summary": "y" * (2 * MAX_METADATA_BYTES), "a": 1}
    assert (
        client.post("/add", json={"id": "old", "text": "Old.", "metadata": big}).status_code == 201
    )
    monkeypatch.setattr("kb.schemas.MAX_METADATA_BYTES", MAX_METADATA_BYTES)
    assert client.post("/update", json={"id": "old", "text": "Rewritten."}).status_code == 200
    assert client.patch("/documents/old", json={"metadata": {"a": None}}).status_code == 200
    assert client.patch("/documents/old", json={"metadata": {"c": 3}}).status_code == 422
    assert client.get("/documents/old").json["metadata"] == {"summary": big["summary"]}


def test_an_id_too_long_or_not_a_string_says_what_to_write(client: FlaskClient) -> None:
    long = client.post("/add", json={"id": "x" * 513, "text": "A note."}).json["error"]
    assert "at most 512 characters" in long["details"][0]["message"]
    number = client.post("/add", json={"id": 42, "text": "A note."}).json["error"]
    assert 'id must be a string (write "42")' in number["details"][0]["message"]


@pytest.mark.parametrize("char", ["\x85", "\x9b", "\u2028", "\u2029"])
def test_a_new_id_may_not_hold_a_c1_control_or_a_line_separator(
    client: FlaskClient, store, char: str
) -> None:
    """U+0085 and U+2028 were taken: `kb duplicates`' one group a line then read as several
    lines to a Unicode-aware reader. One an older kb stored stays readable and deletable."""
    doc_id = f"one{char}two"
    for body, field in [
        ({"id": doc_id, "text": "A note."}, "id"),
        ({"documents": [{"id": "fine", "text": "A."}, {"id": doc_id, "text": "B."}]},
         "documents.1.id"),
    ]:  # fmt: skip
        error = client.post("/add", json=body).json["error"]
        assert error["details"][0]["field"] == field
        assert "control characters or line separators" in error["details"][0]["message"]
    assert client.get("/documents").json["documents"] == []
    assert client.post("/add", json={"id": "café ☕ 2", "text": "Still fine."}).status_code == 201
    store.add([DocumentIn.model_construct(id=doc_id, text="Stored by an older kb.")])
    assert client.post("/update", json={"id": doc_id, "metadata": {"k": 1}}).status_code == 200
    assert client.post("/delete", json={"ids": [doc_id]}).json["ids"] == [doc_id]


@pytest.mark.parametrize(
    "content_type", ["text/plain;charset=UTF-8", "application/x-www-form-urlencoded", None]
)
def test_a_body_not_sent_as_json_is_refused(client: FlaskClient, content_type: str | None) -> None:
    """A browser sends text/plain and forms from any web page without asking first: taken
    as JSON, a page could add to or delete from a keyless service on localhost (review
    helper 30)."""
    assert client.post("/add", json={"id": "kept", "text": "Stays."}).status_code == 201
    headers = {"Content-Type": content_type} if content_type else {}
    for path, body in (
        ("/delete", '{"where": {"k": {"$ne": "zz"}}}'),
        ("/delete", '{"ids": ["kept"]}'),
        ("/add", '{"id": "planted", "text": "Planted."}'),
    ):
        response = client.post(path, data=body, headers=headers)
        assert response.status_code == 415, response.json
        (detail,) = response.json["error"]["details"]
        assert detail["field"] == "Content-Type"
    assert [d["id"] for d in client.get("/documents").json["documents"]] == ["kept"]
    patch = client.patch(
        "/documents/kept",
        data='{"metadata": {"k": 1}}',
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert patch.status_code == 200, patch.json


def test_a_null_metadata_value_says_to_leave_the_key_out(cooking: FlaskClient) -> None:
    """It said "nested objects are not supported", beside the point for a null."""
    error = assert_error_shape(
        cooking.post("/add", json={"text": "t", "metadata": {"a": None}}), 422
    )
    assert error["details"][0]["field"] == "metadata"
    assert "metadata 'a': values must be" in error["message"]
    assert "got null; leave the key out" in error["message"]
    assert "nested" not in error["message"]


def test_fusion_with_a_default_mode_that_is_not_hybrid_is_refused(
    settings: Settings, embedder: Embedder
) -> None:
    """Only the request's own mode was checked: with KB_SEARCH_MODE=keyword, a request
    without a mode took its `fusion` and ignored it (review helper 73)."""
    app = create_app(changed(settings, search_mode="keyword"), embedder=embedder)
    try:
        client = app.test_client()
        response = client.post("/query", json={"query": "dropout", "fusion": "rrf"})
        error = assert_error_shape(response, 422)
        assert error["message"] == (
            "fusion: applies only to hybrid search, not mode 'keyword' (KB_SEARCH_MODE)"
        )
        assert [detail["field"] for detail in error["details"]] == ["fusion"]
        hybrid = {"query": "dropout", "fusion": "rrf", "mode": "hybrid"}
        assert client.post("/query", json=hybrid).status_code == 200
    finally:
        close_app(app)


def test_an_error_of_many_problems_stays_small(cooking: FlaskClient) -> None:
    """One detail per unknown field and per item of a list past its limit: a 15 MiB body of
    1.3 million made as many details, a reply of 109 MB and 2.4 GB of the service's memory;
    a delete naming a million unknown ids replied 75 MB (review helper 80)."""
    stored = cooking.get("/health").json["documents"]
    fields = {f"k{i}": 0 for i in range(50_000)}
    unknown = assert_error_shape(cooking.post("/query", json={"query": "rice", **fields}), 422)
    assert len(unknown["details"]) == 1
    assert "50,000 unknown fields: 'k0', 'k1', 'k2'" in unknown["message"]
    assert "and 49,990 more" in unknown["message"]
    # ten in each of many documents, each under the one-object count, are one too (100,000
    # details for 10,000 documents, 3.1 s and 108 MB a request: review helper 86)
    documents = [{"text": "x", **{f"k{i}": 0 for i in range(10)}}] * 1000
    each = assert_error_shape(cooking.post("/add", json={"documents": documents}), 422)
    assert [d["field"] for d in each["details"]] == ["documents"]
    assert "10,000 unknown fields: '0.k0', '0.k1'" in each["message"]
    few = assert_error_shape(cooking.post("/add", json={"text": "x", "tag": 1}), 422)
    assert [d["field"] for d in few["details"]] == ["tag"]  # a few are named one by one
    many = assert_error_shape(cooking.post("/delete", json={"ids": [1] * 20_000}), 422)
    assert [d["field"] for d in many["details"]] == ["ids"]
    assert "at most 10,000 ids per request (KB_MAX_DOCUMENTS_PER_REQUEST)" in many["message"]
    gone = [f"gone-{i}" for i in range(5000)]
    missing = assert_error_shape(cooking.post("/delete", json={"ids": gone}), 404)
    assert len(missing["details"]) == MAX_DETAILS
    assert missing["details"][-1]["field"] == f"ids.{MAX_DETAILS - 1}"
    assert missing["message"].startswith("5000 id(s) not found")
    bad = assert_error_shape(cooking.post("/add", json={"documents": [{"text": 1}] * 5000}), 422)
    assert len(bad["details"]) == MAX_DETAILS
    assert bad["message"].endswith("(and 4999 more)")
    assert cooking.get("/health").json["documents"] == stored  # and nothing changed


@pytest.mark.parametrize(
    ("text", "refused"),
    [("a" * 49_998, False), ("a" * 49_999, True), ("%" * 24_999, False), ("_" * 25_000, True)],
)
def test_a_substring_longer_than_sqlite_takes_is_422_not_the_stores_503(
    client: FlaskClient, text: str, refused: bool
) -> None:
    """Chroma tests $contains as LIKE '%text%' (%, _ and \\ escaped), and SQLite refuses a
    pattern past 50,000 bytes: "LIKE or GLOB pattern too complex", a 503 (review helper 80).
    Texts of 300 characters are kept compressed, so the filter is Chroma's to apply."""
    paragraphs = [{"text": f"{i} " + "a long paragraph of words " * 12} for i in range(3)]
    assert client.post("/add", json={"documents": paragraphs}).status_code == 201
    for op in ("$contains", "$not_contains"):
        body = {"query": "paragraph", "where_document": {op: text}}
        response = client.post("/query", json=body)
        if refused:
            error = assert_error_shape(response, 422)
            assert error["details"][0]["field"] == f"where_document.{op}"
            assert "SQLite's limit" in error["message"]
        else:
            assert response.status_code == 200, response.json
