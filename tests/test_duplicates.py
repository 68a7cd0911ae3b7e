"""Near-duplicates: allow, skip, reject or ignore them on add; list the groups already stored."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient

from kb.cli import main
from kb.collection import RecordCollection
from kb.config import Settings
from kb.duplicates import groups, nearest_stored
from kb.embeddings import Embedder
from kb.schemas import DocumentIn, QueryRequest
from kb.search import search
from kb.store import KnowledgeStore

ORIGINAL = {"id": "orig", "text": "Gradient descent updates the weights against the gradient."}
COPY = {"id": "copy", "text": "Gradient descent updates weights against the gradient."}
OTHER = {"id": "other", "text": "Sourdough bread needs a lively starter."}


def add(client: FlaskClient, on_duplicate: str) -> dict:
    response = client.post("/add", json={"documents": [COPY, OTHER], "on_duplicate": on_duplicate})
    return {"status": response.status_code, **response.json}


def test_allow_writes_and_names_the_existing_document(client: FlaskClient) -> None:
    client.post("/add", json=ORIGINAL)
    result = add(client, "allow")
    assert result["status"] == 201
    assert result["added"] == 2
    (dup,) = result["duplicates"]
    assert (dup["id"], dup["existing"]) == ("copy", "orig")
    assert dup["score"] >= 0.95


def test_skip_leaves_the_duplicate_out(client: FlaskClient) -> None:
    client.post("/add", json=ORIGINAL)
    result = add(client, "skip")
    assert (result["added"], result["skipped"]) == (1, 1)
    assert client.get("/documents/copy").status_code == 404
    assert client.get("/documents/other").status_code == 200


def test_reject_refuses_the_whole_request(client: FlaskClient) -> None:
    client.post("/add", json=ORIGINAL)
    result = add(client, "reject")
    assert result["status"] == 409
    assert "'copy' ~ 'orig'" in result["error"]["message"]
    assert client.get("/health").json["documents"] == 1


def test_reject_finds_a_copy_chromas_graph_does_not_reach(
    client: FlaskClient, store: KnowledgeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chroma's HNSW graph can hold a record no search reaches (no link into it): an exact
    copy of it sent with "reject" was written, 201 (review helper 100). With kb's in-memory
    copy current, the neighbours come from it. Chroma's graph missing everything stands in
    for the unreachable record."""
    client.post("/add", json=ORIGINAL)
    store.replica.wait_loaded()
    monkeypatch.setattr(
        RecordCollection, "nearest_ids", lambda self, vectors, n: [[] for _ in vectors]
    )
    result = add(client, "reject")
    assert result["status"] == 409, result
    assert "'copy' ~ 'orig'" in result["error"]["message"]


@pytest.mark.parametrize("on_duplicate", ["reject", "skip"])
def test_a_request_sent_again_after_part_of_it_was_stored_ends_as_the_first_would(
    client: FlaskClient, on_duplicate: str
) -> None:
    """A request's documents are not compared with each other; but sent again after it was
    cut off between Chroma calls (part of it stored), its stored part counted: the copy was
    refused or left out, though the whole request took it (review helper 67)."""
    # as kb load sends a batch again: identical stored documents are skipped
    body = {"documents": [ORIGINAL, COPY, OTHER], "on_duplicate": on_duplicate, "upsert": True}
    client.post("/add", json={"documents": [ORIGINAL]})  # the part a first attempt stored
    again = client.post("/add", json=body)
    assert again.status_code == 201, again.json
    assert (again.json["added"], again.json["skipped"]) == (2, 1)  # orig skipped: stored
    assert client.get("/health").json["documents"] == 3
    later = {**COPY, "id": "copy2"}  # a later request is compared with what is stored
    answer = client.post("/add", json={"documents": [later], "on_duplicate": on_duplicate})
    # nothing created: a 200 (review helper 82)
    assert answer.status_code == (409 if on_duplicate == "reject" else 200), answer.json


def test_ignore_writes_without_looking(client: FlaskClient, monkeypatch) -> None:
    client.post("/add", json=ORIGINAL)

    def never(*args: object) -> None:
        raise AssertionError("on_duplicate=ignore must not search for duplicates")

    monkeypatch.setattr("kb.store.nearest_stored", never)
    result = add(client, "ignore")
    assert (result["status"], result["added"], result["duplicates"]) == (201, 2, [])
    assert client.get("/documents/copy").status_code == 200


