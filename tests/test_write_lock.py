"""The store's write lock bounds a request's wait on a Chroma server: a host's writes queued
behind one the server does not answer each waited out the ones before them (the k-th
answered after about k x KB_CHROMA_WRITE_TIMEOUT); now each gives up after its own wait
with a 503 `store_busy`, having sent nothing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from kb import store as store_module
from kb.app import close_app, create_app
from kb.config import Settings
from kb.embeddings import Embedder
from kb.lock import StoreBusy, WriteLock
from kb.schemas import DocumentIn
from tests.conftest import changed


def test_a_bounded_turn_gives_up_on_another_processs_lock_and_takes_it_once_free(
    tmp_path: Path,
) -> None:
    """Two WriteLocks on one file stand for two kb processes of a host (flock locks are per
    open file, so they exclude each other within one process as across processes)."""
    path = tmp_path / "kb.writes.lock"
    theirs, ours = WriteLock(path), WriteLock(path, wait=0.2)
    with theirs:
        with pytest.raises(StoreBusy) as caught, ours.turn():
            pytest.fail("took a lock another process holds")
        assert "0.2 s (KB_CHROMA_WRITE_TIMEOUT" in caught.value.message
        assert caught.value.status == 503
        assert caught.value.code == "store_busy"
    other = WriteLock(path, wait=0.05)
    # free now, and re-entrant within a turn; held by `ours`, the other process waits
    with ours.turn(), ours.turn(), pytest.raises(StoreBusy), other.turn():
        pass
    with theirs:  # `ours` let go of its file lock when its turn ended
        pass


def test_a_bounded_turn_gives_up_on_another_threads_write(tmp_path: Path) -> None:
    lock = WriteLock(tmp_path / "kb.writes.lock", wait=0.2)
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            holding.set()
            done.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(30)
        with pytest.raises(StoreBusy), lock.turn():
            pass
    finally:
        done.set()
        holder.join()
    with lock.turn():  # the thread lock was not left held by the failed turn
        pass


def test_an_embedded_stores_writes_wait_as_long_as_it_takes(
    settings: Settings, embedder: Embedder
) -> None:
    """Embedded: no server that could stop answering, so no bound (a write queued behind a
    long one of the same process waits for it)."""
    store = store_module.KnowledgeStore.open(settings, embedder, searching=False)
    try:
        lock = store.writes()
        holding, finished = threading.Event(), threading.Event()

        def hold() -> None:
            with lock:
                holding.set()
                time.sleep(0.5)
                finished.set()

        holder = threading.Thread(target=hold)
        holder.start()
        assert holding.wait(30)
        with lock.turn():  # waited for the holder
            assert finished.is_set()
        holder.join()
    finally:
        store.close()


def test_writes_queued_behind_a_hung_one_on_a_server_are_503s_that_changed_nothing(
    server_settings: Settings, embedder: Embedder
) -> None:
    """Another kb process of the host holds the write lock (a write the Chroma server does
    not answer, a backup): a request's write waits KB_CHROMA_WRITE_TIMEOUT at most, then is
    a 503 naming the setting; reads go on; once the lock is free the same write lands."""
    settings = changed(server_settings, chroma_write_timeout=0.5)
    app = create_app(settings, embedder=embedder)
    try:
        client = app.test_client()
        tides = {"documents": [{"id": "tides", "text": "Tides follow the moon's pull."}]}
        assert client.post("/add", json=tides).status_code == 201
        waves = {"documents": [{"id": "waves", "text": "Wind raises waves on the sea."}]}
        with WriteLock(store_module._write_lock_path(settings)):  # the other process's write
            answers = {
                "add": client.post("/add", json=waves),
                "patch": client.patch("/documents/tides", json={"metadata": {"a": 1}}),
                "delete": client.post("/delete", json={"ids": ["tides"]}),
            }
            read = client.get("/documents/tides")
        for name, answer in answers.items():
            assert answer.status_code == 503, (name, answer.json)
            error = answer.json["error"]
            assert error["code"] == "store_busy", name
            assert "KB_CHROMA_WRITE_TIMEOUT" in error["message"], name
        assert read.status_code == 200
        assert read.json["metadata"] in (None, {})
        assert client.get("/documents/waves").status_code == 404
        assert client.post("/add", json=waves).status_code == 201
        spec = client.get("/openapi.json").json["paths"]
        assert "503" in spec["/add"]["post"]["responses"]
    finally:
        close_app(app)


def test_a_commands_writes_on_a_server_wait_as_long_as_it_takes(
    server_settings: Settings, embedder: Embedder
) -> None:
    """kb load and kb restore (stores that do not search) wait for the host's lock past
    KB_CHROMA_WRITE_TIMEOUT: a backup on the host may hold it for long, and their user sees
    them waiting."""
    settings = changed(server_settings, chroma_write_timeout=0.3)
    store = store_module.KnowledgeStore.open(settings, embedder, searching=False)
    holding, finished = threading.Event(), threading.Event()

    def hold() -> None:
        with WriteLock(store_module._write_lock_path(settings)):
            holding.set()
            time.sleep(1.0)
            finished.set()

    holder = threading.Thread(target=hold)
    try:
        holder.start()
        assert holding.wait(30)
        store.add([DocumentIn(id="tides", text="Tides follow the moon's pull.")])
        assert finished.is_set()
        assert store.get("tides").text == "Tides follow the moon's pull."
    finally:
        holder.join()
        store.close()
