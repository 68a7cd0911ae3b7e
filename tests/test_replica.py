"""The keyword index and mirror follow Chroma: after crashes, and across kb processes that
share one Chroma server."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kb import backup, changes
from kb import store as store_module
from kb.app import close_app, create_app
from kb.chunking import Chunk
from kb.collection import RecordCollection
from kb.config import Settings
from kb.embeddings import Embedder
from kb.errors import ConfigError, StoreUnavailable
from kb.filters import CompiledFilter
from kb.keyword import KeywordIndex
from kb.mirror import Mirror
from kb.records import Record, build_records
from kb.schemas import DocumentIn, QueryRequest, UpdateFields
from kb.search import CALIBRATED_KEY, search
from kb.shared_replica import OWNER, SCRATCH_PREFIX, scratch_folder
from kb.store import KnowledgeStore, WriteMode
from tests.conftest import BUSY, FailingFirst, changed


def found(store: KnowledgeStore, text: str, mode: str, **extra: object) -> list[str]:
    request = QueryRequest.model_validate({"query": text, "mode": mode, "min_score": -1, **extra})
    return [match.id for match in search(store, request)[0].matches]


def embedded(store: KnowledgeStore, doc_id: str, text: str) -> list[Record]:
    """The records of a one-chunk document, embedded, as a store would write them."""
    (record,) = build_records(doc_id, text, None, [Chunk(0, text)])
    record.embedding = store.embedder.embed_documents([text])[0]
    return [record]


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


def test_a_write_of_ours_overtaken_by_another_hosts_leaves_the_copies_on_chroma(
    server_settings: Settings, embedder: Embedder, tmp_path, monkeypatch
) -> None:
    """Two hosts (their own write locks) write one document. Ours lands in Chroma, theirs
    lands after it, and a search of ours re-reads theirs, all before our writing thread
    applies our records to the copies: applied then, ours replaced theirs there for good
    (their change log entry was seen), while Chroma held theirs."""
    ours = KnowledgeStore.open(server_settings, embedder)
    theirs = KnowledgeStore.open(changed(server_settings, lock_dir=tmp_path / "b"), embedder)
    try:
        ours.add([DocumentIn(id="d1", text="Original notes about mountains.")])
        upsert = ours.records.upsert

        def overtaken(*args: Any, **kwargs: Any) -> Any:
            written = upsert(*args, **kwargs)  # ours landed; the other host writes, we search:
            theirs.add([DocumentIn(id="d1", text="Omega nebula.")], mode=WriteMode.UPSERT)
            assert found(ours, "omega nebula", "keyword") == ["d1"]
            return written

        monkeypatch.setattr(ours.records, "upsert", overtaken)
        ours.add([DocumentIn(id="d1", text="Alpha centauri.")], mode=WriteMode.UPSERT)
        assert theirs.get("d1").text == "Omega nebula."  # what Chroma holds
        assert found(ours, "omega nebula", "keyword") == ["d1"]  # the keyword index
        assert found(ours, "alpha centauri", "keyword") == []
        request = QueryRequest.model_validate({"query": "stars", "mode": "dense", "min_score": -1})
        (hit,) = search(ours, request)[0].matches  # the mirror
        assert hit.text == "Omega nebula."
    finally:
        ours.close()
        theirs.close()


def test_the_hosts_write_lock_is_one_file_per_server_and_collection() -> None:
    """It was beside KB_CHROMA_PATH, relative by default: kb serve and a kb load started in
    other folders took two locks, and lost the 409 on an id the other had just written."""
    base = Settings(chroma_url="http://127.0.0.1:8000", collection="notes")
    assert base.lock_dir == Path(tempfile.gettempdir())
    named = changed(base, chroma_url="http://Kb-Store:8000")
    assert store_module._write_lock_path(named) == store_module._write_lock_path(
        changed(base, chroma_url="http://kb-store:8000")
    )
    lock = store_module._write_lock_path(base)
    assert lock.parent == base.lock_dir
    for same in ({"chroma_path": "elsewhere"}, {"chroma_url": "http://127.0.0.1:8000/"}):
        assert store_module._write_lock_path(changed(base, **same)) == lock
    for other in ({"collection": "Notes"}, {"chroma_url": "http://127.0.0.1:8001"}):
        assert store_module._write_lock_path(changed(base, **other)) != lock


def test_writers_with_other_store_paths_on_one_host_take_one_lock(
    server_settings: Settings, embedder: Embedder, tmp_path: Path
) -> None:
    first = KnowledgeStore.open(changed(server_settings, chroma_path=tmp_path / "a"), embedder)
    second = KnowledgeStore.open(changed(server_settings, chroma_path=tmp_path / "b"), embedder)
    try:
        with first._lock:  # first is writing: second's write waits for it
            writer = threading.Thread(
                target=second.add, args=([DocumentIn(id="w", text="Waits its turn.")],)
            )
            writer.start()
            writer.join(0.5)
            assert writer.is_alive()
        writer.join(30)
        assert second.get("w").text == "Waits its turn."
    finally:
        first.close()
        second.close()


def test_a_lock_dir_kb_cannot_use_is_an_error_naming_it(
    server_settings: Settings, embedder: Embedder, tmp_path: Path
) -> None:
    """A store on a server takes the lock as it opens (it builds its copies under it)."""
    (tmp_path / "file").write_text("not a folder")
    settings = changed(server_settings, lock_dir=tmp_path / "file" / "locks")
    scratch = set(Path(tempfile.gettempdir()).glob("kb-replica-*"))
    with pytest.raises(ConfigError, match=r"write lock .* \(KB_LOCK_DIR\): Not a directory"):
        KnowledgeStore.open(settings, embedder)
    assert set(Path(tempfile.gettempdir()).glob("kb-replica-*")) <= scratch  # none left


def test_scratch_copies_of_processes_that_died_are_removed_as_a_store_opens(
    server_settings: Settings, embedder: Embedder
) -> None:
    """Each process on a server keeps its copies (every record's text and vector) in a
    folder of the system's temporary folder, removed when it closes the store: one killed
    left its folder for good, and every restart after a crash left one more."""
    dead = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))  # its owner's lock died with it
    (dead / OWNER).touch()
    (dead / "keyword.sqlite3").write_bytes(b"every text and vector")
    older = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))  # an older kb's: no owner file
    live, held = scratch_folder()  # another process's, alive
    store = KnowledgeStore.open(server_settings, embedder)
    try:
        assert not dead.exists()
        assert older.exists()
        assert live.exists()
        assert store.replica._scratch.exists()
    finally:
        store.close()
        os.close(held)
        shutil.rmtree(live)
        shutil.rmtree(older)
    assert not store.replica._scratch.exists()


def test_a_process_that_will_not_search_builds_no_copies_and_its_writes_reach_the_others(
    two: tuple, server_settings: Settings, embedder: Embedder, monkeypatch
) -> None:
    """kb load, export, backup and calibrate on a server read every record into copies they
    never used, holding the host's write lock (the service's writes waited meanwhile)."""
    first, second = two
    first.add([DocumentIn(id="old", text="Glaciers carve valleys over millennia.")])
    pages, read = RecordCollection.pages, []

    def every_record(self: RecordCollection, *args: object, **kwargs: object) -> object:
        read.append(self)
        return pages(self, *args, **kwargs)

    monkeypatch.setattr(RecordCollection, "pages", every_record)
    loader = KnowledgeStore.open(server_settings, embedder, searching=False)
    try:
        assert read == []
        loader.add([DocumentIn(id="new", text="Volcanoes build islands from lava.")])
        assert found(second, "volcanoes lava", "keyword") == ["new"]
        assert read == []
        # a search on it, though none of kb's commands makes one, builds them then
        assert found(loader, "volcanoes lava", "keyword") == ["new"]
        assert found(loader, "glaciers valleys", "keyword") == ["old"]
        assert read == [loader.records]
    finally:
        loader.close()


def test_a_writer_that_died_mid_write_is_caught_up(two: tuple, monkeypatch) -> None:
    first, second = two
    records = embedded(first, "orphan", "Lighthouses warn ships off rocky coasts.")
    first.replica.changes.begin([r.id for r in records])  # ... and the process dies here:
    first.records.upsert(records)  # the write landed, the entry stays pending
    assert found(second, "lighthouses", "keyword") == []  # a live writer may still finish
    monkeypatch.setattr(changes, "STALE_S", 0)
    assert found(second, "lighthouses", "keyword") == ["orphan"]


def test_a_write_under_way_longer_than_a_dead_writers_wait_is_not_taken_for_one(
    two: tuple, monkeypatch
) -> None:
    """A pending entry was judged by its first ts: a write longer than STALE_S (a large
    batch to a slow server) was taken for a dead writer's, and another host's repair deleted
    the chunks it had written so far. A write under way renews its entry's ts."""
    first, second = two
    monkeypatch.setattr(changes, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(changes, "STALE_S", 0.5)
    log = first.replica.changes
    entry = log.begin(["slow"])
    time.sleep(1.0)  # twice STALE_S
    poll = second.replica.changes.changes()
    assert poll is not None
    assert entry not in poll.stale
    log.end(entry)
    time.sleep(0.2)  # no beat after the end makes it pending again
    (meta,) = log._log.get(ids=[entry], include=["metadatas"])["metadatas"]
    assert meta["state"] == changes.DONE
    entry = log.begin(["dead"])
    log._underway.pop(entry).stop.set()  # its writer died: the beats stop
    time.sleep(1.0)
    poll = second.replica.changes.changes()
    assert poll is not None
    assert entry in poll.stale


def test_a_change_log_that_fails_around_a_write_is_no_500(two: tuple, monkeypatch) -> None:
    """Logging a write to the change log was outside the store's error mapping: a failure
    before the write was a 500, one after it (the write stood) a 500 too, and the other
    processes missed the write until its pending entry was STALE_S old."""
    first, second = two
    log, put = first.replica.changes._log, first.replica.changes._log.upsert

    def failing(state: str) -> Callable[..., object]:
        def upsert(**kwargs: object) -> object:
            if kwargs["metadatas"][0]["state"] == state:  # type: ignore[index]
                raise RuntimeError("connection reset")
            return put(**kwargs)

        return upsert

    monkeypatch.setattr(log, "upsert", failing(changes.PENDING))
    with pytest.raises(StoreUnavailable):  # before the write: nothing written
        first.add([DocumentIn(id="never", text="Never written.")])
    assert first.get_many(["never"]) == {}
    monkeypatch.setattr(log, "upsert", failing(changes.DONE))
    first.add([DocumentIn(id="kept", text="Penguins huddle against the cold.")])  # no error
    assert first.get("kept").text == "Penguins huddle against the cold."
    monkeypatch.setattr(changes, "STALE_S", 0)  # the others take it as a dead writer's
    assert found(second, "penguins", "keyword") == ["kept"]


def test_a_write_listing_more_ids_than_one_log_entry_holds_is_logged_in_several(
    two: tuple, monkeypatch
) -> None:
    """A delete by filter or a restore's clear lists every record it deletes in the change
    log, and a Chroma server refuses a request above its payload limit (about 40 MB): one
    entry for the ids of a large collection failed the delete. They are cut into entries of
    at most ENTRY_CHARS, each pending during the write (renewed while it lasts), then done."""
    first, second = two
    monkeypatch.setattr(changes, "ENTRY_CHARS", 120)  # about 10 short ids
    docs = [
        DocumentIn(id=f"note-{n:02d}", text=f"Lighthouse keeper's note {n}.", metadata={"k": 1})
        for n in range(30)
    ]
    first.add(docs)
    assert len(found(second, "lighthouse keeper", "keyword", top_k=50)) == 30
    log = first.replica.changes
    before = set(log._log.get()["ids"])
    assert first.delete_where(CompiledFilter(where={"k": 1})).deleted == 30
    got = log._log.get(include=["documents", "metadatas"])
    new = [
        (text, meta)
        for entry, text, meta in zip(got["ids"], got["documents"], got["metadatas"], strict=True)
        if entry not in before
    ]
    assert len(new) >= 3
    assert all(len(text) <= 120 and meta["state"] == changes.DONE for text, meta in new)
    assert sorted(i for text, _ in new for i in json.loads(text)) == [d.id for d in docs]
    assert found(second, "lighthouse keeper", "keyword") == []
    assert found(second, "lighthouse keeper", "dense") == []

    monkeypatch.setattr(changes, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(changes, "STALE_S", 0.5)
    ids = [d.id for d in docs]
    entry = log.begin(ids)
    pieces = {piece for piece, _ in changes.pieces(entry, ids)}
    assert len(pieces) >= 3
    time.sleep(1.0)  # twice STALE_S: every piece was renewed
    poll = second.replica.changes.changes()
    assert poll is not None
    assert not pieces & set(poll.stale)
    log.end(entry)
    states = log._log.get(ids=sorted(pieces), include=["metadatas"])["metadatas"]
    assert [meta["state"] for meta in states] == [changes.DONE] * len(pieces)


@pytest.mark.parametrize("read", ["poll", "entries"])
def test_a_change_log_that_cannot_be_read_fails_a_search_as_the_stores_503(
    two: tuple, monkeypatch, read: str
) -> None:
    """A search polls the change log first, and its reads (the poll, then the ids of the
    entries it found) were outside the store's error mapping: with the Chroma server away a
    search was a 500 with httpx's ConnectError, where a get or an add was a 503."""
    first, second = two
    first.add([DocumentIn(id="kept", text="Penguins huddle against the cold.")])
    log = second.replica.changes._log
    real = log.get

    def get(**kwargs: object) -> object:
        if read == "poll" or "ids" in kwargs:
            raise ConnectionError("[Errno 111] Connection refused")
        return real(**kwargs)

    monkeypatch.setattr(log, "get", get)
    with pytest.raises(StoreUnavailable, match="Connection refused"):
        found(second, "penguins", "dense")
    monkeypatch.setattr(log, "get", real)  # the server is back: so are the searches
    assert found(second, "penguins", "dense") == ["kept"]


def threshold(store: KnowledgeStore) -> tuple[float, str]:
    """The threshold a search of `store` applies when the request sets none, and its source."""
    request = QueryRequest.model_validate({"query": "anything", "mode": "dense"})
    used = search(store, request)[0].threshold
    return used.min_score, used.source


def test_a_threshold_one_process_stores_is_the_others_at_their_next_search(two: tuple) -> None:
    """`kb calibrate --write` and `kb restore` store the threshold from their own process; the
    others read the collection's settings once, when they opened, and kept the configured
    threshold until restarted (gunicorn's workers could each apply another)."""
    first, second = two
    assert threshold(second) == (0.4, "configured")
    first.set_setting(CALIBRATED_KEY, 0.9)
    assert threshold(second) == (0.9, "calibrated")
    first.set_setting(CALIBRATED_KEY, None)  # a restore of a backup without a threshold
    assert threshold(second) == (0.4, "configured")


def test_info_shows_the_threshold_another_process_stored(
    server_settings: Settings, embedder: Embedder
) -> None:
    """The search page reads its default threshold from /info."""
    app = create_app(server_settings, embedder=embedder)
    other = KnowledgeStore.open(server_settings, embedder, searching=False)  # kb calibrate
    try:
        client = app.test_client()
        assert client.get("/info").get_json()["threshold"]["source"] == "configured"
        other.set_setting(CALIBRATED_KEY, 0.62)
        assert client.get("/info").get_json()["threshold"] == {
            "min_score": 0.62,
            "source": "calibrated",
        }
    finally:
        other.close()
        close_app(app)


def test_a_setting_written_by_a_process_keeps_what_another_wrote_since_it_opened(
    two: tuple,
) -> None:
    """A process merged its new setting into the settings as it had read them, putting back
    the threshold another process had stored since."""
    first, second = two
    first.set_setting(CALIBRATED_KEY, 0.9)
    second.set_setting("kb_note", "kept")  # second has not searched: its copy is old
    for store in (first, second):
        store.records.reread_settings()
        assert store.records.settings_value(CALIBRATED_KEY) == 0.9
        assert store.records.settings_value("kb_note") == "kept"


def test_a_process_idle_past_the_logs_retention_reads_the_settings_again(
    two: tuple, monkeypatch
) -> None:
    """Such a process rebuilds its copies rather than trust the log (its entries may have been
    pruned): it reads the settings again too."""
    first, second = two
    assert threshold(second) == (0.4, "configured")
    monkeypatch.setattr(first.replica, "settings_changed", lambda: None)  # an entry pruned
    first.set_setting(CALIBRATED_KEY, 0.7)
    assert threshold(second) == (0.4, "configured")  # nothing in the log says so
    second.replica.changes._polled -= changes.RETENTION_S
    assert threshold(second) == (0.7, "calibrated")


def test_a_failed_re_read_of_anothers_writes_is_tried_again(two: tuple, monkeypatch) -> None:
    """The change log's entries count as seen only once their records were re-read: a
    transient failure must not leave a deleted document in the copies for good."""
    first, second = two
    first.add([DocumentIn(id="gone", text="The vault code is alpha bravo.")])
    assert found(second, "vault code", "keyword") == ["gone"]
    first.delete(["gone"])
    monkeypatch.setattr(
        second.records, "get", FailingFirst(StoreUnavailable("reset"), second.records.get)
    )
    with pytest.raises(StoreUnavailable):
        second.replica.catch_up()
    assert found(second, "vault code", "keyword") == []
    assert found(second, "vault code", "dense") == []


@pytest.mark.parametrize("copy", ["keyword", "mirror"])
def test_a_failed_update_of_a_servers_copies_rebuilds_them(
    two: tuple, monkeypatch, copy: str
) -> None:
    first, second = two
    first.add([DocumentIn(id="gone", text="The vault code is alpha bravo.")])
    assert found(second, "vault code", "dense") == ["gone"]
    first.delete(["gone"])
    target = getattr(second.replica, copy)
    monkeypatch.setattr(target, "apply", FailingFirst(OSError("disk full"), target.apply))
    second.replica.catch_up()  # logged; the copies are behind Chroma now
    assert found(second, "vault code", "keyword") == []
    assert found(second, "vault code", "dense") == []


def test_a_failed_write_of_ours_is_re_read_from_the_server(two: tuple) -> None:
    """A write that failed (its rollback too) may have left records in Chroma that the
    writer's own copies never got: the writer re-reads its ids like another's."""
    first, _ = two
    records = embedded(first, "late", "Tides follow the moon's pull on the oceans.")

    def cut_off() -> None:
        with first.replica.writing([r.id for r in records]):
            first.records.upsert(records)
            raise StoreUnavailable("cut off before the copies were updated")

    with pytest.raises(StoreUnavailable):
        cut_off()
    assert found(first, "tides moon", "keyword") == ["late"]


def test_an_embedded_mirror_that_failed_an_update_is_rebuilt(
    settings: Settings, embedder: Embedder, monkeypatch
) -> None:
    store = KnowledgeStore.open(settings, embedder)
    try:
        store.replica.wait_loaded()
        mirror = store.replica.mirror
        monkeypatch.setattr(mirror, "apply", FailingFirst(OSError("out of memory"), mirror.apply))
        store.add([DocumentIn(id="late", text="Tides follow the moon's pull on the oceans.")])
        assert found(store, "tides moon", "dense") == ["late"]
        assert store.replica.current_mirror() is not None  # searches run in memory again
    finally:
        store.close()


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


def test_closing_stops_a_mirror_load_in_progress(
    tmp_path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store closed while its mirror loads (a SIGTERM soon after start) does not wait for
    the rest of the load: it stops at the next page."""
    settings = Settings(chroma_path=tmp_path / "db", collection="kb_test")
    writer = KnowledgeStore.open(settings, embedder, searching=False)
    writer.add([DocumentIn(id=f"d{i}", text=f"note {i} on page loads") for i in range(12)])
    writer.close()

    snapshot = KeywordIndex.snapshot
    monkeypatch.setattr(KeywordIndex, "snapshot", lambda self: snapshot(self, page=2))
    loading, release = threading.Event(), threading.Event()
    pages: list[int] = []
    apply = Mirror.apply

    def slow_apply(self: Mirror, upserted, deleted, generation, **options) -> None:
        pages.append(len(upserted))
        loading.set()
        release.wait(10)  # each page waits for the test
        apply(self, upserted, deleted, generation, **options)

    monkeypatch.setattr(Mirror, "apply", slow_apply)
    store = KnowledgeStore.open(settings, embedder)
    assert loading.wait(10), "the mirror's load did not start"
    waiting = threading.Event()  # close has asked the load to stop, and waits for it
    wait_loaded = store.replica.wait_loaded

    def signalled_wait() -> None:
        waiting.set()
        wait_loaded()

    monkeypatch.setattr(store.replica, "wait_loaded", signalled_wait)
    closer = threading.Thread(target=store.close)
    closer.start()
    assert waiting.wait(10)
    release.set()
    closer.join(10)
    assert not closer.is_alive()
    assert pages == [2]  # six pages in all: the load stopped after the one in progress
    assert store.replica.mirror is None


def test_counts_and_stats_follow_the_others_writes_without_a_search(two: tuple) -> None:
    """A worker that only answers /health, /metrics and /stats must not report its start-up
    counts forever: those reads catch up with the change log too, not only searches."""
    first, second = two
    assert second.count() == 0
    first.add([DocumentIn(id="raft", text="Raft elects a leader.", metadata={"topic": "c"})])
    assert second.count() == 1
    assert second.stats().documents == 1
    assert second.stats().metadata["topic"].values == {"c": 1}
    first.delete(["raft"])
    assert (second.count(), second.stats().documents) == (0, 0)


def test_counts_still_answer_while_the_change_log_cannot_be_read(
    two: tuple, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A scrape of /metrics must not fail because the server is away: the count is behind."""
    first, second = two
    first.add([DocumentIn(id="raft", text="Raft elects a leader.")])
    log = second.replica.changes
    monkeypatch.setattr(log, "changes", FailingFirst(OSError("server gone"), log.changes))
    assert second.count() == 0
    assert "could not read the change log" in caplog.text
    assert second.count() == 1  # the next read catches up
    caplog.clear()
    monkeypatch.setattr(log, "changes", FailingFirst(OSError("still gone"), log.changes))
    assert second.count() == 1
    assert "could not read" not in caplog.text  # a minute's scrapes: one warning, not each


def test_the_change_logs_housekeeping_writes_are_tried_again_when_the_store_is_busy(
    two: tuple, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Marking a dead writer's entry done and pruning old entries are Chroma writes like the
    others: a store SQLite finds busy is waited for (chroma_write), not a failed repair or
    a logged failure to prune."""
    from chromadb.errors import InternalError

    first, _ = two
    log = first.replica.changes
    entry = log.begin(["orphan"])  # a write whose writer died before marking it done
    update = FailingFirst(InternalError(BUSY), log._log.update)
    monkeypatch.setattr(log._log, "update", update)
    log.settle(changes.Poll({"orphan"}, {}, 0, 0, 0.0, {"orphan"}, [entry]))
    assert len(update.calls) == 2
    got = log._log.get(ids=[entry], include=["metadatas"])
    assert got["metadatas"][0]["state"] == changes.DONE
    delete = FailingFirst(InternalError(BUSY), log._log.delete)
    monkeypatch.setattr(log._log, "delete", delete)
    log.prune()
    assert len(delete.calls) == 2
    assert "could not prune" not in caplog.text


def test_a_process_prunes_the_change_log_at_its_first_write_and_then_now_and_then(
    two: tuple,
) -> None:
    """Pruning was counted by each process's own writes (its 200th, 400th, ...): kb load runs
    and restarted workers that each wrote fewer never pruned, and the log grew for good."""
    first, _ = two
    log = first.replica.changes._log
    cutoff = changes.now_us() - changes.RETENTION_S * 1_000_000

    def plant(count: int) -> None:  # done entries past the retention, by processes long gone
        ids = [f"old-{changes.now_us()}-{i}" for i in range(count)]
        meta = {"ts": cutoff - 60_000_000, "state": changes.DONE, "origin": "gone:1"}
        log.upsert(ids=ids, embeddings=[[1.0]] * count, documents=["[]"] * count,
                   metadatas=[meta] * count)  # fmt: skip

    def old() -> int:
        return len(log.get(where={"ts": {"$lt": cutoff}}, include=[])["ids"])

    plant(3)
    first.add([DocumentIn(id="one", text="The first write of this process.")])
    assert old() == 0
    plant(3)
    first.add([DocumentIn(id="two", text="A second write, soon after the first.")])
    assert old() == 3  # pruned a moment ago
    first.replica.changes._pruned -= changes.PRUNE_EVERY_S + 1
    first.add([DocumentIn(id="three", text="A write once the interval has passed.")])
    assert old() == 0


WORDS = ("amber", "birch", "cedar", "delta", "ember", "fjord", "grove", "heron", "indigo")


@pytest.fixture
def hosts(server_settings: Settings, embedder: Embedder, tmp_path: Path) -> Iterator[tuple]:
    """Two hosts (their own write locks) on one Chroma server collection: theirs has added a
    document for each of WORDS, ours has built its copies of them."""
    theirs = KnowledgeStore.open(server_settings, embedder)
    ours = KnowledgeStore.open(changed(server_settings, lock_dir=tmp_path / "b"), embedder)
    theirs.add(
        [DocumentIn(id=f"d{i}", text=f"Notes on the {w} trail.") for i, w in enumerate(WORDS)]
    )
    ours.replica.catch_up()
    yield theirs, ours
    ours.close()
    theirs.close()


def deleting_after_the_first_page(
    theirs: KnowledgeStore, ours: KnowledgeStore, monkeypatch
) -> list[str]:
    """Have `ours` read every record 3 at a time, and `theirs` delete the records of the first
    page ours reads once it has read it; the ids deleted (filled in then)."""
    get, pages, deleted = ours.records.get, ours.records.pages, []

    def read(*args: object, **kwargs: object) -> list[Record]:
        page = get(*args, **kwargs)
        if page and not deleted:
            deleted.extend(sorted({record.doc_id for record in page}))
            theirs.delete(deleted)
        return page

    monkeypatch.setattr(ours.records, "get", read)
    monkeypatch.setattr(ours.records, "pages", lambda *a, **k: pages(*a, **{**k, "size": 3}))
    return deleted


def test_a_read_of_every_record_misses_none_while_another_host_deletes(
    hosts: tuple, monkeypatch
) -> None:
    """Pages read by offset: another host's delete of records already read moved the rest back,
    and the next page began past some that no one touched (review helper 61)."""
    theirs, ours = hosts
    deleted = deleting_after_the_first_page(theirs, ours, monkeypatch)
    read = [record.doc_id for page in ours.records.pages() for record in page]
    assert len(deleted) == 3
    assert sorted(read) == sorted(f"d{i}" for i in range(len(WORDS)))


def test_a_host_building_its_copies_while_another_deletes_keeps_every_other_record(
    hosts: tuple, monkeypatch
) -> None:
    """The rebuild read Chroma by offset: the untouched records a delete of another host moved
    past a page's start were missing from this host's search and counts until it restarted."""
    theirs, ours = hosts
    # the add older than the log a rebuild re-reads after it (a minute by default): the
    # rebuild alone must have every record it did not see deleted
    monkeypatch.setattr(changes, "MARGIN_US", 0)
    deleted = deleting_after_the_first_page(theirs, ours, monkeypatch)
    ours.replica._behind = True  # as after a failed update: rebuilt at the next search
    assert found(ours, "notes", "keyword")  # the rebuild, then the log's deletes
    assert len(deleted) == 3
    kept = {f"d{i}": word for i, word in enumerate(WORDS)}
    for doc_id in deleted:
        del kept[doc_id]
    for doc_id, word in kept.items():
        assert found(ours, f"{word} trail", "keyword")[:1] == [doc_id], word
    assert sorted(found(ours, "notes trail", "dense", top_k=20)) == sorted(kept)
    assert ours.count() == len(kept)


def test_a_backups_header_counts_the_others_writes(two: tuple) -> None:
    """dump counts documents holding the write lock: the count catches up without waiting."""
    first, second = two
    first.add([DocumentIn(id="raft", text="Raft elects a leader.")])
    out = io.BytesIO()
    assert backup.dump(second, out) == 1
    header = json.loads(gzip.decompress(out.getvalue()).splitlines()[0])
    assert (header["records"], header["documents"]) == (1, 1)


def test_no_training_thread_reads_the_keyword_file_once_the_store_is_closed(
    tmp_path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing joins the thread that trains the vector index's lists: when it read its
    sample after the store closed, its read-only connection made the file's -wal and -shm
    again, and removing the store's folder (kb eval's temporary store) failed now and then
    with "Directory not empty"."""
    closed = threading.Event()
    late: list[bool] = []
    sample = KeywordIndex.sample

    def slow(self: KeywordIndex, *args: object) -> object:
        closed.wait(0.3)  # the thread is slow to start: the store closes meanwhile
        late.append(closed.is_set())
        return sample(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(KeywordIndex, "sample", slow)
    store = KnowledgeStore.open(
        Settings(chroma_path=tmp_path / "db", collection="kb_test"), embedder
    )
    store.close()
    closed.set()
    threading.Event().wait(0.5)  # the thread's read, if it comes
    assert True not in late


def test_health_is_503_while_the_chroma_server_cannot_be_read(
    server_settings: Settings, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/health said "ok" from its copies while every data request was a 503: a load
    balancer kept sending traffic to a host that could serve none of it (review helper
    68)."""
    app = create_app(server_settings, embedder=embedder)
    try:
        client = app.test_client()
        replica = app.extensions["kb"].store.replica
        replica.wait_loaded()  # no poll of the copies' build still under way: /health polls
        assert client.get("/health").status_code == 200
        log = replica.changes
        failing = FailingFirst(OSError("connection refused"), log.changes, times=2)
        monkeypatch.setattr(log, "changes", failing)
        down = client.get("/health")
        assert down.status_code == 503, down.json
        assert down.json["error"]["code"] == "store_unavailable"
        assert "connection refused" in down.json["error"]["message"]
        assert client.get("/metrics").status_code == 200  # a scrape still answers
        assert client.get("/health").status_code == 200  # the server is back
    finally:
        close_app(app)


@pytest.fixture
def probed(
    server_settings: Settings, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Any, Any]]:
    """A server-mode app whose reads of the change log count as hung after 0.3 s without an
    answer: its test client and its replica (copies loaded)."""
    from kb import shared_replica

    monkeypatch.setattr(shared_replica, "HUNG_S", 0.3)
    app = create_app(server_settings, embedder=embedder)
    try:
        replica = app.extensions["kb"].store.replica
        replica.wait_loaded()
        yield app.test_client(), replica
    finally:
        close_app(app)


def test_health_is_503_while_a_search_finds_the_server_away_or_a_read_hangs(
    probed: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe arriving while another request read the change log skipped its own read and
    cleared the last failure: /health said "ok" to 41% of probes with the server gone, and
    to every probe with it hung (chromadb's client waits for ever; review helper 77)."""
    client, replica = probed
    log = replica.changes
    reading, release = threading.Event(), threading.Event()
    failures = iter([True, False])

    def read_slowly(*args: Any, **kwargs: Any) -> Any:
        reading.set()
        release.wait(30)
        if next(failures, False):
            raise OSError("connection refused")
        return real(*args, **kwargs)

    real = log.changes
    monkeypatch.setattr(log, "changes", read_slowly)
    searching = threading.Thread(target=lambda: client.post("/query", json={"query": "x"}))
    searching.start()  # a search's read of the change log, which hangs
    assert reading.wait(30)
    time.sleep(0.5)
    hung = client.get("/health")  # skips its read: one is running, for 0.5 s now
    assert hung.status_code == 503, hung.json
    assert "has not answered a read for" in hung.json["error"]["message"]
    release.set()  # the search's read fails: connection refused
    searching.join(30)
    reading.clear()
    release.clear()
    probe = threading.Thread(target=lambda: client.post("/query", json={"query": "y"}))
    probe.start()  # the next read hangs again, briefly
    assert reading.wait(30)
    down = client.get("/health")  # skipped: the failure the search met still stands
    assert down.status_code == 503, down.json
    assert "connection refused" in down.json["error"]["message"]
    release.set()
    probe.join(30)
    assert client.get("/health").status_code == 200  # that read succeeded


def test_health_stays_ok_through_a_long_poll_whose_reads_come_back(
    probed: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hang verdict timed the whole poll: a rebuild of a large store's copies, reading
    page after page for more than 10 s, made /health a 503 (review helper 78)."""
    client, replica = probed
    log = replica.changes
    real, reading, done = log.changes, threading.Event(), threading.Event()

    def long_but_answered(*args: Any, **kwargs: Any) -> Any:
        reading.set()
        for _ in range(12):  # 1.2 s of reads, each answered, as a rebuild's pages
            replica.records.ids()
            time.sleep(0.1)
        done.set()
        return real(*args, **kwargs)

    monkeypatch.setattr(log, "changes", long_but_answered)
    polling = threading.Thread(target=lambda: client.post("/query", json={"query": "x"}))
    polling.start()
    assert reading.wait(30)
    statuses = []
    while not done.is_set():
        statuses.append(client.get("/health").status_code)
        time.sleep(0.1)
    polling.join(30)
    assert len(statuses) >= 5
    assert set(statuses) == {200}
