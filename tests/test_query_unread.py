"""A query read only in part (review helper 99): the model reads its first 254 word pieces,
keyword search its first 64 distinct terms; `truncated` and the message say so."""

from __future__ import annotations

from typing import Any

import numpy as np
from flask.testing import FlaskClient

from kb.embeddings import Embedder

LONG = "salt " * 300  # 300 word pieces, one a word: the model reads the first 254
FILLER = " ".join(f"xq{i}" for i in range(65))  # 65 distinct terms, under 254 word pieces
MODEL_CUT = (
    "The model read only the query's first 254 word pieces (its first 1,269 of 1,500 "
    "characters), so the rest was ignored: ask a shorter question."
)
KEYWORD_CUT = (
    "Keyword search read only its first 64 distinct words that are not stop words (of 66), "
    "so the rest was ignored: ask a shorter question."
)


def ask(client: FlaskClient, **body: Any) -> dict[str, Any]:
    response = client.post("/query", json={"min_score": -1, **body})
    assert response.status_code == 200, response.json
    return response.json


def test_a_query_past_the_models_window_says_where_its_reading_stopped(
    cooking: FlaskClient, embedder: Embedder
) -> None:
    """It answered `ok` in every mode, nothing saying the end of the query was not read."""
    whole, read, short = embedder.embed_queries([LONG, LONG[:1269], LONG[:1264]])
    assert float(np.dot(whole, read)) > 0.99999 > float(np.dot(whole, short))  # stops at 1,269
    for mode in ["dense", "keyword", "hybrid"]:
        result = ask(cooking, query=LONG, mode=mode)
        assert result["status"] == "ok", mode
        assert result["truncated"] is True
        assert result["message"].endswith(f" scored at least -1.00. {MODEL_CUT}"), mode
    for mode in ["dense", "keyword", "hybrid"]:  # a short query: as before
        result = ask(cooking, query="salt", mode=mode)
        assert result["truncated"] is False
        assert result["message"] == f"{len(result['matches'])} match(es) scored at least -1.00."


def test_keyword_and_hybrid_searches_say_they_read_the_first_64_terms(
    cooking: FlaskClient, embedder: Embedder
) -> None:
    assert len(embedder.tokens(f"{FILLER} pasta")) < 254  # the model reads it whole
    for mode in ["keyword", "hybrid"]:
        result = ask(cooking, query=f"pasta {FILLER}", mode=mode)
        assert (result["status"], result["truncated"]) == ("ok", True), mode
        assert result["message"].endswith(f"least -1.00. {KEYWORD_CUT}")
    result = ask(cooking, query=f"pasta {FILLER}", mode="dense")  # no keyword search: whole
    assert (result["truncated"], result["message"]) == (False, "4 match(es) scored at least -1.00.")
    # no_keyword_match already says it read the first 64 terms: said once
    result = ask(cooking, query=f"{FILLER} pasta", mode="keyword")
    assert (result["status"], result["truncated"]) == ("no_keyword_match", True)
    assert result["message"].endswith(
        "(it has 66; keyword search reads the first 64 distinct words that are not stop words)."
    )
    both = ask(cooking, query=f"{FILLER} {LONG}", mode="hybrid")
    assert both["truncated"] is True
    assert both["message"].endswith(
        "characters), and keyword search its first 64 distinct words that are not stop words "
        "(of 66), so the rest was ignored: ask a shorter question."
    )


def test_each_query_of_a_batch_has_its_own_flag(cooking: FlaskClient) -> None:
    results = ask(cooking, queries=["salt", LONG], mode="dense")["results"]
    assert [r["truncated"] for r in results] == [False, True]
    assert results[1]["message"].endswith(MODEL_CUT)
    assert not results[0]["message"].endswith(MODEL_CUT)


def test_the_openapi_document_lists_the_field(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").json
    field = spec["components"]["schemas"]["QueryResult"]["properties"]["truncated"]
    assert field["type"] == "boolean"
    assert "word pieces" in field["description"]


def test_a_short_query_is_not_tokenized_again(embedder: Embedder) -> None:
    """Most queries cannot reach either limit (PIECES_PER_CHAR): they cost no second
    tokenization. The bound holds for the text that makes the most pieces a character
    (Hangul syllables, three letters each)."""
    from kb import unread as unread_module

    class Counting:
        max_tokens = embedder.max_tokens
        calls = 0

        def tokens(self, text: str) -> Any:
            Counting.calls += 1
            return embedder.tokens(text)

    counting: Any = Counting()
    longest = (embedder.max_tokens - 2) // unread_module.PIECES_PER_CHAR
    hangul = "한국어텍스트" * (longest // 6 + 1)
    for text in ["what is overfitting", hangul[:longest], "a " * (longest // 2)]:
        assert unread_module.unread(counting, text, "hybrid") is None
    assert Counting.calls == 0
    assert len(embedder.tokens(hangul[:longest]).offsets) <= embedder.max_tokens - 2
    assert unread_module.unread(counting, hangul[: longest + 1], "dense") is None
    assert Counting.calls == 1  # one character more: tokenized, and read whole
