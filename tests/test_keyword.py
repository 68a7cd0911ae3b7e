"""The BM25 keyword index: terms, ranking, filters, and staying in step with the store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient

from kb.config import Settings
from kb.keyword import KeywordIndex, index_file, query_terms
from kb.records import Record
from kb.schemas import DocumentIn, UpdateFields
from kb.store import KnowledgeStore


def record(rid: str, text: str) -> Record:
    vector = np.full(4, 0.5, dtype=np.float32)
    return Record(rid, text, {"_kb_doc": rid, "_kb_chunk": 0, "_kb_chunks": 1}, vector)


def test_query_terms_drop_stopwords_and_punctuation() -> None:
    assert query_terms("What is the BM25 score, and why?") == ["bm25", "score"]
    assert query_terms("the of and") == []


def test_index_ranks_by_bm25_and_follows_updates(tmp_path: Path) -> None:
    index = KeywordIndex(tmp_path / "k.sqlite3")
    index.apply(
        [
            record("a", "raft consensus elects a leader"),
            record("b", "paxos consensus"),
            record("c", "baking bread"),
        ],
        [],
        1,
    )
    assert [h.record_id for h in index.search("leader consensus", 10)] == ["a", "b"]
    assert [h.record_id for h in index.search("elections", 10)] == ["a"]  # Porter stemming
    assert [h.record_id for h in index.search("consensus", 10, allowed={"b"}.__contains__)] == ["b"]
    assert index.search("raft", 1)[0].vector.tolist() == [0.5] * 4
    index.apply([record("a", "now about sourdough")], ["b"], 2)
    assert index.search("consensus", 10) == []
    assert index.generation == 2
    assert index.count() == 2
    index.close()
    reopened = KeywordIndex(tmp_path / "k.sqlite3")
    assert (reopened.generation, reopened.count()) == (2, 2)
    reopened.close()


def test_a_sample_reads_the_picked_positions_in_rowid_order(tmp_path: Path) -> None:
    index = KeywordIndex(tmp_path / "k.sqlite3")
    made = [record(f"r{i}", f"text {i}") for i in range(30)]
    for i, r in enumerate(made):
        r.embedding = np.full(4, i, dtype=np.float32)
    index.apply(made, [], 1)
    index.apply([], [f"r{i}" for i in range(0, 30, 3)], 2)  # gaps in the rowids
    asked: list[int] = []

    def pick(rows: int) -> np.ndarray:
        asked.append(rows)
        return np.array([0, 1, 5, 19])

    rows, vectors = index.sample(pick, 4)
    assert rows == asked[0] == 20
    kept = [i for i in range(30) if i % 3]  # positions 0, 1, 5, 19 of what is left
    assert vectors.tolist() == [[float(kept[p])] * 4 for p in (0, 1, 5, 19)]
    rows, vectors = index.sample(lambda rows: np.arange(0), 4)
    assert (rows, vectors.shape) == (20, (0, 4))
    index.close()


def docs_about(store: KnowledgeStore) -> None:
    store.add(
        [
            DocumentIn(
                id="raft",
                text="Raft elects a leader with randomized election timeouts.",
                metadata={"category": "databases"},
            ),
            DocumentIn(
                id="bm25",
                text="BM25 saturates term frequency with the k1 parameter.",
                metadata={"category": "search"},
            ),
            DocumentIn(
                id="bread",
                text="Sourdough bread needs a lively starter.",
                metadata={"category": "baking"},
            ),
        ]
    )


def keyword_ids(store: KnowledgeStore, text: str) -> list[str]:
    return [hit.doc_id for hit in store.keyword.search(text, 10)]


def test_store_writes_keep_the_index_in_step(store: KnowledgeStore) -> None:
    docs_about(store)
    assert keyword_ids(store, "leader election") == ["raft"]
    store.update("raft", UpdateFields(text="Paxos reaches agreement among acceptors."))
    assert keyword_ids(store, "leader election") == []
    assert keyword_ids(store, "acceptors") == ["raft"]
    store.delete(["bm25"])
    assert keyword_ids(store, "saturates") == []
    assert store.keyword.generation == store.replica.generation()


def test_a_missing_or_stale_index_is_rebuilt(settings: Settings, embedder) -> None:
    store = KnowledgeStore.open(settings, embedder)
    docs_about(store)
    store.close()
    store.keyword.path.unlink()
    reopened = KnowledgeStore.open(settings, embedder)
    assert keyword_ids(reopened, "sourdough starter") == ["bread"]
    # a write the index did not see (a crash between the two writes, another process)
    reopened.records.set_settings_value("kb_generation", reopened.replica.generation() + 5)
    reopened.records.delete(["bread"])
    reopened.replica.catch_up()
    assert keyword_ids(reopened, "sourdough starter") == []
    reopened.close()


def test_an_index_of_an_older_schema_is_rebuilt(settings: Settings, embedder) -> None:
    store = KnowledgeStore.open(settings, embedder)
    docs_about(store)
    store.close()
    with sqlite3.connect(store.keyword.path) as db:  # the first schema: no vectors, no entries
        db.executescript(
            """
            DROP TABLE chunks; DROP TABLE entries; DELETE FROM state;
            INSERT INTO state VALUES ('schema', 1);
            CREATE VIRTUAL TABLE chunks USING fts5(text, record_id UNINDEXED, doc_id UNINDEXED);
            INSERT INTO state VALUES ('generation', 1);
            """
        )
    reopened = KnowledgeStore.open(settings, embedder)
    hit = reopened.keyword.search("sourdough starter", 10)[0]
    assert hit.doc_id == "bread"
    (stored,) = reopened.records.get(["bread"], embeddings=True)
    assert np.allclose(hit.vector, stored.embedding)
    reopened.close()


@pytest.mark.parametrize("damage", ["garbage", "torn"])
def test_a_damaged_index_is_moved_aside_and_rebuilt(
    settings: Settings, embedder, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = KnowledgeStore.open(settings, embedder)
    docs_about(store)
    store.close()
    path = store.keyword.path
    with sqlite3.connect(path) as db:  # the write-ahead log into the file: one file to damage
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    whole = path.read_bytes()
    # written over ("file is not a database"), or a copy cut short ("malformed"): every
    # command stopped on it with a traceback
    damaged = b"garbage\n" if damage == "garbage" else whole[:4096]
    path.write_bytes(damaged)
    reopened = KnowledgeStore.open(settings, embedder)
    assert keyword_ids(reopened, "sourdough starter") == ["bread"]
    reopened.close()
    moved = {p.name for p in path.parent.glob(path.name + ".damaged-*")}
    (aside,) = [path.parent / name for name in moved if not name.endswith(("-wal", "-shm"))]
    assert aside.read_bytes() == damaged  # kept as it was, for a look
    assert moved <= {aside.name, aside.name + "-wal", aside.name + "-shm"}  # its log with it
    assert f"keyword index {path} is damaged" in caplog.text
    assert f"moved to {aside}" in caplog.text


def test_the_longest_collection_name_has_an_index_file_a_folder_can_hold(
    tmp_path: Path, embedder
) -> None:
    """`<collection>.keyword.sqlite3` of a name kb takes (505 characters: Chroma's 512 less
    '-kb-log') passed the 255 bytes of a file name past 231 characters (SQLite adds
    '-journal'): the store could not open (review helper 97). Such a name's file is its start
    and a digest of all of it; it is found again, and moved aside when damaged."""
    longest = "a" * 504 + "z"
    settings = Settings(chroma_path=tmp_path / "db", collection=longest)
    store = KnowledgeStore.open(settings, embedder)
    docs_about(store)
    store.close()
    path = store.keyword.path
    assert path.name.startswith("a" * 150 + "+")
    assert path.name.endswith(".keyword.sqlite3")  # what kb cluster's check looks for
    assert len(path.name) + len(".damaged-20260101-000000-99-wal") <= 255
    twin = Settings(chroma_path=tmp_path / "db", collection="a" * 505)  # the same start
    assert index_file(twin.chroma_path, twin.collection) != path
    path.write_bytes(b"garbage\n")
    reopened = KnowledgeStore.open(settings, embedder)
    assert reopened.keyword.path == path
    assert keyword_ids(reopened, "sourdough starter") == ["bread"]
    reopened.close()
    assert [p.read_bytes() for p in path.parent.glob(path.name + ".damaged-*")] == [b"garbage\n"]


@pytest.mark.parametrize("length", [3, 231])
def test_a_collection_name_whose_index_file_fitted_keeps_it(tmp_path: Path, length: int) -> None:
    """Stores made before keep their index (a new name would rebuild it from Chroma)."""
    name = "k" * length
    assert index_file(tmp_path, name) == tmp_path / f"{name}.keyword.sqlite3"
    KeywordIndex(index_file(tmp_path, name)).close()  # and SQLite can make it


def test_an_index_that_cannot_be_opened_for_another_reason_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "k.sqlite3"
    path.mkdir()  # not a damaged file: nothing to move aside
    with pytest.raises(sqlite3.OperationalError, match="unable to open"):
        KeywordIndex(path)
    assert path.is_dir()
    assert list(tmp_path.iterdir()) == [path]


@pytest.fixture
def topics(client: FlaskClient, store: KnowledgeStore) -> FlaskClient:
    docs_about(store)
    return client


def test_keyword_mode_reports_cosine_and_bm25(topics: FlaskClient) -> None:
    result = topics.post(
        "/query", json={"query": "k1 parameter", "mode": "keyword", "min_score": -1}
    ).json
    best = result["matches"][0]
    assert best["id"] == "bm25"
    assert best["keyword_score"] > 0
    assert -1 <= best["score"] <= 1
    assert best["fused_score"] is None


@pytest.mark.parametrize("fusion", ["rrf", "score"])
def test_hybrid_fuses_both_sides_and_applies_filters(topics: FlaskClient, fusion: str) -> None:
    body = {"query": "how is a leader chosen", "mode": "hybrid", "fusion": fusion, "min_score": -1}
    result = topics.post("/query", json=body).json
    assert result["matches"][0]["id"] == "raft"
    assert all(m["fused_score"] is not None for m in result["matches"])
    filtered = topics.post("/query", json={**body, "filters": {"category": "baking"}}).json
    assert [m["id"] for m in filtered["matches"]] == ["bread"]


def test_the_threshold_compares_cosine_in_every_mode(topics: FlaskClient) -> None:
    for mode in ("dense", "keyword", "hybrid"):
        result = topics.post(
            "/query", json={"query": "sourdough starter", "mode": mode, "min_score": 0.9}
        ).json
        assert result["matches"] == [], mode
        assert result["best_rejected_score"] < 0.9


def test_a_damaged_index_of_a_name_too_long_to_move_aside_as_it_is_is_moved_under_a_digest(
    tmp_path: Path, embedder, caplog: pytest.LogCaptureFixture
) -> None:
    """A name of 216-231 bytes keeps its file name (it fits with '-journal'), but not with
    '.damaged-<time>' added: moving a damaged index aside failed with a traceback (Errno 36)
    and the store could not open (review helper 106). It is moved aside under its digest."""
    settings = Settings(chroma_path=tmp_path / "db", collection="b" * 225)
    store = KnowledgeStore.open(settings, embedder)
    docs_about(store)
    store.close()
    path = store.keyword.path
    assert path.name == "b" * 225 + ".keyword.sqlite3"
    path.write_bytes(b"garbage\n")
    reopened = KnowledgeStore.open(settings, embedder)
    assert keyword_ids(reopened, "sourdough starter") == ["bread"]
    reopened.close()
    (aside,) = [p for p in path.parent.glob("*.damaged-*") if not p.name.endswith("-wal")]
    assert aside.read_bytes() == b"garbage\n"
    assert f"moved to {aside}" in caplog.text
