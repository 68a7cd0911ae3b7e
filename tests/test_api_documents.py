"""POST /add, GET /documents, PATCH /documents/<id>, POST /update, deletes."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from flask.testing import FlaskClient

from tests.conftest import COOKING


def ids_of(client: FlaskClient, **params: str) -> list[str]:
    response = client.get("/documents", query_string=params)
    assert response.status_code == 200, response.json
    return sorted(doc["id"] for doc in response.json["documents"])


def test_add_one_returns_201_and_the_document_reads_back_exactly(client: FlaskClient) -> None:
    metadata = {
        "author": "Ada",
        "date": "2024-05-01",
        "tags": ["a", "b"],
        "stars": 4.5,
        "draft": False,
        "empty": [],
    }
    response = client.post("/add", json={"id": "d1", "text": "Hello there", "metadata": metadata})
    assert response.status_code == 201
    assert response.json == {
        "ids": ["d1"],
        "added": 1,
        "updated": 0,
        "skipped": 0,
        "skipped_changed": 0,
        "duplicates": [],
    }
    doc = client.get("/documents/d1").json
    assert doc == {"id": "d1", "text": "Hello there", "metadata": metadata, "chunks": 1}


def test_add_many_and_list_with_paging(cooking: FlaskClient) -> None:
    page = cooking.get("/documents?limit=2&offset=1").json
    assert page["total"] == 4
    assert page["limit"] == 2
    assert page["offset"] == 1
    assert len(page["documents"]) == 2
    assert ids_of(cooking) == sorted(doc["id"] for doc in COOKING)


@pytest.mark.parametrize(
    "query", ["limit=1&limit=2", "offset=0&offset=1", 'where={"a":1}&where={"b":2}']
)
def test_a_listing_parameter_given_twice_is_refused(cooking: FlaskClient, query: str) -> None:
    """The first value was used and the second ignored, silently (review helper 30); a
    filter key given twice still means any of."""
    response = cooking.get(f"/documents?{query}")
    assert response.status_code == 422, response.json
    name = query.split("=")[0]
    assert response.json["error"]["details"] == [
        {"field": name, "message": "given 2 times; give it once", "type": "value_error"}
    ]
    both = cooking.get("/documents?category=baking&category=cooking").json["documents"]
    assert sorted(doc["id"] for doc in both) == sorted(doc["id"] for doc in COOKING)


@pytest.mark.parametrize(
    ("query", "field"),
    [("_kb_doc=x", "_kb_doc"), ("%24op=12&%24op=soon", "$op"), ("%23tag=1", "#tag")],
)
def test_a_bad_filter_parameter_is_named_as_the_caller_wrote_it(
    cooking: FlaskClient, query: str, field: str
) -> None:
    """`?minutes=...` is the parameter `minutes`; the error named `filters.minutes.$in`, a
    body field and an operator the caller never wrote (review helper 30)."""
    response = cooking.get(f"/documents?{query}")
    assert response.status_code == 422, response.json
    error = response.json["error"]
    assert [detail["field"] for detail in error["details"]] == [field]
    assert error["message"].startswith(f"{field}: ")


def test_a_filter_parameter_finds_numbers_and_text_of_either_spelling(
    client: FlaskClient,
) -> None:
    """A query string has no types: ?zip=10001 found only the number, and a text "10001" (a
    CSV column is typed cell by cell: "02134" stays text) never; ?zip=02134&zip=10001 was a
    422, "list items must all have one type" (review helper 75)."""
    documents = [
        {"id": "boston", "text": "Boston office.", "metadata": {"zip": "02134"}},
        {"id": "nyc", "text": "New York office.", "metadata": {"zip": 10001}},
        {"id": "nyc-text", "text": "New York annex.", "metadata": {"zip": "10001"}},
        {"id": "flag", "text": "Flagged.", "metadata": {"zip": True}},
    ]
    assert client.post("/add", json={"documents": documents}).status_code == 201
    assert ids_of(client, zip="10001") == ["nyc", "nyc-text"]
    listed = client.get("/documents?zip=02134&zip=10001").json["documents"]
    assert sorted(doc["id"] for doc in listed) == ["boston", "nyc", "nyc-text"]
    assert ids_of(client, zip="true") == ["flag"]
    # each number counts once against KB_MAX_FILTER_VALUES (1,000), not once a spelling
    many = "&".join(f"zip={10_000 + i}" for i in range(600))
    assert client.get(f"/documents?{many}").status_code == 200
    too_many = "&".join(f"zip={10_000 + i}" for i in range(1001))
    refused = client.get(f"/documents?{too_many}")
    assert refused.status_code == 422
    assert refused.json["error"]["message"] == "zip: at most 1000 values in a filter's lists in all"


def test_list_with_simple_and_where_filters(cooking: FlaskClient) -> None:
    assert ids_of(cooking, category="baking") == ["bread", "cake"]
    assert ids_of(cooking, minutes="12") == ["pasta"]
    assert ids_of(cooking, where='{"date": {"$gte": "2024-06-01"}}') == ["cake", "risotto"]


def test_query_string_values_are_numbers_only_when_spelt_as_json_numbers(
    client: FlaskClient,
) -> None:
    docs = [
        {"id": "nan", "text": "An author called NaN", "metadata": {"author": "NaN", "zip": 2134}},
        {"id": "inf", "text": "By an author called Infinity", "metadata": {"author": "Infinity"}},
        {"id": "zip", "text": "Filed under a zip code", "metadata": {"zip": "02134", "ok": True}},
    ]
    assert client.post("/add", json={"documents": docs}).status_code == 201
    assert ids_of(client, author="NaN") == ["nan"]
    assert ids_of(client, author="Infinity") == ["inf"]
    assert ids_of(client, zip="02134") == ["zip"]
    assert ids_of(client, zip="2134") == ["nan"]
    assert ids_of(client, ok="true") == ["zip"]


def test_missing_id_is_derived_from_content_and_readding_is_a_conflict(
    client: FlaskClient,
) -> None:
    first = client.post("/add", json={"text": "Same words"})
    assert first.status_code == 201
    again = client.post("/add", json={"text": "Same words"})
    assert again.status_code == 409
    assert again.json["error"]["code"] == "conflict"
    assert first.json["ids"][0] in again.json["error"]["message"]
    assert client.get("/health").json["documents"] == 1


def test_conflict_names_the_ids_and_writes_nothing_from_the_batch(cooking: FlaskClient) -> None:
    batch = [
        {"id": "new-1", "text": "A fresh document"},
        {"id": "pasta", "text": "Other text"},
        {"id": "new-2", "text": "Another fresh one"},
    ]
    response = cooking.post("/add", json={"documents": batch})
    assert response.status_code == 409
    assert "'pasta'" in response.json["error"]["message"]
    assert response.json["error"]["details"][0]["field"] == "documents.1.id"
    assert cooking.get("/documents/new-1").status_code == 404
    assert cooking.get("/documents/new-2").status_code == 404
    assert cooking.get("/documents/pasta").json["text"] == COOKING[0]["text"]


def test_repeated_id_within_one_request_is_rejected(client: FlaskClient) -> None:
    batch = [{"id": "x", "text": "one"}, {"id": "x", "text": "two"}]
    response = client.post("/add", json={"documents": batch})
    assert response.status_code == 422
    assert response.json["error"]["details"][0]["field"] == "documents.1.id"
    assert client.get("/health").json["documents"] == 0


def test_upsert_replaces_changed_and_skips_identical(cooking: FlaskClient) -> None:
    batch = [
        {"id": "pasta", "text": "Cook spaghetti in boiling water.", "metadata": {"v": 2}},
        {**COOKING[1]},
        {"id": "soup", "text": "Simmer the vegetables for a clear soup."},
    ]
    response = cooking.post("/add", json={"documents": batch, "upsert": True})
    assert response.status_code == 201
    assert response.json["added"] == 1
    assert response.json["updated"] == 1
    assert response.json["skipped"] == 1
    doc = cooking.get("/documents/pasta").json
    assert doc["text"] == "Cook spaghetti in boiling water."
    assert doc["metadata"] == {"v": 2}  # replaced, not merged with the old metadata
    hits = cooking.post("/query", json={"query": "spaghetti", "top_k": 1}).json["matches"]
    assert hits[0]["id"] == "pasta"


def test_add_splits_requests_larger_than_chromas_batch(client: FlaskClient, store) -> None:
    store.records.max_batch = 7  # force several Chroma batches without 5,462 documents
    docs = [{"id": f"n{i}", "text": f"Note number {i} about topic {i % 3}"} for i in range(30)]
    response = client.post("/add", json={"documents": docs})
    assert response.status_code == 201
    assert client.get("/health").json["documents"] == 30
    assert client.get("/documents/n29").json["text"] == "Note number 29 about topic 2"


def test_patch_merges_metadata_and_null_removes_a_key(cooking: FlaskClient) -> None:
    response = cooking.patch(
        "/documents/bread", json={"metadata": {"minutes": 200, "tags": None, "vegan": True}}
    )
    assert response.status_code == 200
    metadata = response.json["metadata"]
    assert metadata["minutes"] == 200
    assert metadata["vegan"] is True
    assert "tags" not in metadata
    assert metadata["category"] == "baking"
    assert cooking.get("/documents/bread").json["metadata"] == metadata


def test_replace_metadata_drops_the_old_keys(cooking: FlaskClient) -> None:
    response = cooking.patch(
        "/documents/bread", json={"metadata": {"only": "this"}, "replace_metadata": True}
    )
    assert response.json["metadata"] == {"only": "this"}
    assert ids_of(cooking, category="baking") == ["cake"]  # the filter sees the change too


def test_update_re_embeds_the_new_text(cooking: FlaskClient) -> None:
    new_text = "Tune the guitar strings before the concert starts."
    response = cooking.post("/update", json={"id": "cake", "text": new_text})
    assert response.status_code == 200
    assert response.json["text"] == new_text
    assert response.json["metadata"]["category"] == "baking"
    guitar = cooking.post("/query", json={"query": "tuning a guitar", "top_k": 1}).json
    assert guitar["matches"][0]["id"] == "cake"
    sponge = cooking.post("/query", json={"query": "butter and sugar sponge cake"}).json
    assert "cake" not in [m["id"] for m in sponge["matches"]]


def test_update_unknown_id_is_404(client: FlaskClient) -> None:
    for response in (
        client.patch("/documents/nope", json={"text": "x"}),
        client.post("/update", json={"id": "nope", "metadata": {"a": 1}}),
    ):
        assert response.status_code == 404
        assert "nope" in response.json["error"]["message"]


def test_delete_by_ids_and_by_path(cooking: FlaskClient) -> None:
    response = cooking.post("/delete", json={"ids": ["pasta", "bread"]})
    assert response.json == {"deleted": 2, "ids": ["pasta", "bread"]}
    assert cooking.delete("/documents/cake").json == {"deleted": 1, "ids": ["cake"]}
    assert ids_of(cooking) == ["risotto"]

    # an id named twice is one document deleted once
    twice = cooking.post("/delete", json={"ids": ["risotto", "risotto"]})
    assert twice.json == {"deleted": 1, "ids": ["risotto"]}


def test_delete_with_an_unknown_id_deletes_nothing(cooking: FlaskClient) -> None:
    response = cooking.post("/delete", json={"ids": ["pasta", "pasta", "ghost"]})
    assert response.status_code == 404
    assert "'ghost'" in response.json["error"]["message"]
    assert [d["field"] for d in response.json["error"]["details"]] == ["ids.2"]
    assert cooking.get("/documents/pasta").status_code == 200
    one = cooking.delete("/documents/ghost")
    assert one.status_code == 404
    assert [d["field"] for d in one.json["error"]["details"]] == ["id"]  # not "ids": unsent


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"id": "pasta", "text": "Other text"}, "id"),
        ({"documents": [{"id": "pasta", "text": "Other text"}]}, "documents.0.id"),
        ({"documents": [{"text": "New"}, {"id": "pasta", "text": "Other"}]}, "documents.1.id"),
        # a near-duplicate refused: the place of the new document, as sent
        ({"text": COOKING[0]["text"] + " ", "on_duplicate": "reject"}, "id"),
        (
            {
                "documents": [{"text": "New"}, {"id": "again", "text": COOKING[0]["text"] + " "}],
                "on_duplicate": "reject",
            },
            "documents.1.id",
        ),
    ],
    ids=["single", "batch-of-one", "batch", "near-single", "near-batch"],
)
def test_a_refused_add_names_the_field_as_it_was_sent(
    cooking: FlaskClient, body: dict[str, Any], field: str
) -> None:
    """A batch of one was named `id` and a near-duplicate always `id` (review helper 57): the
    field is the path as the caller wrote it."""
    response = cooking.post("/add", json=body)
    assert response.status_code == 409, response.json
    assert [d["field"] for d in response.json["error"]["details"]] == [field]
    assert cooking.get("/health").json["documents"] == len(COOKING)


def test_delete_by_filter(cooking: FlaskClient) -> None:
    response = cooking.post("/delete", json={"where": {"category": "baking"}})
    assert response.status_code == 200
    assert response.json["deleted"] == 2
    assert sorted(response.json["ids"]) == ["bread", "cake"]
    assert ids_of(cooking) == ["pasta", "risotto"]
    # a where of several keys deletes only what passes all of them (risotto is cooking too)
    both = {"category": "cooking", "difficulty": "beginner"}
    assert cooking.post("/delete", json={"where": both}).json["ids"] == ["pasta"]
    by_date = cooking.post("/delete", json={"filters": {"difficulty": ["advanced", "expert"]}})
    assert by_date.json["ids"] == ["risotto"]


def test_a_fractional_bound_deletes_no_whole_number_it_does_not_name(client: FlaskClient) -> None:
    """Chroma compared integer metadata with 2.5 as with 2: deleting "version 2.5" deleted
    version 2 too, and listing "before 2.5" left version 2 out."""
    versions = {"v2": 2, "v2.5": 2.5, "v3": 3}
    docs = [
        {"id": i, "text": f"Release notes {i}", "metadata": {"v": v}} for i, v in versions.items()
    ]
    assert client.post("/add", json={"documents": docs}).status_code == 201
    listed = client.get('/documents?where={"v": {"$lt": 2.5}}').json["documents"]
    assert [doc["id"] for doc in listed] == ["v2"]
    deleted = client.post("/delete", json={"where": {"v": {"$eq": 2.5}}}).json
    assert deleted == {"deleted": 1, "ids": ["v2.5"]}
    assert ids_of(client) == ["v2", "v3"]


def test_a_large_integer_bound_deletes_no_float_it_does_not_name(client: FlaskClient) -> None:
    """Chroma compared float metadata with 2**53 + 1 as with 2.0**53: deleting "n = 2**53 +
    1" deleted n = 2.0**53 too, and listing "n < 2**53 + 1" left it out."""
    numbers = {"float": 2.0**53, "int": 2**53 + 1}
    docs = [{"id": i, "text": f"Counter {i}", "metadata": {"n": n}} for i, n in numbers.items()]
    assert client.post("/add", json={"documents": docs}).status_code == 201
    listed = client.get(f'/documents?where={{"n": {{"$lt": {2**53 + 1}}}}}').json["documents"]
    assert [doc["id"] for doc in listed] == ["float"]
    deleted = client.post("/delete", json={"where": {"n": {"$eq": 2**53 + 1}}}).json
    assert deleted == {"deleted": 1, "ids": ["int"]}
    assert ids_of(client) == ["float"]


