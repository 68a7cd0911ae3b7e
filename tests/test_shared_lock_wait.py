"""A search on a Chroma server never waits for the host's write lock for longer than a
short bound: its catch-up took the lock without one when it had to rebuild the copies or
remove what a dead writer left, so it waited as long as another process held the lock (a
backup, kb load, a write the server does not answer) (review helper 97)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest

from kb import changes, lock, shared_replica
from kb import store as store_module
from kb.collection import RecordCollection
from kb.config import Settings
from kb.embeddings import Embedder
from kb.errors import StoreUnavailable
from kb.lock import StoreBusy, WriteLock
from kb.schemas import DocumentIn, QueryRequest
from kb.search import search
from kb.store import KnowledgeStore
from tests.test_repair import OLD_ERA, reader_after_a_dead_writer, stored

BOUND_S = 20.0  # the harness's patience; the lock is held far longer (HELD_S)
HELD_S = 60.0
NEW_ERA = {"query": "ice frozen water", "where": {"era": "new"}, "min_score": -1}


def keyword(store: KnowledgeStore, text: str) -> list[str]:
    request = QueryRequest.model_validate({"query": text, "mode": "keyword", "min_score": -1})
    return [match.id for match in search(store, request)[0].matches]


def while_held(settings: Settings, act: Callable[[], object]) -> object:
    """Run `act` in a thread while another kb process of the host (a WriteLock of its own on
    the same file) holds the write lock for up to HELD_S; what it returned or raised, which
    it must have done within BOUND_S."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(act())
        except Exception as exc:
            outcome.append(exc)

    released = threading.Event()
    holding = threading.Event()

    def hold() -> None:
        with WriteLock(store_module._write_lock_path(settings)):
            holding.set()
            released.wait(HELD_S)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert holding.wait(30)
    searcher = threading.Thread(target=run, daemon=True)
    try:
        searcher.start()
        searcher.join(BOUND_S)
        assert not searcher.is_alive(), "the search waited for the host's write lock"
    finally:
        released.set()
        holder.join()
        searcher.join()
    return outcome[0]


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared_replica, "LOCK_WAIT_S", 0.5, raising=False)


@pytest.mark.parametrize("why", ["idle past the log's retention", "an update that failed"])
def test_a_search_whose_copies_need_a_rebuild_is_a_503_while_the_lock_is_held(
    two: tuple, server_settings: Settings, quick: None, why: str
) -> None:
    """The rebuild reads every record under the host's write lock: past the bound the search
    is a 503 store_busy that says why, and the next search once the lock is free rebuilds."""
    first, second = two
    first.add([DocumentIn(id="vault", text="The vault code is alpha bravo.")])
    if why == "an update that failed":
        second.replica._behind = True
    else:
        second.replica.changes._polled -= changes.RETENTION_S
    failed = while_held(server_settings, lambda: keyword(second, "vault code"))
    assert isinstance(failed, StoreBusy), failed
    assert failed.status == 503
    assert "must be rebuilt" in failed.message
    assert keyword(second, "vault code") == ["vault"]  # the lock is free: rebuilt


def test_a_dead_writers_leftovers_wait_while_the_lock_is_held_and_the_search_answers(
    server_settings: Settings,
    embedder: Embedder,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The removal is housekeeping: past the bound it is skipped (logged) and the search
    answers; it is done at a poll after the pause, once the lock is free. (The search asks
    for the new version: a match in the old one's tail is read again under the write lock,
    the next test's case.)"""
    with reader_after_a_dead_writer(server_settings, embedder, monkeypatch) as reader:
        monkeypatch.setattr(changes, "STALE_S", 0)
        monkeypatch.setattr(shared_replica, "REPAIR_WAIT_S", (3600.0, 3600.0))
        monkeypatch.setattr(shared_replica, "LOCK_WAIT_S", 0.5, raising=False)
        with caplog.at_level(logging.WARNING, logger="kb.shared_replica"):
            answered = while_held(
                server_settings, lambda: search(reader, QueryRequest.model_validate(NEW_ERA))
            )
        assert isinstance(answered, list), answered
        assert [match.id for match in answered[0].matches] == ["ice"]
        assert "could not remove what a dead writer left in 1 document" in caplog.text
        assert len(stored(reader)) > 1  # not removed yet
        monkeypatch.setattr(reader.replica, "_repair_after", 0.0)  # the pause is over
        (result,) = search(reader, QueryRequest.model_validate(OLD_ERA))
        assert result.matches == []
        assert stored(reader) == {"ice": ("ice", 0)}


def test_a_rebuild_that_failed_after_idle_past_the_logs_retention_is_tried_again(
    two: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The change log is reset as the rebuild begins: one that failed (the server away) left
    the next poll reading the log from the reset on, and a write another process made while
    this one was idle (older than the log's margin) was missing from its copies until the
    next rebuild. Now the next poll rebuilds."""
    first, second = two
    monkeypatch.setattr(changes, "MARGIN_US", 500_000)  # 30 s: a poll reads 2 back
    second.replica.changes._polled -= changes.RETENTION_S
    first.add([DocumentIn(id="vault", text="The vault code is alpha bravo.")])
    time.sleep(1.5)  # the write is older than two margins (no timing is asserted)
    pages = RecordCollection.pages

    def away(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable("the Chroma server is away")

    monkeypatch.setattr(RecordCollection, "pages", away)
    with pytest.raises(StoreUnavailable):
        keyword(second, "vault code")
    monkeypatch.setattr(RecordCollection, "pages", pages)
    assert keyword(second, "vault code") == ["vault"]


def test_a_torn_document_read_again_under_the_lock_waits_at_most_the_read_bound(
    server_settings: Settings, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search's match in a document read torn (a dead writer's tail) is read again under
    the write lock, which waited up to KB_CHROMA_WRITE_TIMEOUT (300 s) while another process
    held it (fixer helper 103): now at most READ_WAIT_S, then a 503 store_busy; once the lock
    is free the same search answers."""
    with reader_after_a_dead_writer(server_settings, embedder, monkeypatch) as reader:
        monkeypatch.setattr(shared_replica, "REPAIR_WAIT_S", (3600.0, 3600.0))
        monkeypatch.setattr(reader.replica, "_repair_after", time.monotonic() + 3600)
        monkeypatch.setattr(lock, "READ_WAIT_S", 0.5)
        request = QueryRequest.model_validate(OLD_ERA)
        failed = while_held(server_settings, lambda: search(reader, request))
        assert isinstance(failed, StoreBusy), failed
        assert failed.status == 503
        assert "0.5 s" in failed.message
        search(reader, request)  # the lock is free: answered
