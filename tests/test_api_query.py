"""POST /query: ranking, every filter form, the similarity threshold, batches."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from flask.testing import FlaskClient


def query(client: FlaskClient, **body: Any) -> dict[str, Any]:
    body.setdefault("min_score", -1.0)  # filter tests look at every candidate
    response = client.post("/query", json=body)
    assert response.status_code == 200, response.json
    return response.json


def found(client: FlaskClient, **body: Any) -> list[str]:
    return sorted(match["id"] for match in query(client, top_k=10, **body)["matches"])


def test_matches_carry_id_text_metadata_and_cosine_score(cooking: FlaskClient) -> None:
    result = query(cooking, query="how long to cook spaghetti", top_k=2)
    best = result["matches"][0]
    assert best["id"] == "pasta"
    assert best["text"].startswith("Boil the pasta")
    assert best["metadata"]["tags"] == ["pasta", "italian"]
    assert -1.0 <= result["matches"][1]["score"] <= best["score"] <= 1.0
    assert (result["candidates"], result["rejected"]) == (4, 0)  # hybrid ranks all four


def test_score_is_one_minus_the_cosine_distance(cooking: FlaskClient, embedder) -> None:
    text = "Boil the pasta in plenty of salted water until it is al dente."
    score = query(cooking, query=text, top_k=1)["matches"][0]["score"]
    assert score == pytest.approx(1.0, abs=1e-5)
    q, d = embedder.embed_queries(["noodles"]), embedder.embed_documents([text])
    expected = float((q * d).sum())
    assert query(cooking, query="noodles", filters={"category": "cooking"}, where={"minutes": 12})[
        "matches"
    ][0]["score"] == pytest.approx(expected, abs=1e-5)


def test_equality_and_any_of_filters(cooking: FlaskClient) -> None:
    assert found(cooking, query="food", filters={"difficulty": "advanced"}) == ["risotto"]
    assert found(cooking, query="food", filters={"category": ["baking", "grilling"]}) == [
        "bread",
        "cake",
    ]
    assert found(
        cooking, query="food", filters={"category": "cooking", "difficulty": "beginner"}
    ) == ["pasta"]


def test_full_where_operators(cooking: FlaskClient) -> None:
    assert found(cooking, query="food", where={"minutes": {"$gt": 40}}) == ["bread", "cake"]
    assert found(cooking, query="food", where={"minutes": {"$gte": 35, "$lte": 50}}) == [
        "cake",
        "risotto",
    ]
    assert found(cooking, query="food", where={"category": {"$ne": "baking"}}) == [
        "pasta",
        "risotto",
    ]
    assert found(cooking, query="food", where={"difficulty": {"$nin": ["beginner"]}}) == [
        "bread",
        "risotto",
    ]
    assert found(
        cooking, query="food", where={"$or": [{"minutes": {"$lt": 20}}, {"difficulty": "advanced"}]}
    ) == ["pasta", "risotto"]
    assert found(
        cooking, query="food", where={"$and": [{"category": "baking"}, {"minutes": {"$lt": 100}}]}
    ) == ["cake"]
    # several keys at the top of a where: all of them, as $and (review helper 47: keeping only
    # the first passed every test, and a delete by such a filter deletes documents it names)
    both = {"category": "cooking", "difficulty": "beginner"}
    assert found(cooking, query="food", where=both) == ["pasta"]


def test_list_contains(cooking: FlaskClient) -> None:
    assert found(cooking, query="food", where={"tags": {"$contains": "italian"}}) == [
        "pasta",
        "risotto",
    ]
    assert found(cooking, query="food", where={"tags": {"$not_contains": "italian"}}) == [
        "bread",
        "cake",
    ]


def test_date_ranges_with_iso_strings(cooking: FlaskClient) -> None:
    assert found(cooking, query="food", where={"date": {"$gte": "2024-01-01"}}) == [
        "bread",
        "cake",
        "risotto",
    ]
    assert found(cooking, query="food", where={"date": {"$lt": "2024-01-15"}}) == ["pasta"]
    # a bare date as an upper bound includes that whole day (risotto is at 18:30 that day)
    assert found(
        cooking, query="food", where={"date": {"$gt": "2024-01-15", "$lte": "2024-06-30"}}
    ) == ["risotto"]
    assert found(cooking, query="food", where={"date": {"$gt": "2024-06-30T12:00:00Z"}}) == [
        "cake",
        "risotto",
    ]


def test_datetimes_with_more_than_six_fractional_digits_are_dates(client: FlaskClient) -> None:
    """Go (RFC3339Nano), Java (Instant) and .NET ("o") write 7 to 9 digits: such a value got
    no numeric twin, and every range passed over it, silently (review helper 75)."""
    written = {
        "python": "2024-05-01T12:00:00.123456+00:00",
        "dotnet": "2024-05-01T12:00:00.1234567Z",
        "java": "2024-05-01T12:00:00.123456789Z",
        "go": "2024-05-01T14:00:00.123456789+02:00",
    }
    documents = [
        {"id": name, "text": f"Deployed by {name}.", "metadata": {"at": at}}
        for name, at in written.items()
    ]
    assert client.post("/add", json={"documents": documents}).status_code == 201
    day = {"at": {"$gte": "2024-05-01", "$lte": "2024-05-01"}}
    assert found(client, query="deployed", where=day) == sorted(written)
    bound = {"at": {"$gt": "2024-05-01T12:00:00.123456789Z"}}
    assert found(client, query="deployed", where=bound) == []


def test_where_document_contains_and_not_contains(cooking: FlaskClient) -> None:
    assert found(cooking, query="food", where_document={"$contains": "dough"}) == ["bread"]
    assert found(
        cooking,
        query="food",
        where_document={"$and": [{"$contains": "the"}, {"$not_contains": "rice"}]},
    ) == ["bread", "cake", "pasta"]


@pytest.mark.parametrize(
    ("where_document", "field"),
    [
        ({"$regex": "[a&&b]"}, "where_document.$regex"),
        (
            {"$and": [{"$contains": "a"}, {"$not_regex": "[^\\s\\S]"}]},
            "where_document.$and.1.$not_regex",
        ),
    ],
)
def test_a_pattern_that_can_never_match_is_a_422_naming_it(
    cooking: FlaskClient, where_document: dict, field: str
) -> None:
    """Chroma refuses such a pattern as a 'byte pattern': the 422 named no field."""
    response = cooking.post("/query", json={"query": "food", "where_document": where_document})
    assert response.status_code == 422
    (detail,) = response.json["error"]["details"]
    assert detail["field"] == field
    assert "can never match" in detail["message"]


def test_threshold_drops_an_unrelated_query_and_says_so(cooking: FlaskClient, settings) -> None:
    result = cooking.post("/query", json={"query": "stock market crash"}).json
    assert result["matches"] == []
    assert result["status"] == "no_confident_match"
    assert result["threshold"] == {"min_score": settings.min_score, "source": "configured"}
    assert result["candidates"] == 4
    assert result["rejected"] == 4
    assert result["best_rejected_score"] < settings.min_score
    assert "below the threshold" in result["message"]


def test_threshold_keeps_a_paraphrase(client: FlaskClient) -> None:
    client.post(
        "/add",
        json={
            "documents": [
                {"id": "cat", "text": "The cat sat on the mat"},
                {"id": "stocks", "text": "Interest rates rose again this quarter"},
            ]
        },
    )
    result = client.post("/query", json={"query": "A feline rested on the rug"}).json
    assert [m["id"] for m in result["matches"]] == ["cat"]
    assert result["status"] == "ok"
    assert result["rejected"] == 1


def test_request_min_score_overrides_the_default(cooking: FlaskClient) -> None:
    strict = cooking.post("/query", json={"query": "pasta", "min_score": 0.99}).json
    assert strict["matches"] == []
    assert strict["threshold"] == {"min_score": 0.99, "source": "request"}
    assert strict["best_rejected_score"] is not None


@pytest.mark.parametrize("mode", ["dense", "keyword", "hybrid"])
def test_the_threshold_keeps_a_match_that_scores_exactly_it(
    cooking: FlaskClient, mode: str
) -> None:
    """Matches score "at least" min_score: asked again with the score it got back, a match
    stays (a strict comparison in any mode passed every other test)."""
    body = {"query": "boil pasta in salted water", "mode": mode, "top_k": 1}
    best = query(cooking, **body)["matches"][0]
    again = query(cooking, **body, min_score=best["score"])
    assert again["status"] == "ok"
    assert [m["id"] for m in again["matches"]] == [best["id"]]


def test_the_message_states_the_threshold_and_best_score_as_compared(
    cooking: FlaskClient,
) -> None:
    """The message wrote the threshold in two decimals and the best score in three: with a
    min_score a hair above the best score it said "the best score, 0.564, is below the
    threshold 0.56" (review helper 57)."""
    body = {"query": "boil pasta in salted water", "top_k": 1}
    best = query(cooking, **body)["matches"][0]["score"]
    numbers = re.compile(r"-?\d+\.\d+")
    for above in (math.floor(best * 1e4 + 1) / 1e4, float(f"{best:.3f}"), best + 1e-7):
        if above <= best:
            continue
        result = query(cooking, **body, min_score=above)
        assert result["status"] == "no_confident_match"
        said_best, said_threshold = (float(x) for x in numbers.findall(result["message"]))
        assert said_best < said_threshold == above, result["message"]
        assert said_best == pytest.approx(best, abs=5e-4)
    below = math.floor(best * 1e4) / 1e4
    result = query(cooking, **body, min_score=below)
    assert result["status"] == "ok"
    assert [float(x) for x in numbers.findall(result["message"])] == [below], result["message"]
    assert query(cooking, **body, min_score=0.4)["message"].endswith("at least 0.40.")
    assert query(cooking, **body, min_score=-0.0)["message"].endswith("at least 0.00.")


