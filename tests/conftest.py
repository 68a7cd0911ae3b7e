"""Shared fixtures: the real model once per session, a fresh store on tmp_path per test."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from kb.app import close_app, create_app
from kb.config import Settings, is_kb_variable
from kb.embeddings import Embedder, load_embedder
from kb.schemas import DocumentIn
from kb.store import KnowledgeStore

pytest_plugins = ["tests.live", "tests.chroma_server"]
# Modules whose tests run twice: on an embedded store and on a Chroma server.
BOTH_MODES = (
    "tests.test_api_",
    "tests.test_system",
    "tests.test_security",
    "tests.test_text_filters",
)

DATA = Path(__file__).resolve().parent.parent / "data"

COOKING = [
    {
        "id": "pasta",
        "text": "Boil the pasta in plenty of salted water until it is al dente.",
        "metadata": {
            "category": "cooking",
            "difficulty": "beginner",
            "date": "2023-03-10",
            "tags": ["pasta", "italian"],
            "minutes": 12,
        },
    },
    {
        "id": "bread",
        "text": "Knead the dough for ten minutes, then let it rise in a warm place.",
        "metadata": {
            "category": "baking",
            "difficulty": "intermediate",
            "date": "2024-01-15",
            "tags": ["bread", "yeast"],
            "minutes": 180,
        },
    },
    {
        "id": "risotto",
        "text": "Stir the risotto rice slowly while adding warm stock a ladle at a time.",
        "metadata": {
            "category": "cooking",
            "difficulty": "advanced",
            "date": "2024-06-30T18:30:00",
            "tags": ["rice", "italian"],
            "minutes": 35,
        },
    },
    {
        "id": "cake",
        "text": "Cream the butter and sugar before folding in the flour for a light sponge.",
        "metadata": {
            "category": "baking",
            "difficulty": "beginner",
            "date": "2025-02-01",
            "tags": ["cake", "dessert"],
            "minutes": 50,
        },
    },
]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests build their own settings; a KB_* variable from the shell (in any case) must
    not leak in."""
    for name in list(os.environ):
        if is_kb_variable(name):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The exact backend (fp32 ONNX, the default), exported into the user's cache on first
    use; named, so the tests that hold it to torch's vectors stay on it whatever the default."""
    return load_embedder(Settings(backend="onnx"))


@pytest.fixture(scope="session")
def seed_docs() -> list[DocumentIn]:
    """The seed knowledge base (data/seed), validated."""
    return [
        DocumentIn.model_validate(json.loads(line))
        for path in sorted((DATA / "seed").glob("*.jsonl"))
        for line in path.read_text().splitlines()
        if line.strip()
    ]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--store-mode",
        choices=["both", "embedded", "server"],
        default="both",
        help="store modes for the API tests (default both; the others always run embedded)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_mode" not in metafunc.fixturenames:
        return
    chosen = metafunc.config.getoption("--store-mode")
    if not metafunc.module.__name__.startswith(BOTH_MODES):
        modes = ["embedded"]
    else:
        modes = ["embedded", "server"] if chosen == "both" else [chosen]
    metafunc.parametrize("store_mode", modes)


@pytest.fixture
def settings(tmp_path: Path, store_mode: str, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """A fresh store: a directory, or (server mode) a new collection on the session's server."""
    if store_mode == "embedded":
        yield Settings(chroma_path=tmp_path / "db", collection="kb_test")
    else:
        yield request.getfixturevalue("server_settings")


@pytest.fixture
def server_settings(tmp_path: Path, chroma_server: str) -> Iterator[Settings]:
    """A new collection on the session's Chroma server, dropped afterwards."""
    name = f"kb-test-{uuid.uuid4().hex[:12]}"
    yield Settings(
        chroma_path=tmp_path / "db", chroma_url=chroma_server, collection=name, lock_dir=tmp_path
    )
    drop_collections(chroma_server, name)


def drop_collections(url: str, name: str) -> None:
    import chromadb

    from kb.collection import _close_client

    host, port = url.removeprefix("http://").split(":")
    client = chromadb.HttpClient(host=host, port=int(port))
    try:
        for existing in client.list_collections():
            if existing.name in {name, f"{name}-kb-log"}:
                # empty it first: Chroma 1.5's delete_collection leaves list-valued metadata
                # behind, which the next collection's records then carry (chroma #7594)
                collection = client.get_collection(existing.name)
                while ids := collection.get(limit=5000, include=[])["ids"]:
                    collection.delete(ids=ids)
                client.delete_collection(existing.name)
    finally:
        _close_client(client)


def changed(settings: Settings, **changes: object) -> Settings:
    """A validated copy of `settings` with some fields changed."""
    return Settings.model_validate({**settings.model_dump(), **changes})


@pytest.fixture
def app(settings: Settings, embedder: Embedder) -> Iterator[Flask]:
    app = create_app(settings, embedder=embedder)
    app.config["TESTING"] = True
    yield app
    close_app(app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def store(app: Flask) -> KnowledgeStore:
    return app.extensions["kb"].store


@pytest.fixture
def cooking(client: FlaskClient) -> FlaskClient:
    """A client over a store holding the four cooking documents."""
    response = client.post("/add", json={"documents": COOKING})
    assert response.status_code == 201, response.json
    return client


# /proc/cpuinfo's shape (two processors), for kb.cpu and KB_BACKEND=auto's tests
CPUINFO = """processor\t: 0
vendor_id\t: {vendor}
flags\t\t: fpu sse2 avx2 fma avx512f avx512cd avx512bw avx512dq avx512vl avx512_bf16{extra}
bugs\t\t: spectre_v1

processor\t: 1
vendor_id\t: {vendor}
flags\t\t: fpu sse2 avx2 fma avx512f avx512cd avx512bw avx512dq avx512vl avx512_bf16{extra}
"""


# Chroma's error for SQLite's SQLITE_BUSY (kb.collection.chroma_write tries such writes again)
BUSY = "Database error: error returned from database: (code: 5) database is locked"


class FailingFirst:
    """A stand-in for a call that raises `error` on its first `times` calls and then calls
    `then`; `calls` holds every call's keyword arguments."""

    def __init__(self, error: Exception, then: Callable[..., object], times: int = 1) -> None:
        self.error, self.then, self.times = error, then, times
        self.calls: list[dict[str, object]] = []

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls.append(kwargs)
        if len(self.calls) <= self.times:
            raise self.error
        return self.then(*args, **kwargs)


@pytest.fixture
def ctrl_c_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt, as in a terminal: a suite started in the background
    (as CI's may be) inherits it ignored, and a test's own SIGINT then did nothing."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.fixture
def ctrl_c_in_the_switch(ctrl_c_raises: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C (SIGINT) as restore --replace's switch begins its first rename (kb.staging)."""
    from kb.collection import RecordCollection

    rename = RecordCollection.rename

    def interrupted(records: RecordCollection, name: str) -> None:
        if name.endswith("-kb-old"):
            signal.raise_signal(signal.SIGINT)
        rename(records, name)

    monkeypatch.setattr(RecordCollection, "rename", interrupted)


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
