"""kb serve's large adds embed in an encoder process: the same vectors as in-process, small
adds never start it and large ones only once they have brought enough texts, an add during its
start hands the rest of its texts over once it is up, a process that dies leaves adds
working, and closing the app stops it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flask import Flask

from kb.api.util import EXTENSION
from kb.app import close_app, create_app
from kb.config import Settings, cpu_count
from kb.embeddings import Embedder
from kb.encoders import bulk as bulk_module
from kb.encoders import process as process_module
from kb.encoders.bulk import STARTING_CHARS, BulkEncoder
from kb.errors import ConfigError
from tests.conftest import changed
from tests.live import Service, call

LARGE = 4  # texts from which an add goes to the process, in these tests


def docs(prefix: str, n: int) -> list[dict[str, object]]:
    """Texts of one length (TEXT characters), all different."""
    return [
        {"id": f"{prefix}-{i}", "text": f"{prefix:<8.8} note {i:04d}: proof bread dough overnight"}
        for i in range(n)
    ]


TEXT = len(str(docs("x", 1)[0]["text"]))


def enough(min_texts: int) -> int:
    """How many texts large adds bring before the process starts."""
    return -(-STARTING_CHARS * min_texts // TEXT)


ENOUGH = enough(LARGE)


@pytest.fixture
def bulk_app(settings: Settings, embedder: Embedder) -> Iterator[Flask]:
    app = create_app(changed(settings, encoder_process_min_texts=LARGE), embedder=embedder)
    yield app
    close_app(app)


def bulk_of(app: Flask) -> BulkEncoder:
    bulk = app.extensions[EXTENSION].bulk
    assert isinstance(bulk, BulkEncoder)
    return bulk


def add(app: Flask, documents: list[dict[str, object]]) -> None:
    response = app.test_client().post("/add", json={"documents": documents})
    assert response.status_code == 201, response.json


def stored_vectors(app: Flask, ids: list[str]) -> np.ndarray:
    records = app.extensions[EXTENSION].store.records.get(ids, embeddings=True)
    by_id = {record.id: record.embedding for record in records}
    return np.array([by_id[i] for i in ids], dtype=np.float32)


def up(bulk: BulkEncoder) -> process_module.EncoderProcess:
    """The process, once the start a large add began has brought it up."""
    assert bulk.wait_started(300)
    process = bulk._process
    assert process is not None
    return process


def assert_stored_as_embedded(
    app: Flask, embedder: Embedder, batch: list[dict[str, object]]
) -> None:
    """Each stored vector is its own text's, as the in-process encoder embeds it."""
    ids = [str(doc["id"]) for doc in batch]
    want = embedder.embed_documents([str(doc["text"]) for doc in batch])
    assert np.abs(stored_vectors(app, ids) - want).max() < 1e-6


def test_large_adds_embed_in_the_process_with_the_same_vectors(
    bulk_app: Flask, embedder: Embedder
) -> None:
    bulk = bulk_of(bulk_app)
    for n in range(3):
        add(bulk_app, docs(f"small{n}", LARGE - 1))
    assert not bulk.wait_started(0)  # small adds count for nothing
    add(bulk_app, docs("first", ENOUGH - LARGE))
    assert not bulk.wait_started(0)  # not enough yet
    add(bulk_app, docs("second", LARGE))  # starts the process; embedded here meanwhile
    process = up(bulk)
    sent: list[int] = []
    submit = process.submit
    process.submit = lambda texts: sent.append(len(texts)) or submit(texts)  # type: ignore[method-assign]
    batch = docs("third", LARGE + 2)
    add(bulk_app, batch)
    assert sent == [LARGE + 2]
    assert_stored_as_embedded(bulk_app, embedder, batch)
    hits = bulk_app.test_client().post("/query", json={"query": "proof bread dough", "top_k": 3})
    assert hits.status_code == 200, hits.json
    assert hits.json["matches"], hits.json


def test_the_process_runs_the_apps_encoder_not_the_settings_backend(
    settings: Settings, embedder: Embedder
) -> None:
    """An app given a loaded encoder (here the session's fp32 ONNX) under settings naming
    another backend: its process loads the app's encoder, so large adds use it (a process
    loading the settings' backend would be refused as another encoder, and never used)."""
    other = "onnx-int8" if embedder.backend != "onnx-int8" else "onnx"
    app = create_app(
        changed(settings, backend=other, encoder_process_min_texts=LARGE), embedder=embedder
    )
    try:
        bulk = bulk_of(app)
        add(app, docs("first", ENOUGH))
        process = up(bulk)
        assert (process.backend, process.fingerprint) == (embedder.backend, embedder.fingerprint)
        batch = docs("then", LARGE)
        add(app, batch)
        assert_stored_as_embedded(app, embedder, batch)
    finally:
        close_app(app)