def test_delete_that_matches_nothing_deletes_nothing(cooking: FlaskClient) -> None:
    response = cooking.post("/delete", json={"where": {"category": "astronomy"}})
    assert response.json == {"deleted": 0, "ids": []}
    assert cooking.get("/health").json["documents"] == 4


def test_ids_with_slashes_and_spaces_work_in_paths(client: FlaskClient) -> None:
    client.post("/add", json={"id": "notes/ml/intro page.md", "text": "Intro"})
    assert client.get("/documents/notes/ml/intro%20page.md").json["text"] == "Intro"
    assert client.delete("/documents/notes/ml/intro%20page.md").status_code == 200


SLASHED = ["a", "/a", "a//b", "a/b", "a/", "//x"]


def test_ids_with_leading_or_repeated_slashes_address_only_their_own_document(
    client: FlaskClient,
) -> None:
    """werkzeug merged repeated slashes: /documents/%2Fa (the id "/a") was redirected to
    /documents/a, and a DELETE that followed it deleted "a"."""
    for doc_id in SLASHED:
        assert client.post("/add", json={"id": doc_id, "text": f"Note {doc_id}"}).status_code == 201
    for doc_id in SLASHED:
        path = f"/documents/{quote(doc_id, safe='')}"
        got = client.get(path)
        assert (got.status_code, got.json["id"]) == (200, doc_id), got.get_data(as_text=True)
        patched = client.patch(path, json={"text": f"Patched {doc_id}"})
        assert (patched.status_code, patched.json["id"]) == (200, doc_id)
    for doc_id in SLASHED:
        got = client.get(f"/documents/{quote(doc_id, safe='')}")
        assert got.json["text"] == f"Patched {doc_id}"
    assert client.get("/documents//a").json["id"] == "/a"  # unencoded slashes, same id
    for done, doc_id in enumerate(SLASHED, start=1):
        deleted = client.delete(f"/documents/{quote(doc_id, safe='')}")
        assert deleted.json == {"deleted": 1, "ids": [doc_id]}
        assert ids_of(client) == sorted(SLASHED[done:])