def test_a_min_score_of_zero_is_the_requests_threshold(cooking: FlaskClient) -> None:
    """0 is a threshold like any other, not "none given" (falsy)."""
    result = cooking.post("/query", json={"query": "pasta", "min_score": 0}).json
    assert result["threshold"] == {"min_score": 0.0, "source": "request"}


def test_empty_store_is_told_apart_from_no_match(client: FlaskClient) -> None:
    result = client.post("/query", json={"query": "anything"}).json
    assert result["status"] == "no_candidates"
    assert result["candidates"] == 0
    assert result["best_rejected_score"] is None
    assert "empty" in result["message"]


def test_filters_that_exclude_everything(cooking: FlaskClient) -> None:
    result = cooking.post("/query", json={"query": "x", "filters": {"category": "none"}}).json
    assert result["status"] == "no_candidates"
    assert "filters" in result["message"]


def test_a_keyword_search_finding_none_of_its_terms_says_so(cooking: FlaskClient) -> None:
    """Not "the knowledge base is empty" nor "no document matches the filters": documents
    pass the filters, none holds a term of the query (or it has no terms but stop words)."""
    for text, says in [("xyzzy", "contains any of the query's terms"), ("the of and", "stop")]:
        for filters in [None, {"category": "baking"}]:
            body = {"query": text, "mode": "keyword", "filters": filters}
            result = cooking.post("/query", json=body).json
            assert (result["status"], result["candidates"]) == ("no_keyword_match", 0), body
            assert says in result["message"]
    nothing = {"query": "xyzzy", "mode": "keyword", "filters": {"category": "none"}}
    result = cooking.post("/query", json=nothing).json
    assert result["status"] == "no_candidates"
    assert "filters" in result["message"]


