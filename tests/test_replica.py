"""The keyword index and mirror follow Chroma: after crashes, and across kb processes that
share one Chroma server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kb import changes
from kb.chunking import Chunk
from kb.config import Settings
from kb.embeddings import Embedder
from kb.records import Record, build_records
from kb.schemas import DocumentIn, QueryRequest, UpdateFields
from kb.search import search
from kb.store import KnowledgeStore


def found(store: KnowledgeStore, text: str, mode: str, **extra: object) -> list[str]:
    request = QueryRequest.model_validate({"query": text, "mode": mode, "min_score": -1, **extra})
    return [match.id for match in search(store, request)[0].matches]


def embedded(store: KnowledgeStore, doc_id: str, text: str) -> list[Record]:
    """The records of a one-chunk document, embedded, as a store would write them."""
    (record,) = build_records(doc_id, text, None, [Chunk(0, text)])
    record.embedding = store.embedder.embed_documents([text])[0]
    return [record]


@pytest.fixture
def two(server_settings: Settings, embedder: Embedder) -> Iterator[tuple]:
    """Two kb processes' stores on one Chroma server collection."""
    first = KnowledgeStore.open(server_settings, embedder)
    second = KnowledgeStore.open(server_settings, embedder)
    first.replica.wait_loaded()
    second.replica.wait_loaded()
    yield first, second
    first.close()
    second.close()


def test_writes_of_one_process_reach_the_others_copies(two: tuple) -> None:
    first, second = two
    first.add([DocumentIn(id="raft", text="Raft elects a leader by randomized timeouts.")])
    # keyword search reads the second process's own index; filtered search its mirror
    assert found(second, "randomized timeouts", "keyword") == ["raft"]
    assert found(second, "leader election", "dense") == ["raft"]
    first.update("raft", UpdateFields(text="Paxos agrees through numbered proposals."))
    assert found(second, "randomized timeouts", "keyword") == []
    assert found(second, "numbered proposals", "keyword") == ["raft"]
    first.update("raft", UpdateFields(metadata={"topic": "consensus"}))
    assert found(second, "proposals", "dense", filters={"topic": "consensus"}) == ["raft"]
    first.delete(["raft"])
    assert found(second, "numbered proposals", "keyword") == []
    assert found(second, "proposals", "dense", filters={"topic": "consensus"}) == []


def test_a_writer_that_died_mid_write_is_caught_up(two: tuple, monkeypatch) -> None:
    first, second = two
    records = embedded(first, "orphan", "Lighthouses warn ships off rocky coasts.")
    first.replica.changes.begin([r.id for r in records])  # ... and the process dies here:
    first.records.upsert(records)  # the write landed, the entry stays pending
    assert found(second, "lighthouses", "keyword") == []  # a live writer may still finish
    monkeypatch.setattr(changes, "STALE_S", 0)
    assert found(second, "lighthouses", "keyword") == ["orphan"]


def test_an_embedded_write_cut_off_before_its_index_update_is_redone(
    settings: Settings, embedder: Embedder
) -> None:
    store = KnowledgeStore.open(settings, embedder)
    records = embedded(store, "late", "Tides follow the moon's pull on the oceans.")
    with store.replica.writing([r.id for r in records]):
        store.records.upsert(records)  # a crash here: Chroma has it, the index does not
    store.close()
    reopened = KnowledgeStore.open(settings, embedder)
    try:
        assert found(reopened, "tides moon", "keyword") == ["late"]
    finally:
        reopened.close()
