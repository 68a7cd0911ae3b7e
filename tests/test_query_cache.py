"""KB_QUERY_CACHE: query vectors kept by text, so a search asked again skips the encoder."""

from __future__ import annotations

import tracemalloc
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from flask.testing import FlaskClient

from kb.app import close_app, create_app
from kb.config import Settings
from kb.embeddings import Embedder
from kb.query_cache import QueryCache
from tests.conftest import COOKING
from tests.test_observability import sample, scrape


class Counting:
    """A stand-in encoder: a text's vector is a function of the text; every call is kept."""

    name, backend, dim, fingerprint, max_tokens = "counting", "fake", 4, "0" * 16, 128
    former_fingerprints = ()

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.array([[len(t), t.count("a"), t.count("e"), 1.0] for t in texts], np.float32)

    embed_documents = embed_queries

    def tokens(self, text: str) -> None:  # not used here
        raise NotImplementedError


def test_a_text_asked_again_is_not_encoded_again() -> None:
    inner = Counting()
    counts: list[tuple[int, int]] = []
    cache = QueryCache(inner, size=8, counted=lambda hits, misses: counts.append((hits, misses)))
    first = cache.embed_queries(["pasta", "bread"])
    again = cache.embed_queries(["bread", "cake", "pasta", "cake"])
    assert inner.calls == [["pasta", "bread"], ["cake"]]  # only the new text; a repeat once
    assert np.array_equal(again, inner.embed_queries(["bread", "cake", "pasta", "cake"]))
    assert np.array_equal(first, again[[2, 0]])
    assert counts == [(0, 2), (3, 1)]
    assert cache.embed_queries([]).shape == (0, 4)


def test_the_least_recently_asked_text_goes_out_first() -> None:
    inner = Counting()
    cache = QueryCache(inner, size=2)
    cache.embed_queries(["a"])
    cache.embed_queries(["b"])
    cache.embed_queries(["a"])  # a is the most recent now
    cache.embed_queries(["c"])  # b goes out
    inner.calls.clear()
    cache.embed_queries(["a", "c", "b"])
    assert inner.calls == [["b"]]


def test_a_caller_changing_its_vectors_leaves_the_kept_ones_alone() -> None:
    cache = QueryCache(Counting(), size=4)
    got = cache.embed_queries(["pasta"])
    got[:] = 0
    assert cache.embed_queries(["pasta"])[0].tolist() == [5.0, 2.0, 0.0, 1.0]


def test_concurrent_searches_get_their_own_texts_vectors() -> None:
    inner = Counting()
    cache = QueryCache(inner, size=16)
    texts = [f"query {'a' * (i % 24)}" for i in range(400)]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda t: cache.embed_queries([t])[0], texts))
    want = inner.embed_queries(texts)
    assert all(np.array_equal(v, w) for v, w in zip(got, want, strict=True))
    assert len(cache._kept) == 16


@pytest.mark.parametrize("kept", [1024, 0])
def test_a_search_asked_again_with_another_filter_skips_the_encoder(
    kept: int, settings: Settings, embedder: Embedder
) -> None:
    """The search page sends the same text again for every change of a filter or of the
    threshold; with KB_QUERY_CACHE=0 each search is encoded, as before."""
    app = create_app(settings.model_copy(update={"query_cache": kept}), embedder=embedder)
    try:
        client: FlaskClient = app.test_client()
        assert client.post("/add", json={"documents": COOKING}).status_code == 201
        asked = [
            {"query": "boiling pasta in salted water"},
            {"query": "boiling pasta in salted water", "filters": {"category": "cooking"}},
            {"query": "boiling pasta in salted water", "min_score": 0.1},
        ]
        answers = [client.post("/query", json=body).json for body in asked]
        text = scrape(client)
        assert sample(text, "kb_encoder_texts_total", kind="queries") == (1 if kept else 3)
        if kept:
            assert sample(text, "kb_query_cache_lookups_total", result="hit") == 2
            assert sample(text, "kb_query_cache_lookups_total", result="miss") == 1
        else:
            assert "kb_query_cache_lookups_total{" not in text
        # the kept vector scores as the encoded one did
        ids = {m["id"]: m["score"] for m in answers[0]["matches"]}
        assert ids
        assert all(ids[m["id"]] == m["score"] for m in answers[1]["matches"])
    finally:
        close_app(app)


class Wide(Counting):
    """A stand-in encoder of the packaged model's width: 384 floats a text."""

    dim = 384

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.array([np.full(384, hash(t) % 1000, np.float32) for t in texts])


def test_an_entry_holds_a_digest_of_its_text_not_the_text() -> None:
    """Keyed by the text, 1,024 queries of 10,000 characters past Latin-1 held 40 MB (review
    helper 87); each entry now holds the vector and 16 bytes, about 1.8 KiB (README)."""
    entries = 64
    inner = Wide()
    cache = QueryCache(inner, size=entries)
    head = "Ж" * 9_990  # long texts alike but for their last characters

    def fill(start: int) -> None:
        for i in range(start, start + entries):
            cache.embed_queries([f"{head}{i:010d}"])
            inner.calls.clear()  # the stand-in's record of its calls holds the texts

    fill(entries)  # the first round's allocations (the Lru's table) are not an entry's
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fill(0)  # every entry replaced by a new text of 10,000 characters
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(cache._kept) == entries
    # each new entry's vector (1,536 bytes of floats) and key; the text (20 KB) is not kept
    assert held < entries * 2 * 1024
    assert all(isinstance(key, bytes) and len(key) == 16 for key in cache._kept._items)


def test_long_texts_alike_but_for_their_ends_keep_their_own_vectors() -> None:
    inner = Wide()
    cache = QueryCache(inner, size=8)
    texts = ["x" * 9_999 + end for end in "abc"]
    first = cache.embed_queries(texts)
    again = cache.embed_queries([texts[2], texts[0], texts[1], texts[2]])
    assert inner.calls == [texts]  # the second call found all three
    assert np.array_equal(again, first[[2, 0, 1, 2]])
    assert np.array_equal(first, inner.embed_queries(texts))