def test_a_keyword_search_says_it_read_only_the_first_64_terms(cooking: FlaskClient) -> None:
    """A long query whose 65th distinct term is the one a document holds found nothing, and
    said that no document held any of its terms."""
    filler = " ".join(f"xq{i}" for i in range(64))
    body = {"query": f"{filler} pasta", "mode": "keyword", "min_score": -1}
    result = cooking.post("/query", json=body).json
    assert result["status"] == "no_keyword_match"
    assert result["message"] == (
        "No document contains any of the query's first 64 terms (it has 65; keyword search "
        "reads the first 64 distinct words that are not stop words)."
    )
    body["query"] = f"pasta {filler}"
    assert [m["id"] for m in cooking.post("/query", json=body).json["matches"]] == ["pasta"]


def test_a_keyword_search_with_filters_speaks_of_the_documents_passing_them(
    cooking: FlaskClient,
) -> None:
    """The word pasta is in a cooking document, not in the baking one: with that filter it
    said "No document contains any of the query's terms" (review helper 99); the 64-term
    message too."""
    filler = " ".join(f"xq{i}" for i in range(64))
    for text, says in [
        ("pasta", "any of the query's terms."),
        (f"{filler} pasta", "any of the query's first 64 terms (it has 65;"),
    ]:
        body = {"query": text, "mode": "keyword", "filters": {"category": "baking"}}
        result = cooking.post("/query", json=body).json
        assert result["status"] == "no_keyword_match", body
        assert result["message"].startswith("No document passing the filters contains " + says)
        del body["filters"]
        if text == "pasta":  # unfiltered, the same words: a match
            assert [m["id"] for m in cooking.post("/query", json=body).json["matches"]] == ["pasta"]
        else:
            unfiltered = cooking.post("/query", json=body).json["message"]
            assert unfiltered.startswith("No document contains " + says)


