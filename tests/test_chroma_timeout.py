"""A Chroma server that stops answering without closing its connections: kb's requests to
it fail after KB_CHROMA_TIMEOUT (reads) or KB_CHROMA_WRITE_TIMEOUT (writes) with a 504, not
never (chromadb's client waits for ever), and a write the server applies after kb gave up
on it still reaches every process's copies."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kb import changes, chroma_process
from kb.app import close_app, create_app
from kb.config import Settings
from kb.embeddings import Embedder
from kb.errors import StoreTimeout, StoreUnavailable
from kb.schemas import DocumentIn
from kb.store import KnowledgeStore
from tests.conftest import changed
from tests.proxy import Proxy
from tests.test_replica import found


@pytest.fixture
def proxy(chroma_server: str) -> Iterator[Proxy]:
    """The session's Chroma server behind a proxy that can stop passing bytes on."""
    proxy = Proxy(chroma_server)
    yield proxy
    proxy.close()


def through(settings: Settings, proxy: Proxy, **timeouts: float) -> Settings:
    return changed(settings, chroma_url=proxy.url, **timeouts)


def test_a_server_that_never_answers_fails_the_opening_naming_the_timeout(
    server_settings: Settings, embedder: Embedder, proxy: Proxy
) -> None:
    """chromadb's client sends its first requests as it is made: it waited for ever."""
    settings = through(server_settings, proxy, chroma_timeout=0.5)
    with proxy.holding(proxy.responses), pytest.raises(StoreUnavailable) as caught:
        KnowledgeStore.open(settings, embedder)
    assert "did not answer a read in time (KB_CHROMA_TIMEOUT)" in caught.value.message
    assert proxy.url in caught.value.message


def test_requests_to_a_server_that_stopped_answering_are_504s_naming_the_setting(
    server_settings: Settings, embedder: Embedder, proxy: Proxy
) -> None:
    settings = through(server_settings, proxy, chroma_timeout=0.5, chroma_write_timeout=0.5)
    app = create_app(settings, embedder=embedder)
    try:
        client = app.test_client()
        tides = {"documents": [{"id": "tides", "text": "Tides follow the moon's pull."}]}
        assert client.post("/add", json=tides).status_code == 201
        app.extensions["kb"].store.replica.wait_loaded()
        with proxy.holding(proxy.responses):
            answers: dict[str, Any] = {
                "search": client.post("/query", json={"query": "tides"}),
                "get": client.get("/documents/tides"),
                "write": client.post(  # its read of the ids already stored times out first
                    "/add", json={"documents": [{"id": "waves", "text": "Wind raises waves."}]}
                ),
            }
            health = client.get("/health")
        spec = client.get("/openapi.json").json["paths"]
        routes = {"search": ("/query", "post"), "get": ("/documents/{doc_id}", "get")}
        routes["write"] = ("/add", "post")
        for name, answer in answers.items():
            assert answer.status_code == 504, (name, answer.json)
            path, method = routes[name]
            assert "504" in spec[path][method]["responses"], name
            assert answer.json["error"]["code"] == "store_timeout", name
        assert "KB_CHROMA_TIMEOUT" in answers["search"].json["error"]["message"]
        assert health.status_code == 503  # the server is away
        searched = client.post("/query", json={"query": "tides", "min_score": -1})
        assert searched.status_code == 200  # the server answers again
        assert client.get("/health").status_code == 200
    finally:
        close_app(app)


def test_a_write_the_server_applies_after_kb_gave_up_reaches_every_processs_copies(
    server_settings: Settings, embedder: Embedder, proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Marked done at once (as a failed write is, to be re-read), a timed-out write that the
    server applied later was re-read before it landed, and no process's copies ever held it:
    searches never found it. Its entry stays pending, to be settled as a dead writer's."""
    slow = KnowledgeStore.open(through(server_settings, proxy, chroma_write_timeout=0.5), embedder)
    other = KnowledgeStore.open(server_settings, embedder)
    try:
        slow.replica.wait_loaded()
        other.replica.wait_loaded()
        upsert = slow.records.upsert

        def held(*args: Any, **kwargs: Any) -> Any:
            proxy.capture()  # this write reaches the server only once released
            return upsert(*args, **kwargs)

        monkeypatch.setattr(slow.records, "upsert", held)
        with pytest.raises(StoreTimeout) as caught:
            slow.add([DocumentIn(id="late", text="Glaciers carve deep valleys in rock.")])
        assert "KB_CHROMA_WRITE_TIMEOUT); it may still apply it" in caught.value.message
        assert caught.value.may_have_landed  # kb load counts its batch as unsure
        assert found(other, "glaciers valleys", "keyword") == []  # it has not landed
        assert found(slow, "glaciers valleys", "keyword") == []
        proxy.release()  # the server applies it now
        deadline = time.monotonic() + 30
        while not other.records.get(["late"]) and time.monotonic() < deadline:
            threading.Event().wait(0.05)
        assert [r.id for r in other.records.get(["late"])] == ["late"]
        monkeypatch.setattr(changes, "STALE_S", 0)  # its entry is two minutes old
        assert found(other, "glaciers valleys", "keyword") == ["late"]
        assert found(slow, "glaciers valleys", "keyword") == ["late"]
    finally:
        slow.close()
        other.close()


def test_a_proxy_named_by_the_environment_is_bounded_too(
    server_settings: Settings, embedder: Embedder, proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With HTTP_PROXY set, httpx sends through a mounted transport, which kept chromadb's
    wait for ever (review helper 86)."""
    settings = changed(server_settings, chroma_timeout=0.5)
    with monkeypatch.context() as env:  # undone before the fixtures' teardown reads Chroma
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            env.delenv(name, raising=False)
        env.setenv("HTTP_PROXY", proxy.url)
        env.setenv("http_proxy", proxy.url)
        store = KnowledgeStore.open(settings, embedder, searching=False)
    try:
        assert store.count() == 0  # through the proxy
        with proxy.holding(proxy.responses), pytest.raises(StoreTimeout):
            store.count()
    finally:
        store.close()


class Unsupported(http.server.BaseHTTPRequestHandler):
    """An HTTP service with no GET: 501 to every request, logged nowhere."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_service_that_is_not_chroma_is_one_line(embedder: Embedder) -> None:
    """KB_CHROMA_URL naming another HTTP service (kb's own, say, an easy mix-up with --url):
    httpx's error added a second line, "For more information check: https://developer.
    mozilla.org/...", where kb serve --workers said it in one (review helper 91)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unsupported)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(StoreUnavailable) as caught:
            KnowledgeStore.open(Settings(chroma_url=url), embedder)
        with pytest.raises(StoreUnavailable) as checked:
            chroma_process.check(url)
    finally:
        server.shutdown()
        server.server_close()
    assert caught.value.message == (
        f"cannot reach the Chroma server at {url} (KB_CHROMA_URL): {url}/api/v2/heartbeat "
        "answered HTTP 501: not a Chroma server?"
    )
    assert checked.value.message == caught.value.message