def test_distinct_documents_are_not_duplicates(client: FlaskClient) -> None:
    client.post("/add", json=ORIGINAL)
    assert client.post("/add", json=OTHER).json["duplicates"] == []


def test_groups_lists_stored_near_duplicates(client: FlaskClient, store: KnowledgeStore) -> None:
    third = {"id": "third", "text": "Gradient descent updates the weights against the gradient!"}
    client.post("/add", json={"documents": [ORIGINAL, COPY, OTHER, third]})
    assert groups(store.records, 0.95) == [["copy", "orig", "third"]]


PREAMBLE = " ".join(
    f"Standard disclaimer clause {i}: this document is provided as is, without warranty."
    for i in range(20)
)
PENGUINS = PREAMBLE + "\n\nThis report is about the migration of penguins across Antarctica."
REVENUE = PREAMBLE + "\n\nThis report is about the quarterly revenue of a software firm in Ohio."


def test_long_documents_sharing_only_a_preamble_are_not_duplicates(client: FlaskClient) -> None:
    """Only the first chunks were compared: two reports behind the same 20-clause disclaimer
    scored 1.0, and with "skip" the second was never stored."""
    client.post("/add", json={"id": "penguins", "text": PENGUINS})
    assert client.get("/documents/penguins").json["chunks"] > 1
    result = client.post(
        "/add", json={"id": "revenue", "text": REVENUE, "on_duplicate": "skip"}
    ).json
    assert (result["added"], result["duplicates"]) == (1, [])
    copy = client.post("/add", json={"id": "copy", "text": PENGUINS, "on_duplicate": "skip"}).json
    assert (copy["skipped"], copy["duplicates"][0]["existing"]) == (1, "penguins")


FOOTER = " ".join(
    f"Footer clause {i}: all rights reserved, no part may be copied." for i in range(20)
)


def test_long_documents_sharing_a_preamble_and_a_footer_are_not_duplicates(
    client: FlaskClient,
) -> None:
    """First and last chunks alike, the bodies between them not: every chunk is compared."""
    penguins = " ".join(f"Penguin fact {i}: emperor penguins huddle in winter." for i in range(20))
    revenue = " ".join(f"Revenue fact {i}: the Ohio firm sold more licences." for i in range(20))
    first = {"id": "first", "text": f"{PREAMBLE}\n\n{penguins}\n\n{FOOTER}"}
    assert client.post("/add", json=first).status_code == 201
    assert client.get("/documents/first").json["chunks"] >= 4
    second = {"id": "second", "text": f"{PREAMBLE}\n\n{revenue}\n\n{FOOTER}"}
    result = client.post("/add", json={**second, "on_duplicate": "skip"}).json
    assert (result["added"], result["duplicates"]) == (1, [])


def test_kb_duplicates_compares_long_documents_whole(store: KnowledgeStore, client) -> None:
    for doc_id, text in [("penguins", PENGUINS), ("revenue", REVENUE), ("copy", PENGUINS)]:
        client.post("/add", json={"id": doc_id, "text": text})
    assert groups(store.records, 0.95) == [["copy", "penguins"]]


def test_a_document_the_same_write_rewrites_is_no_match(client: FlaskClient) -> None:
    """X gets new text and a new Y takes X's old text in one upsert: after it no two stored
    documents are alike, but Y was refused (409) as a duplicate of X's old text."""
    client.post("/add", json={"id": "X", "text": ORIGINAL["text"]})
    documents = [{"id": "X", "text": OTHER["text"]}, {"id": "Y", "text": ORIGINAL["text"]}]
    response = client.post(
        "/add", json={"documents": documents, "upsert": True, "on_duplicate": "reject"}
    )
    assert response.status_code == 201, response.json
    assert (response.json["added"], response.json["updated"]) == (1, 1)


TOPICS = (
    "tides", "castles", "compilers", "honeybees", "jazz", "cycling", "volcanoes", "glaciers",
    "lasers", "orchards",
)  # fmt: skip
PARTY = "the staff party budget"


def memo(topic: str, preamble: str = PREAMBLE) -> str:
    """A templated memo: the 20-clause disclaimer fills its first two chunks, its body the third."""
    notes = (
        f"Note {i} on {topic}: the committee reviewed {topic} and agreed next steps."
        for i in range(10)
    )
    return f"{preamble}\n\n{' '.join(notes)}"