def test_a_process_with_another_encoder_is_never_used(
    bulk_app: Flask, embedder: Embedder, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """A process whose encoder is not the app's (another export of the model, say) is
    closed unused: mixing their vectors in one store would corrupt its scores."""
    real = process_module.EncoderProcess
    started: list[process_module.EncoderProcess] = []

    def another(settings: Settings) -> process_module.EncoderProcess:
        process = real(settings)
        process.fingerprint = "another export"
        started.append(process)
        return process

    monkeypatch.setattr(process_module, "EncoderProcess", another)
    bulk = bulk_of(bulk_app)
    add(bulk_app, docs("first", ENOUGH))
    assert not bulk.wait_started(300)
    assert "loaded another model" in caplog.text
    assert len(started) == 1
    assert not started[0]._process.is_alive()
    batch = docs("after", LARGE)
    add(bulk_app, batch)  # embedded here, as ever
    assert not bulk.wait_started(0)  # no other process is tried
    assert_stored_as_embedded(bulk_app, embedder, batch)


class HeldStart:
    """Holds the encoder process's start until `go` is set; then starts it, or fails."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: bool) -> None:
        self.go = threading.Event()
        real = process_module.EncoderProcess

        def start(settings: Settings) -> process_module.EncoderProcess:
            assert self.go.wait(60)
            if fail:
                raise ConfigError("no encoder process here")
            return real(settings)

        monkeypatch.setattr(process_module, "EncoderProcess", start)


class Steps:
    """The in-process embedder, recording each call's size; the first call lets the start
    go on and waits for its outcome, as if the process came up during that step."""

    def __init__(self, bulk: BulkEncoder, start: HeldStart) -> None:
        self.inner, self.bulk, self.start = bulk.inner, bulk, start
        self.sizes: list[int] = []
        self.sent: list[int] = []  # texts sent to the process, per call

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        self.sizes.append(len(texts))
        if len(self.sizes) == 1:
            self.start.go.set()
            if self.bulk.wait_started(300):
                process = self.bulk._process
                assert process is not None
                submit = process.submit
                process.submit = lambda t: self.sent.append(len(t)) or submit(t)  # type: ignore[method-assign]
        return self.inner.embed_documents(texts)


@pytest.mark.parametrize("starts", [True, False], ids=["process-up", "start-fails"])
def test_an_add_during_the_start_hands_its_other_texts_over(
    bulk_app: Flask, embedder: Embedder, monkeypatch: pytest.MonkeyPatch, starts: bool
) -> None:
    """While the process starts, a large add embeds here a step of texts at a time and sends
    the rest to the process once it is up (if the start fails, it embeds them here): each
    stored vector is its own text's."""
    monkeypatch.setattr(bulk_module, "HANDOFF_CHARS", 2 * TEXT)  # two texts a step
    bulk = bulk_of(bulk_app)
    steps = Steps(bulk, HeldStart(monkeypatch, fail=not starts))
    monkeypatch.setattr(bulk, "inner", steps)
    batch = docs("during", ENOUGH + 5)  # enough to start the process on its own
    add(bulk_app, batch)
    if starts:
        assert (steps.sizes, steps.sent) == ([2], [ENOUGH + 3])
        assert bulk._using == 0  # the use ended: the idle stop can come
    else:
        assert (steps.sizes, steps.sent) == ([2, ENOUGH + 3], [])
        assert bulk._process is None
    assert_stored_as_embedded(bulk_app, embedder, batch)


def test_a_dead_process_leaves_adds_in_process(
    bulk_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    bulk = bulk_of(bulk_app)
    add(bulk_app, docs("first", ENOUGH))
    process = up(bulk)
    process._process.kill()
    process._process.join()
    add(bulk_app, docs("after", LARGE))  # still answered, embedded here
    assert bulk._process is None
    assert "encoder process failed" in caplog.text
    add(bulk_app, docs("later", LARGE))  # no new process is tried
    assert not bulk.wait_started(0)
    count = bulk_app.test_client().get("/health").json
    assert count["documents"] == ENOUGH + 2 * LARGE, count


def has_query_session(embedder: Embedder) -> bool:
    """Whether the in-process ONNX encoder holds its session for lone texts."""
    return bool(embedder.has_query_session)  # type: ignore[attr-defined]


def test_closing_the_app_stops_the_process(settings: Settings, embedder: Embedder) -> None:
    """...and gives the shared in-process encoder back its session for lone texts, which it
    released while the process ran."""
    app = create_app(changed(settings, encoder_process_min_texts=1), embedder=embedder)
    assert has_query_session(embedder) == (cpu_count() > 1)  # one thread: no such session
    add(app, docs("one", enough(1)))
    bulk = bulk_of(app)
    child = up(bulk)._process
    assert not has_query_session(embedder)
    close_app(app)
    assert not child.is_alive()
    assert bulk._process is None
    assert has_query_session(embedder) == (cpu_count() > 1)


def test_an_idle_process_stops_and_large_adds_start_another(
    settings: Settings, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unused for KB_ENCODER_PROCESS_IDLE_S, the process stops (its memory is given back,
    and the in-process encoder opens its session for lone texts again); while an add is
    embedding in it, it is in use however long that takes; the next large adds start another
    by the same rule."""
    idle = 0.4
    app = create_app(
        changed(settings, encoder_process_min_texts=LARGE, encoder_process_idle_s=idle),
        embedder=embedder,
    )
    try:
        bulk = bulk_of(app)
        add(app, docs("first", ENOUGH))
        process = up(bulk)
        assert not has_query_session(embedder)
        embed, kept = process.embed_documents, []

        def slow(texts: list[str]) -> np.ndarray:
            time.sleep(idle * 5)  # in use longer than the idle time
            kept.append(bulk._process is process)
            return embed(texts)

        monkeypatch.setattr(process, "embed_documents", slow)
        add(app, docs("slow", LARGE))
        assert kept == [True]  # not stopped while in use
        child = process._process
        deadline = time.monotonic() + 30
        while bulk._process is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert bulk._process is None  # stopped once idle
        reaper = bulk._reaper
        assert reaper is not None
        reaper.join(60)  # it closes the process (joining it: a second join here would race)
        assert not reaper.is_alive()
        assert not child.is_alive()
        assert has_query_session(embedder) == (cpu_count() > 1)
        hits = app.test_client().post("/query", json={"query": "proof bread", "top_k": 1})
        assert hits.status_code == 200, hits.json
        assert hits.json["matches"], hits.json
        add(app, docs("small", LARGE))  # embedded here; counts towards a new start
        assert not bulk.wait_started(0)
        add(app, docs("again", ENOUGH))
        assert up(bulk) is not process
        assert not has_query_session(embedder)
        assert app.test_client().get("/health").json["documents"] == 2 * ENOUGH + 2 * LARGE
    finally:
        close_app(app)


def test_switched_off_means_no_process(settings: Settings, embedder: Embedder) -> None:
    app = create_app(changed(settings, encoder_process_min_texts=0), embedder=embedder)
    try:
        assert app.extensions[EXTENSION].bulk is None
    finally:
        close_app(app)


def children(pid: int) -> list[int]:
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").glob("*/children")
        for child in task.read_text().split()
    ]


def spawned_children(pid: int) -> dict[int, bytes]:
    """The children of `pid` by their command lines (one that has already gone: left out)."""
    found = {}
    for child in children(pid):
        try:
            found[child] = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
    return found


def test_kb_serve_stops_its_encoder_process_on_sigterm(service: Service) -> None:
    """A large POST /add starts the process; SIGTERM closes the app, which stops it."""
    service.env["KB_ENCODER_PROCESS_MIN_TEXTS"] = "2"
    base = service.start().base
    assert service.proc is not None
    status, body = call(base, "/add", {"documents": docs("live", enough(2))})
    assert status == 201, body
    # wait for the encoder itself, not for any child: multiprocessing starts its resource
    # tracker first, and a child just forked still shows kb serve's command line until it
    # execs (both seen for a few ms before the encoder's spawn_main appears)
    deadline = time.monotonic() + 120
    spawned = spawned_children(service.proc.pid)
    while not any(b"spawn_main" in c for c in spawned.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
        spawned = spawned_children(service.proc.pid)
    assert any(b"spawn_main" in cmdline for cmdline in spawned.values()), spawned
    service.proc.terminate()
    assert service.proc.wait(timeout=60) == 0, service.log.read_text()[-2000:]
    # joined by close_app: gone (a zombie would still have its /proc entry, unreaped)
    encoders = [pid for pid, cmdline in spawned.items() if b"spawn_main" in cmdline]
    assert not [pid for pid in encoders if Path(f"/proc/{pid}").exists()]
