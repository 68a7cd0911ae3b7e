"""Writes killed between two Chroma calls (no rollback runs): what they leave, how the store
finds and removes it when it opens again, and what reads and writes do with it meanwhile."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from kb import backup, changes, shared_replica
from kb.collection import RecordCollection
from kb.config import Settings
from kb.embeddings import Embedder
from kb.errors import Conflict
from kb.filters import CompiledFilter
from kb.records import CHUNK, DOC, Record, whole_documents
from kb.repair import survey
from kb.replica import LocalReplica
from kb.schemas import DocumentIn, QueryRequest, UpdateFields
from kb.search import search
from kb.store import KnowledgeStore, WriteMode
from tests.conftest import changed

LONG = (
    "Glaciers carve valleys into a U shape as they grind slowly downhill. Moraines mark "
    "where the ice stopped and dropped the rock it carried. Erratic boulders lie far from "
    "the bedrock they broke from. Meltwater sorts sand and gravel into outwash plains."
)


class Killed(BaseException):
    """The process dying: not an Exception, so no rollback catches it."""


@pytest.fixture
def opened(settings: Settings, embedder: Embedder) -> Iterator[Callable[[], KnowledgeStore]]:
    """Opens the store (16-token chunks) as a new process would; closes what it opened."""
    stores: list[KnowledgeStore] = []

    def open_store() -> KnowledgeStore:
        for store in stores:
            store.close()
        stores.clear()
        stores.append(KnowledgeStore.open(changed(settings, chunk_tokens=16), embedder))
        stores[-1].replica.wait_loaded()
        return stores[-1]

    yield open_store
    for store in stores:
        store.close()


def kill_on(monkeypatch: pytest.MonkeyPatch, method: str, call: int) -> None:
    """RecordCollection.`method`'s `call`-th call (from 1) dies before it reaches Chroma."""
    real = getattr(RecordCollection, method)
    calls = []

    def dying(self: RecordCollection, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == call:
            raise Killed
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RecordCollection, method, dying)


def stored(store: KnowledgeStore) -> dict[str, tuple[str, int]]:
    """Every record in Chroma: id -> (document id, chunk index)."""
    return {r.id: (r.doc_id, r.chunk) for r in store.records.get(texts=False)}


def shrunk_and_killed(opened: Callable[[], KnowledgeStore], monkeypatch: pytest.MonkeyPatch):
    """A chunked document updated to one chunk, the process killed between the upsert of the
    new version and the delete of the old version's later chunks."""
    store = opened()
    store.add(
        [
            DocumentIn(id="ice", text=LONG, metadata={"era": "old"}),
            DocumentIn(id="sea", text="Tides follow the moon.", metadata={"era": "now"}),
        ]
    )
    assert store.get("ice").chunks > 2
    kill_on(monkeypatch, "delete", 1)
    with pytest.raises(Killed):
        store.update("ice", UpdateFields(text="Ice is frozen water.", metadata={"era": "new"}))
    monkeypatch.undo()
    return store