def test_a_keyword_search_of_an_empty_store(client: FlaskClient) -> None:
    result = client.post("/query", json={"query": "xyzzy", "mode": "keyword"}).json
    assert result["status"] == "no_candidates"
    assert "empty" in result["message"]


def test_top_k_limits_matches(cooking: FlaskClient) -> None:
    assert len(query(cooking, query="kitchen", top_k=3)["matches"]) == 3
    assert len(query(cooking, query="kitchen")["matches"]) == 4  # default 5, only 4 stored


def test_batch_of_queries(cooking: FlaskClient) -> None:
    response = cooking.post(
        "/query", json={"queries": ["rising dough", "risotto rice"], "top_k": 1}
    )
    results = response.json["results"]
    assert [r["query"] for r in results] == ["rising dough", "risotto rice"]
    assert [r["matches"][0]["id"] for r in results] == ["bread", "risotto"]


def test_explain_returns_the_near_misses_below_the_threshold(cooking: FlaskClient) -> None:
    body = {"query": "boiling pasta in salted water", "min_score": 0.5}
    plain = cooking.post("/query", json=body).json
    assert plain["near_misses"] is None
    result = cooking.post("/query", json={**body, "explain": True}).json
    kept = [m["id"] for m in result["matches"]]
    missed = result["near_misses"]
    assert kept == ["pasta"]
    assert len(missed) == result["rejected"] == 3
    assert all(m["score"] < 0.5 for m in missed)
    assert missed[0]["score"] == result["best_rejected_score"]
    assert [m["score"] for m in missed] == sorted((m["score"] for m in missed), reverse=True)


def test_diversify_pushes_near_copies_down(client: FlaskClient) -> None:
    copies = [
        {"id": f"copy{i}", "text": f"Transformers use self-attention to weigh tokens, variant {i}."}
        for i in range(4)
    ]
    other = {"id": "rnn", "text": "Recurrent networks read tokens one step at a time."}
    client.post("/add", json={"documents": [*copies, other]})
    body = {"query": "how do transformers process tokens", "top_k": 2, "min_score": -1}
    plain = [m["id"] for m in client.post("/query", json=body).json["matches"]]
    assert all(doc.startswith("copy") for doc in plain)
    diverse = client.post("/query", json={**body, "diversify": True, "lambda": 0.3}).json
    ids = [m["id"] for m in diverse["matches"]]
    assert ids[0].startswith("copy")
    assert "rnn" in ids
    relevance_only = client.post("/query", json={**body, "diversify": True, "lambda": 1.0}).json
    assert [m["id"] for m in relevance_only["matches"]] == plain
