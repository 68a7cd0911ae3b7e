"""A /query answer is bounded: a text asked twice in a batch is searched once, and an answer
past KB_MAX_ANSWER_BYTES is a 422 raised as it is assembled (review helper 80: 64 copies of
one query at top_k 100 over 12 KB texts answered 77 MB, with a read key alone)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

import kb.search
import kb.shown
from kb.app import close_app, create_app
from kb.config import Settings
from kb.embeddings import Embedder
from kb.errors import ValidationFailed
from kb.store import KnowledgeStore
from tests.conftest import changed

CAP = 4096
TOPICS = ["bread", "pasta", "soup", "cake", "rice", "salad", "stew", "pie"]
# eight documents of about 250 characters: one query at top_k 8 answers about 2.5 KB of them
DOCUMENTS = [
    {
        "id": topic,
        "text": f"How to cook {topic} at home. " + f"Notes on {topic}, step by step. " * 8,
        "metadata": {"topic": topic},
    }
    for topic in TOPICS
]
EVERYTHING = {"min_score": -1.0}  # every document a match


@pytest.fixture
def capped(settings: Settings, embedder: Embedder) -> Iterator[Flask]:
    app = create_app(changed(settings, max_answer_bytes=CAP), embedder=embedder)
    client = app.test_client()
    assert client.post("/add", json={"documents": DOCUMENTS}).status_code == 201
    yield app
    close_app(app)


@pytest.fixture
def api(capped: Flask) -> FlaskClient:
    return capped.test_client()


def answer_size(results: list[dict[str, Any]]) -> int:
    """The bytes KB_MAX_ANSWER_BYTES counts: queries, and the matches' ids, texts, passages
    and metadata, as JSON."""
    parts = [r["query"] for r in results]
    for result in results:
        for match in result["matches"] + (result["near_misses"] or []):
            parts += [match["id"], match["text"], match["metadata"], match["passage"]]
    return sum(len(json.dumps(part)) for part in parts if part is not None)


def test_a_text_asked_twice_in_a_batch_is_searched_once(
    api: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    searched: list[list[str]] = []
    ranked = kb.search._ranked

    def spy(asked: Any, top_k: int) -> Any:
        searched.append(list(asked.texts))
        return ranked(asked, top_k)

    monkeypatch.setattr(kb.search, "_ranked", spy)
    queries = ["baking bread", "a pot of soup", "baking bread", "baking bread"]
    response = api.post("/query", json={"queries": queries, "top_k": 2})
    assert response.status_code == 200, response.json
    assert searched == [["baking bread", "a pot of soup"]]
    results = response.json["results"]
    assert [r["query"] for r in results] == queries  # one result each, in the order asked
    assert results[0] == results[2] == results[3]
    alone = api.post("/query", json={"query": "baking bread", "top_k": 2}).json
    assert results[0] == alone


def test_an_answer_within_the_cap_is_whole_and_one_past_it_a_422(api: FlaskClient) -> None:
    one = api.post("/query", json={"query": "cooking at home", "top_k": 8, **EVERYTHING})
    assert one.status_code == 200, one.json
    size = answer_size([one.json])
    assert len(one.json["matches"]) == 8
    assert CAP // 2 < size <= CAP  # so two copies are past the cap
    twice = {"queries": ["cooking at home"] * 2, "top_k": 8, **EVERYTHING}
    refused = api.post("/query", json=twice)
    assert refused.status_code == 422, refused.json
    error = refused.json["error"]
    assert error["code"] == "answer_too_large"
    assert "KB_MAX_ANSWER_BYTES" in error["message"]
    assert f"{CAP:,}" in error["message"]
    assert [d["field"] for d in error["details"]] == ["queries", "top_k"]
    assert "2 queries (1 different)" in error["details"][0]["message"]
    # fewer matches a query fit
    half = api.post("/query", json={**twice, "top_k": 4})
    assert half.status_code == 200, half.json
    assert answer_size(half.json["results"]) <= CAP


def test_near_misses_count_and_the_error_names_explain(api: FlaskClient) -> None:
    body = {"queries": ["cooking at home"] * 3, "top_k": 6, "min_score": 0.99}
    unexplained = api.post("/query", json=body)
    assert unexplained.status_code == 200, unexplained.json  # nothing passes: no text shown
    assert all(not r["matches"] for r in unexplained.json["results"])
    refused = api.post("/query", json={**body, "explain": True})  # six near misses each
    assert refused.status_code == 422, refused.json
    fields = [d["field"] for d in refused.json["error"]["details"]]
    assert fields == ["queries", "top_k", "explain"]
    assert "no explain" in refused.json["error"]["message"]


def test_one_query_past_the_cap_is_told_to_ask_for_fewer_matches(api: FlaskClient) -> None:
    long = {"id": "long", "text": "Slow-cooked stew, hour by hour. " * 160, "metadata": {}}
    assert api.post("/add", json=long).status_code == 201
    refused = api.post("/query", json={"query": "slow-cooked stew", "top_k": 1})
    assert refused.status_code == 422, refused.json
    error = refused.json["error"]
    assert [d["field"] for d in error["details"]] == ["top_k"]
    assert error["message"].endswith("ask for a smaller top_k")
    stored = api.get("/documents/long")
    assert stored.status_code == 200
    assert stored.json["text"] == long["text"]


def test_non_ascii_texts_count_as_the_answer_writes_them(api: FlaskClient) -> None:
    """The service writes JSON with \\u escapes: a character past ASCII takes six bytes, and
    the cap counts them so (a count of characters would pass four copies here)."""
    text = "Pâté épicé à l'échalote. " * 20
    pate = {"id": "pate", "text": text, "metadata": {"topic": "pâté"}}
    assert api.post("/add", json=pate).status_code == 201
    body = {"top_k": 1, "filters": {"topic": "pâté"}, **EVERYTHING}
    one = api.post("/query", json={"query": "a spiced pâté", **body})
    assert [m["id"] for m in one.json["matches"]] == ["pate"]
    assert one.json["matches"][0]["passage"] is None  # one chunk: the text is counted once
    size = answer_size([one.json])
    assert 3 * size <= CAP < 4 * size
    assert 4 * len(text) < CAP
    thrice = api.post("/query", json={"queries": ["a spiced pâté"] * 3, **body})
    assert thrice.status_code == 200, thrice.json
    assert answer_size(thrice.json["results"]) == 3 * size
    four = api.post("/query", json={"queries": ["a spiced pâté"] * 4, **body})
    assert four.status_code == 422, four.json


def test_whole_documents_are_read_a_slice_at_a_time_and_refused_early(
    settings: Settings, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunked matches are shown whole: their documents are read a slice a call and counted
    as they come, so an answer past the cap is refused before the rest is read."""
    app = create_app(
        changed(settings, max_answer_bytes=CAP, chunk_tokens=16, chunk_overlap=2),
        embedder=embedder,
    )
    try:
        client = app.test_client()
        assert client.post("/add", json={"documents": DOCUMENTS}).status_code == 201
        store: KnowledgeStore = app.extensions["kb"].store
        assert store.get("bread").chunks > 1
        read: list[list[str]] = []
        documents_of = store.documents_of

        def spy(records: Any) -> Any:
            read.append([r.doc_id for r in records])
            return documents_of(records)

        monkeypatch.setattr(store, "documents_of", spy)
        monkeypatch.setattr(kb.shown, "FETCH_SLICE", 1)
        body = {"queries": ["cooking at home"] * 3, "top_k": 8, **EVERYTHING}
        refused = client.post("/query", json=body)
        assert refused.status_code == 422, refused.json
        # each document is counted three times (~750 characters): the sixth is past 4,096
        assert len(read) == 6
        assert all(len(part) == 1 for part in read)
    finally:
        close_app(app)


def test_text_past_ascii_is_measured_exactly_only_near_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """json measured every part past ASCII as the service writes it: ~38 us a 10 kB text, on
    every answer of a non-Latin corpus (review helper 97). Far from the limit a bound does;
    near it, the exact size decides, as before."""
    import kb.answer_budget as budgets

    measured: list[object] = []
    exact = budgets.json_bytes

    def spied(value: object) -> int:
        measured.append(value)
        return exact(value)

    monkeypatch.setattr(budgets, "json_bytes", spied)
    text = "Pâté épicé à l'échalote. " * 20  # 520 characters, 600 UTF-8 bytes
    roomy = budgets.AnswerBudget(64 * 1024 * 1024, None, 1, 5, False)
    for _ in range(100):
        roomy.charge(1, "pate", text, {"topic": "pâté"})
    assert measured == []
    size = exact(text) + exact({"topic": "pâté"}) + exact("pate")
    tight = budgets.AnswerBudget(3 * size, None, 1, 5, False)
    for _ in range(3):
        tight.charge(1, "pate", text, {"topic": "pâté"})  # exactly at the limit: kept
    assert measured  # measured once the bound neared the limit
    with pytest.raises(ValidationFailed):
        tight.charge(1, "pate", text, {"topic": "pâté"})