MEMOS = [{"id": f"memo-{i}", "text": memo(topic)} for i, topic in enumerate(TOPICS)]
# Two copies of one memo: the same (the first chunks of the copies and of the ten memos tie,
# in an order of Chroma's), or each with another small edit in its disclaimer (the copies'
# first chunks score 0.995 together, each 0.996 or more with the memos': every memo ranks
# above the other copy there, every time).
COPIES = {
    "same": (memo(PARTY), memo(PARTY)),
    "edited": (
        memo(PARTY, PREAMBLE.replace("clause 2: this document", "clause 2: this memo")),
        memo(
            PARTY,
            PREAMBLE.replace(
                "clause 9: this document is provided as is, without warranty",
                "clause 9: this document is provided as is, without guarantee",
            ),
        ),
    ),
}


@pytest.mark.parametrize("copies", COPIES)
def test_groups_finds_copies_among_memos_sharing_a_preamble(
    client: FlaskClient, store: KnowledgeStore, copies: str
) -> None:
    """Only the first chunks' neighbours were asked for: with more than five other memos
    behind the same disclaimer, they filled the list, and the copies were not grouped."""
    first, second = COPIES[copies]
    documents = [{"id": "copy-a", "text": first}, *MEMOS, {"id": "copy-b", "text": second}]
    assert client.post("/add", json={"documents": documents}).status_code == 201
    assert client.get("/documents/copy-a").json["chunks"] == 3
    assert groups(store.records, 0.95) == [["copy-a", "copy-b"]]


@pytest.mark.parametrize("copies", COPIES)
def test_reject_finds_a_copy_among_memos_sharing_a_preamble(
    client: FlaskClient, copies: str
) -> None:
    """The second copy was written when its first chunk's four neighbours were memos'."""
    first, second = COPIES[copies]
    documents = [{"id": "copy-a", "text": first}, *MEMOS]
    assert client.post("/add", json={"documents": documents}).status_code == 201
    response = client.post("/add", json={"id": "copy-b", "text": second, "on_duplicate": "reject"})
    assert response.status_code == 409, response.json
    assert "'copy-b' ~ 'copy-a'" in response.json["error"]["message"]
    assert client.get("/documents/copy-b").status_code == 404


def test_a_copy_of_a_text_all_memos_begin_with_is_found(
    client: FlaskClient, store: KnowledgeStore
) -> None:
    """One chunk, the text of every memo's first chunk: its neighbours all tie and it has no
    other chunk to search, so it is asked again with more neighbours, and its copy found."""
    assert client.post("/add", json={"documents": MEMOS}).status_code == 201
    (head,) = store.records.get(["memo-0"])
    client.post("/add", json={"id": "head-a", "text": head.text})
    assert client.get("/documents/head-a").json["chunks"] == 1
    response = client.post("/add", json={"id": "head-b", "text": head.text}).json
    assert [(d["id"], d["existing"]) for d in response["duplicates"]] == [("head-b", "head-a")]
    assert groups(store.records, 0.95) == [["head-a", "head-b"]]


@pytest.mark.parametrize("on_duplicate", ["reject", "skip"])
def test_an_upsert_of_new_metadata_alone_is_not_checked(
    client: FlaskClient, on_duplicate: str
) -> None:
    """A stored document sent again with its text and new metadata makes no new duplicate:
    with a near-duplicate stored, "skip" left its metadata as it was and "reject" answered
    409, while a PATCH of the same metadata succeeded (review helper s32/h6, finding 1)."""
    client.post("/add", json={"documents": [{**ORIGINAL, "metadata": {"rev": 1}}, COPY]})
    body = {"documents": [{**ORIGINAL, "metadata": {"rev": 2}}], "upsert": True}
    response = client.post("/add", json={**body, "on_duplicate": on_duplicate})
    assert response.status_code == 200, response.json  # updated, none created
    assert (response.json["updated"], response.json["skipped"]) == (1, 0)
    assert response.json["duplicates"] == []
    assert client.get("/documents/orig").json["metadata"] == {"rev": 2}
    # a new text is still compared: orig's, a space added, as the copy's
    changed = {"id": "copy", "text": ORIGINAL["text"] + " "}
    again = client.post("/add", json={**body, "documents": [changed], "on_duplicate": on_duplicate})
    assert [d["existing"] for d in again.json.get("duplicates", [])] == (
        [] if on_duplicate == "reject" else ["orig"]
    )
    assert again.status_code == (409 if on_duplicate == "reject" else 200), again.json
    assert client.get("/documents/copy").json["text"] == COPY["text"]