def test_left_over_chunks_match_no_delete_and_no_update_reads_them(
    opened: Callable[[], KnowledgeStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the store is opened again: a delete by the old version's metadata deleted the
    document, and a metadata update wrote the old version's text back into it."""
    store = shrunk_and_killed(opened, monkeypatch)
    assert sum(doc == "ice" for doc, _ in stored(store).values()) > 1  # the tail is there
    assert store.delete_where(CompiledFilter(where={"era": "old"})).deleted == 0
    updated = store.update("ice", UpdateFields(metadata={"checked": True}))
    assert updated.text == "Ice is frozen water."
    assert [key for key, (doc, _) in stored(store).items() if doc == "ice"] == ["ice"]


def test_a_store_opened_after_a_killed_write_removes_what_it_left(
    opened: Callable[[], KnowledgeStore],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    shrunk_and_killed(opened, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="kb.repair"):
        store = opened()
    assert sorted(stored(store)) == ["ice", "sea"]
    assert "removed" in caplog.text
    assert "'ice'" in caplog.text
    assert store.get("ice").text == "Ice is frozen water."
    assert store.stats().chunks == 2
    for mode in ("dense", "keyword", "hybrid"):
        body = {"query": "moraines glaciers", "where": {"era": "old"}, "mode": mode}
        (result,) = search(store, QueryRequest.model_validate({**body, "min_score": -1}))
        assert result.matches == [], mode


def test_a_batch_holds_whole_documents_so_a_kill_between_calls_tears_none(
    opened: Callable[[], KnowledgeStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An add of more records than one Chroma call takes was cut every max_batch records:
    killed after the first call, a document kept its first chunk and part of its chunks,
    and a second load skipped it (its first chunk was there)."""
    store = opened()
    docs = [
        DocumentIn(id=f"d{i}", text=LONG.replace("Glaciers", f"Glaciers {i}")) for i in range(3)
    ]
    chunks = len(store.chunk(docs[0].text))
    store.records.max_batch = chunks + 1  # one document a call, and one chunk of the next
    kill_on(monkeypatch, "_write", 2)
    with pytest.raises(Killed):
        store.add(docs)
    monkeypatch.undo()
    store = opened()
    assert {doc for doc, _ in stored(store).values()} == {"d0"}
    assert len(stored(store)) == chunks
    store.records.max_batch = chunks + 1
    assert store.add(docs, WriteMode.UPSERT).added == 2  # a rerun writes the rest
    assert all(store.get(doc.id).text == doc.text for doc in docs)


def test_a_document_longer_than_a_call_is_written_first_chunk_last(
    opened: Callable[[], KnowledgeStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed part-way, a new document is chunks without a first chunk: removed on open, so
    the document is absent, not served cut short."""
    store = opened()
    store.records.max_batch = 2
    kill_on(monkeypatch, "_write", 2)
    with pytest.raises(Killed):
        store.add([DocumentIn(id="ice", text=LONG)])
    monkeypatch.undo()
    assert "ice" not in stored(store)
    assert stored(store)  # later chunks only
    assert stored(opened()) == {}


@pytest.mark.parametrize("when", ["in a write", "between pages"])
def test_a_restore_killed_part_way_leaves_whole_documents_only(
    opened: Callable[[], KnowledgeStore],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    when: str,
) -> None:
    """Restore wrote the file's pages in order, so a kill left first chunks counting chunks
    in pages never written (served cut short, and nothing said a restore had stopped). Each
    page is a whole write, so a kill between two (reading the file) left no unfinished write
    for the store's next open to find: restore marks the collection until it is done."""
    store = opened()
    docs = [DocumentIn(id=f"d{i}", text=LONG.replace("ice", f"ice {i}")) for i in range(4)]
    store.add(docs)
    backup.write_file(store, tmp_path / "kb.backup")
    store.delete([doc.id for doc in docs])
    monkeypatch.setattr(backup, "PAGE", 3)
    if when == "in a write":
        kill_on(monkeypatch, "_write", 4)
    else:  # before the first page of first chunks, every later chunk written
        restore_records = KnowledgeStore.restore_records

        def dying(self: KnowledgeStore, records: list[Record]) -> None:
            if records and all(record.chunk == 0 for record in records):
                raise Killed
            restore_records(self, records)

        monkeypatch.setattr(KnowledgeStore, "restore_records", dying)
    with pytest.raises(Killed):
        backup.restore(store, tmp_path / "kb.backup")
    monkeypatch.undo()
    assert stored(store)
    store = opened()
    assert stored(store) == {}  # later chunks only were written: removed
    backup.restore(store, tmp_path / "kb.backup")
    assert all(store.get(doc.id).text == doc.text for doc in docs)


def test_a_metadata_update_of_a_document_missing_chunks_is_refused(
    opened: Callable[[], KnowledgeStore],
) -> None:
    """It would store what is left as the whole text, and the loss would no longer show."""
    store = opened()
    store.add([DocumentIn(id="ice", text=LONG)])
    store.records.delete(["ice#chunk1"])  # as an interrupted write of an older kb left it
    with pytest.raises(Conflict, match="lacks chunks"):
        store.update("ice", UpdateFields(metadata={"checked": True}))
    store.update("ice", UpdateFields(text=LONG, metadata={"checked": True}))  # whole: fine
    assert store.get("ice").text == LONG


@contextmanager
def reader_after_a_dead_writer(
    server_settings: Settings, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> Iterator[KnowledgeStore]:
    """Two stores on one server collection: the writer's process dies between a shrinking
    update's two calls, its change-log entry left pending. Yields the other, the reader."""
    settings = changed(server_settings, chunk_tokens=16)
    writer, reader = (KnowledgeStore.open(settings, embedder) for _ in range(2))
    try:
        writer.add([DocumentIn(id="ice", text=LONG, metadata={"era": "old"})])
        reader.replica.wait_loaded()
        kill_on(monkeypatch, "delete", 1)
        monkeypatch.setattr(changes.ChangeLog, "end", lambda *args, **kwargs: None)  # dead
        with pytest.raises(Killed):
            writer.update("ice", UpdateFields(text="Ice is frozen water.", metadata={"era": "new"}))
        monkeypatch.undo()
        assert len(stored(reader)) > 1
        yield reader
    finally:
        writer.close()
        reader.close()


OLD_ERA = {"query": "moraines glaciers", "where": {"era": "old"}, "min_score": -1}


def test_on_a_server_the_first_to_see_a_dead_writers_entry_removes_what_it_left(
    server_settings: Settings, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No store opens again to sweep, so the process that takes the dead writer's change-log
    entry as abandoned (STALE_S old) removes the tail, and its searches stop matching the
    old metadata."""
    with reader_after_a_dead_writer(server_settings, embedder, monkeypatch) as reader:
        monkeypatch.setattr(changes, "STALE_S", 0)
        (result,) = search(reader, QueryRequest.model_validate(OLD_ERA))
        assert result.matches == []
        assert stored(reader) == {"ice": ("ice", 0)}
        assert reader.get("ice").text == "Ice is frozen water."


def failing_deletes(monkeypatch: pytest.MonkeyPatch, times: int) -> list[int]:
    """RecordCollection.delete fails `times` times (the server away), then works; the list
    grows by one for each call that failed."""
    real, failed = RecordCollection.delete, []

    def away(self: RecordCollection, *args: Any, **kwargs: Any) -> Any:
        if len(failed) < times:
            failed.append(1)
            raise ConnectionError("the server is away")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RecordCollection, "delete", away)
    return failed


def test_on_a_server_a_repair_that_failed_fails_no_search_and_is_tried_again(
    server_settings: Settings,
    embedder: Embedder,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The dead writer's entry is marked done only once its leftovers are removed: a removal
    that fails (the server away a moment) is logged, fails no search (the repair is
    housekeeping), and leaves the entry pending, so a later poll repairs."""
    with reader_after_a_dead_writer(server_settings, embedder, monkeypatch) as reader:
        monkeypatch.setattr(changes, "STALE_S", 0)
        # a pause after the failure: the search's new rankings (it drops the tail it ranked,
        # of another version than the document's) catch up without trying the repair again
        monkeypatch.setattr(shared_replica, "REPAIR_WAIT_S", (3600.0, 3600.0))
        failed = failing_deletes(monkeypatch, 1)
        with caplog.at_level(logging.WARNING, logger="kb.shared_replica"):
            search(reader, QueryRequest.model_validate(OLD_ERA))  # answers
        assert failed == [1]
        assert "could not remove what a dead writer left in 1 document" in caplog.text
        assert len(stored(reader)) > 1
        monkeypatch.setattr(reader.replica, "_repair_after", 0.0)  # the pause is over
        (result,) = search(reader, QueryRequest.model_validate(OLD_ERA))
        assert result.matches == []
        assert stored(reader) == {"ice": ("ice", 0)}


def test_on_a_server_a_repair_that_keeps_failing_is_tried_once_a_pause(
    server_settings: Settings, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Searches go on answering while the repair fails, and do not each try it: after a
    failure the next try waits for REPAIR_WAIT_S's pause."""
    with reader_after_a_dead_writer(server_settings, embedder, monkeypatch) as reader:
        monkeypatch.setattr(changes, "STALE_S", 0)
        monkeypatch.setattr(shared_replica, "REPAIR_WAIT_S", (3600.0, 3600.0))
        failed = failing_deletes(monkeypatch, 1_000)
        for _ in range(3):
            search(reader, QueryRequest.model_validate(OLD_ERA))
        assert failed == [1]
        assert len(stored(reader)) > 1


def record(doc_id: str, index: int, chunks: int = 1, version: str = "v1") -> Record:
    rid = doc_id if index == 0 else f"{doc_id}#chunk{index}"
    meta = {DOC: doc_id, CHUNK: index, "_kb_chunks": chunks, "_kb_hash": version}
    return Record(rid, "", meta)


def test_survey_tells_left_overs_from_damage() -> None:
    found = survey(
        [
            *(record("whole", i, 3) for i in range(3)),
            record("shrunk", 0, 1, "v2"),
            record("shrunk", 1, 3),  # the old version's tail
            record("shrunk", 2, 3),
            record("orphan", 1, 2),  # no first chunk: never finished
            record("torn", 0, 3),
            record("torn", 2, 3),  # chunk 1 missing
            record("mixed", 0, 2, "v2"),
            record("mixed", 1, 2),  # of another version
            record("bare", 0, 2),  # counts a chunk it does not have
        ]
    )
    assert sorted(found.leftovers) == ["shrunk#chunk1", "shrunk#chunk2"]
    assert found.orphans == ["orphan#chunk1"]
    assert sorted(found.damaged) == ["bare", "mixed", "torn"]


def test_whole_documents_keeps_documents_in_one_part_and_a_long_one_first_chunk_last() -> None:
    ids = ["a", "a#chunk1", "b", "b#chunk1", "b#chunk2", "c#chunk1", "c", "c#chunk2"]
    ids += ["d#chunk1", "d", "d#chunk2", "d#chunk3", "d#chunk4"]
    parts = whole_documents(ids, 4, str)
    assert parts == [
        ["a#chunk1", "a"],
        ["b#chunk1", "b#chunk2", "b"],
        ["c#chunk1", "c#chunk2", "c"],
        ["d#chunk1", "d#chunk2", "d#chunk3", "d#chunk4"],
        ["d"],
    ]
    assert all(len(part) <= 4 for part in parts)


def test_whole_documents_bounds_a_parts_size_as_well_as_its_count() -> None:
    """A Chroma server's request limit: parts of whole documents while they fit, a document
    larger than a part cut with its first chunk last, an item larger than one alone."""
    ids = ["a", "a#chunk1", "b", "c#chunk1", "c", "c#chunk2", "d", "e"]
    size = {"a": 3, "a#chunk1": 3, "b": 5, "c": 2, "c#chunk1": 4, "c#chunk2": 4, "d": 1, "e": 20}
    parts = whole_documents(ids, 100, str, size.__getitem__, 8)
    assert parts == [["a#chunk1", "a"], ["b"], ["c#chunk1", "c#chunk2"], ["c", "d"], ["e"]]
    assert whole_documents(ids, 2, str, size.__getitem__, 8)[-2:] == [["c", "d"], ["e"]]


def test_a_repair_killed_before_it_removes_what_it_found_is_done_at_the_next_start(
    opened: Callable[[], KnowledgeStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The repair's rebuild committed the copies at the collection's generation before the
    delete of the leftovers: killed in between (47.6 ms on a 25k-record store), no later
    start repaired, and the leftovers skewed counts and searches for good (review helper 67)."""
    shrunk_and_killed(opened, monkeypatch)

    def dies(self: LocalReplica, ids: object) -> None:
        raise Killed  # between the rebuild's commit and the delete's write (its generation)

    monkeypatch.setattr(LocalReplica, "writing", dies)
    with pytest.raises(Killed):
        opened()
    monkeypatch.undo()
    store = opened()
    assert sorted(stored(store)) == ["ice", "sea"]
    assert store.stats().chunks == 2
    assert store.replica.keyword.generation == store.replica.generation()
    again = opened()  # a clean store: nothing repaired, the copies current as they are
    assert again.replica.current_mirror() is not None
    assert sorted(stored(again)) == ["ice", "sea"]


def test_closing_the_store_waits_for_a_write_under_way(
    opened: Callable[[], KnowledgeStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """kb serve closes its app on SIGTERM after waitress's 5 s wait for request threads: the
    store was closed under a write of several Chroma calls, cut between two, and the next
    start found half a write (review helper 67)."""
    import threading
    import time

    store = opened()
    real = RecordCollection._write
    started = threading.Event()

    def slow(self: RecordCollection, *args: Any, **kwargs: Any) -> None:
        started.set()
        time.sleep(0.5)  # the first of the write's calls, as a long one
        real(self, *args, **kwargs)

    monkeypatch.setattr(RecordCollection, "_write", slow)
    writer = threading.Thread(target=store.add, args=([DocumentIn(id="ice", text=LONG)],))
    writer.start()
    assert started.wait(10)
    store.close()  # waits for the write
    writer.join(10)
    monkeypatch.undo()
    reopened = opened()
    assert reopened.get("ice").text == LONG
    assert reopened.get("ice").chunks == len([r for r in stored(reopened) if "ice" in r])