def test_add_answers_201_only_when_it_created_a_document(cooking: FlaskClient) -> None:
    """Review helper 82: an add that skipped or replaced every document answered 201 Created;
    it is a 200 with the same body, and 201 when at least one document is new."""
    skipped = cooking.post("/add", json={"documents": COOKING[:2], "on_conflict": "skip"})
    assert skipped.status_code == 200, skipped.json
    assert (skipped.json["added"], skipped.json["skipped"]) == (0, 2)
    changed = {**COOKING[0], "text": "Boil the pasta for nine minutes."}
    updated = cooking.post("/add", json={"documents": [changed, COOKING[1]], "upsert": True})
    assert updated.status_code == 200, updated.json
    assert (updated.json["added"], updated.json["updated"], updated.json["skipped"]) == (0, 1, 1)
    assert cooking.get("/documents/pasta").json["text"] == changed["text"]
    one_new = [COOKING[1], {"id": "soup", "text": "Simmer the stock for an hour."}]
    created = cooking.post("/add", json={"documents": one_new, "on_conflict": "skip"})
    assert created.status_code == 201, created.json
    assert (created.json["added"], created.json["skipped"]) == (1, 1)
    copy = {"id": "soup-2", "text": "Simmer the stock for an hour."}  # a near-duplicate
    left_out = cooking.post("/add", json={**copy, "on_duplicate": "skip"})
    assert left_out.status_code == 200, left_out.json
    assert (left_out.json["added"], left_out.json["skipped"]) == (0, 1)
    assert cooking.get("/documents/soup-2").status_code == 404
    spec = cooking.get("/openapi.json").json["paths"]["/add"]["post"]["responses"]
    assert spec["201"]["content"] == spec["200"]["content"]
    assert "added = 0" in spec["200"]["description"]


def test_on_conflict_skip_keeps_stored_documents(cooking: FlaskClient) -> None:
    batch = [{"id": "pasta", "text": "Changed"}, {"id": "new", "text": "Brand new"}]
    response = cooking.post("/add", json={"documents": batch, "on_conflict": "skip"})
    assert response.status_code == 201
    assert (response.json["added"], response.json["skipped"]) == (1, 1)
    assert response.json["skipped_changed"] == 1  # the stored pasta is another version
    assert cooking.get("/documents/pasta").json["text"] == COOKING[0]["text"]
    same = cooking.post("/add", json={"documents": COOKING[:1], "on_conflict": "skip"}).json
    assert (same["skipped"], same["skipped_changed"]) == (1, 0)
    contradiction = cooking.post("/add", json={"text": "x", "upsert": True, "on_conflict": "skip"})
    assert contradiction.status_code == 422