def test_groups_joins_a_family_larger_than_the_neighbours_asked(
    client: FlaskClient, store: KnowledgeStore
) -> None:
    """Six copies of a text and six of it with two words added (0.98 apart): each copy's
    six neighbours were its own text's copies, and the family was listed as two groups;
    only a document that found no pair was asked for more (review helper s32/h6, finding 2)."""
    text = (
        "Gradient clipping rescales the gradient vector when its norm exceeds a set maximum, "
        "which keeps exploding gradients from wrecking recurrent network training."
    )
    documents = [{"id": f"a{i}", "text": text} for i in range(6)]
    documents += [{"id": f"b{i}", "text": text + " Very useful."} for i in range(6)]
    assert client.post("/add", json={"documents": [*documents, OTHER]}).status_code == 201
    assert groups(store.records, 0.95) == [sorted(doc["id"] for doc in documents)]


@pytest.fixture
def copies(store: KnowledgeStore, seed_docs: list[DocumentIn]) -> list[DocumentIn]:
    """Twelve seed documents of one chunk, each stored twice (`<id>` and `<id>-copy`)."""
    texts = [doc for doc in seed_docs if len(store.chunk(doc.text)) == 1][:12]
    store.add([*texts, *(DocumentIn(id=f"{doc.id}-copy", text=doc.text) for doc in texts)])
    return texts


def test_exact_copies_score_1(store: KnowledgeStore, copies: list[DocumentIn]) -> None:
    """A stored vector has length 1 only to float32's precision: a text scored 0.99999917 to
    1 against itself, and a threshold of 1.0 missed about half of the exact copies in
    `kb duplicates --min-score 1`, KB_DUPLICATE_SCORE=1 and a search's min_score of 1.0
    (review helper s32/h6, finding 3)."""
    assert groups(store.records, 1.0) == sorted([doc.id, f"{doc.id}-copy"] for doc in copies)
    found = nearest_stored(
        store.records, store.records.get([doc.id for doc in copies], embeddings=True), 1.0
    )
    assert found == {doc.id: (f"{doc.id}-copy", 1.0) for doc in copies}
    for doc in copies:
        request = QueryRequest(query=doc.text, mode="dense", top_k=2, min_score=1.0)
        (result,) = search(store, request)
        assert [(m.id, m.score) for m in result.matches] == [(doc.id, 1.0), (f"{doc.id}-copy", 1.0)]


def test_kb_duplicates_writes_its_threshold_as_searches_do(
    settings: Settings, embedder: Embedder
) -> None:
    """--min-score 0.99999 was written "score >= 1.00"."""
    store = KnowledgeStore.open(settings, embedder, searching=False)
    try:
        store.add([DocumentIn(id=doc_id, text=ORIGINAL["text"]) for doc_id in ("a", "b")])
    finally:
        store.close()
    env = {"KB_CHROMA_PATH": str(settings.chroma_path), "KB_COLLECTION": settings.collection}
    result = CliRunner().invoke(main, ["duplicates", "--min-score", "0.99999"], env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout == "a\tb\n"
    assert "1 group(s) of near-duplicates at score >= 0.99999\n" in result.output


def test_the_in_memory_neighbours_of_many_vectors_are_each_ones_own(
    client: FlaskClient, store: KnowledgeStore
) -> None:
    """Mirror.nearest_ids scores a batch of vectors in one product (it scanned every row once
    a vector, seconds for an add of 1,000 documents): each list is what that vector's own
    search finds, best first, ties included."""
    texts = [f"Note {i} on {topic}." for i in range(40) for topic in ("bread", "rivers")]
    client.post("/add", json={"documents": [{"text": t} for t in texts], "on_duplicate": "ignore"})
    store.replica.wait_loaded()
    mirror = store.replica.current_mirror()
    assert mirror is not None
    assert mirror._index is None  # exact, as below KB_ANN_MIN_ROWS
    vectors = store.embedder.embed_queries(["bread", "a river's note", "Note 3 on bread."] * 30)
    expected = [[(r.id, s) for r, s in mirror.nearest(vector, 4)] for vector in vectors]
    assert mirror.nearest_ids(vectors, 4) == expected
