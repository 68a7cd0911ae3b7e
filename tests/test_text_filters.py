"""Text filters decided on the mirror (kb.document_filter): the documents Chroma's own test of
every record passes, from the mirror's texts or from the ids Chroma lists, as row masks."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from kb.config import Settings
from kb.document_filter import by_document
from kb.embeddings import Embedder
from kb.filters import CompiledFilter
from kb.mirror import Mirror
from kb.records import DOC, Record, doc_id_of
from kb.schemas import DocumentIn, QueryRequest
from kb.search import search
from kb.store import KnowledgeStore, WriteMode
from tests.conftest import changed

# words that tell Chroma's substring test from near misses: case, accents and their folds,
# LIKE's wildcards, escapes, quotes, other scripts, a newline, a NUL (Chroma's test reads a
# text only up to its first)
WORDS = (
    "the", "The", "THE", "then", "café", "Café", "CAFÉ", "cafe", "straße", "STRASSE",
    "naïve", "50%", "a_b", "a%b", "back\\slash", '"quoted"', "it's", "日本語", "smile🙂",
    "x.y", "[br]", "new\nline", "GAN", "gan", "nul\x00byte",
)  # fmt: skip
PATTERNS = (
    "the", "The", "THE", "he", "e t", "the ", "café", "Café", "CAFÉ", "afé", "é", "É", "ß",
    "SS", "ï", "%", "_", "a%", "a_b", "\\", '"', "'", "日本", "🙂", ".", "[", "\n", "GAN",
    "gan", "zzyzx", "byte", "nul",
)  # fmt: skip
REGEXES = ("[Cc]af", "^the", "é$", "\\d+%", "G[A-Z]N", "(?i)gan")


def random_text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def random_filter(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    if depth < 2 and rng.random() < 0.35:
        op = rng.choice(["$and", "$or"])
        return {op: [random_filter(rng, depth + 1) for _ in range(rng.randint(2, 3))]}
    if rng.random() < 0.2:
        return {rng.choice(["$regex", "$not_regex"]): rng.choice(REGEXES)}
    return {rng.choice(["$contains", "$not_contains"]): rng.choice(PATTERNS)}


@pytest.fixture(params=["chunked", "long"])
def varied(
    request: pytest.FixtureRequest, settings: Settings, embedder: Embedder
) -> Iterator[KnowledgeStore]:
    """40 documents of random words, then a third of them rewritten and a few deleted (their
    old rows stay in the mirror, dead): "chunked" cuts them into 16-token chunks (short
    texts, kept as they are), "long" keeps each whole (most over 256 characters: compressed)."""
    chunked = request.param == "chunked"
    store = KnowledgeStore.open(changed(settings, chunk_tokens=16 if chunked else None), embedder)
    rng = random.Random(11)
    store.add(
        [DocumentIn(id=f"d{i:02}", text=random_text(rng, rng.randint(2, 70))) for i in range(40)]
    )
    rewritten = [
        DocumentIn(id=f"d{i:02}", text=random_text(rng, rng.randint(2, 70)))
        for i in range(0, 40, 3)
    ]
    store.add(rewritten, WriteMode.UPSERT)
    store.delete(["d01", "d07", "d22"])
    store.replica.wait_loaded()
    yield store
    store.close()


def on_chroma(store: KnowledgeStore, where_document: dict[str, Any]) -> set[str]:
    """The documents passing, decided by Chroma's test of every record."""
    flt = by_document(CompiledFilter(None, where_document), store.records.ids)
    every = {doc_id_of(i) for i in store.records.ids()}
    if flt is None:
        return set()
    if flt.where is None:
        return every
    ((op, listed),) = flt.where[DOC].items()
    return set(listed) if op == "$in" else every - set(listed)


def on_mirror(store: KnowledgeStore, where_document: dict[str, Any]) -> set[str]:
    mirror = store.replica.current_mirror()
    assert mirror is not None
    flt = by_document(CompiledFilter(None, where_document), store.records.ids, mirror)
    if flt is None:
        return set()
    assert flt.where_document is None
    assert flt.text_rows is not None
    return {mirror.doc_id(row) for row in np.flatnonzero(flt.text_rows.rows).tolist()}


@pytest.mark.parametrize("scans", [True, False], ids=["scan", "chroma-ids"])
def test_the_mirror_passes_the_documents_chroma_does(
    varied: KnowledgeStore, scans: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pattern alone and negated, and 150 random combinations, against Chroma's own
    test: case, accents, wildcards of SQL's LIKE, escapes, other scripts, patterns across a
    word boundary, chunks of one document, dead rows of rewritten and deleted documents."""
    monkeypatch.setattr(Mirror, "scans_texts", property(lambda self: scans))
    rng = random.Random(5)
    filters: list[dict[str, Any]] = [
        {op: p} for p in PATTERNS for op in ("$contains", "$not_contains")
    ]
    filters += [{"$regex": r} for r in REGEXES] + [random_filter(rng) for _ in range(150)]
    passing = set()
    for where_document in filters:
        expected = on_chroma(varied, where_document)
        assert on_mirror(varied, where_document) == expected, where_document
        passing.add(len(expected))
    assert len(passing) > 10  # the filters pass few, many and all of the documents


def test_the_stores_hold_what_each_path_is_for(varied: KnowledgeStore) -> None:
    mirror = varied.replica.current_mirror()
    assert mirror is not None
    chunked = varied.settings.chunk_tokens == 16
    assert mirror.scans_texts is chunked
    if chunked:
        assert any(varied.get(f"d{i:02}").chunks > 2 for i in range(40) if i not in (1, 7, 22))


def test_substring_filters_on_the_mirror_ask_chroma_nothing(
    varied: KnowledgeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A $contains is tested on the mirror's texts while few are compressed; a $regex (Chroma's
    dialect) is always Chroma's, as is a $contains over compressed texts."""
    asked: list[Any] = []
    listing = varied.records.ids

    def counted(flt: CompiledFilter | None = None) -> list[str]:
        asked.append(flt.where_document if flt is not None else None)
        return listing(flt)

    monkeypatch.setattr(varied.records, "ids", counted)
    body = {"query": "café", "min_score": -1, "top_k": 40}
    both = {"$and": [{"$contains": "the"}, {"$not_contains": "GAN"}]}
    search(varied, QueryRequest.model_validate({**body, "where_document": both}))
    scans = varied.settings.chunk_tokens == 16
    assert asked == ([] if scans else [{"$contains": "the"}, {"$contains": "GAN"}])
    asked.clear()
    search(varied, QueryRequest.model_validate({**body, "where_document": {"$regex": "[Cc]af"}}))
    assert asked == [{"$regex": "[Cc]af"}]


@pytest.mark.parametrize("mode", ["dense", "keyword", "hybrid"])
def test_searches_answer_the_same_with_the_text_filter_decided_on_the_mirror(
    varied: KnowledgeStore, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search's matches, scores and counts are those of the same search with the filter
    decided by Chroma (a where-clause listing the documents)."""
    rng = random.Random(3)
    filters = [
        {"$contains": "the"},
        {"$not_contains": "café"},
        random_filter(rng),
        random_filter(rng),
    ]
    body = {"query": "the café is naïve", "mode": mode, "min_score": -1, "top_k": 40}
    for where_document in filters:
        request = QueryRequest.model_validate({**body, "where_document": where_document})
        (on_rows,) = search(varied, request)
        with monkeypatch.context() as patched:  # the search without the mirror's decision
            patched.setattr("kb.shown.by_document", lambda flt, ids, mirror: by_document(flt, ids))
            (listed,) = search(varied, request)
        assert [m.id for m in on_rows.matches] == [m.id for m in listed.matches], where_document
        assert [m.score for m in on_rows.matches] == pytest.approx(
            [m.score for m in listed.matches]
        )
        assert (on_rows.status, on_rows.candidates) == (listed.status, listed.candidates)


def test_a_rewritten_document_passes_by_its_new_text_only(
    settings: Settings, embedder: Embedder
) -> None:
    store = KnowledgeStore.open(settings, embedder)
    try:
        store.add([DocumentIn(id="a", text="A GAN pits a generator against a critic.")])
        store.add([DocumentIn(id="b", text="Gradient descent trains networks.")])
        store.replica.wait_loaded()
        body = {"query": "generator", "min_score": -1, "where_document": {"$contains": "GAN"}}
        request = QueryRequest.model_validate(body)
        assert [m.id for m in search(store, request)[0].matches] == ["a"]
        store.add(
            [DocumentIn(id="a", text="A diffusion model denoises step by step.")], WriteMode.UPSERT
        )
        (result,) = search(store, request)
        assert result.matches == []
        assert result.status == "no_candidates"
        store.add([DocumentIn(id="b", text="Gradient descent trains a GAN.")], WriteMode.UPSERT)
        assert [m.id for m in search(store, request)[0].matches] == ["b"]
    finally:
        store.close()


def test_rows_added_after_the_decision_pass_no_text_filter() -> None:
    """A filter decided on the mirror covers the rows it held then: a row appended meanwhile
    (a write landing during the search) is outside its mask, not an error."""
    mirror = Mirror(dim=2, generation=0)
    vector = np.array([1.0, 0.0], dtype=np.float32)

    def record(i: int, text: str) -> Record:
        return Record(f"r{i}", text, {DOC: f"r{i}"}, vector)

    mirror.apply([record(0, "a GAN"), record(1, "no match")], [], 1)
    flt = by_document(CompiledFilter(None, {"$contains": "GAN"}), lambda flt: [], mirror)
    assert flt is not None
    mirror.apply([record(2, "another GAN")], [], 2)
    selected = mirror.filtered(flt)
    assert selected is not None
    assert selected[0].tolist() == [True, False, False]
    again = by_document(CompiledFilter(None, {"$contains": "GAN"}), lambda flt: [], mirror)
    assert again is not None
    assert again.text_rows is not None
    assert again.text_rows.rows.tolist() == [True, False, True]


def test_a_text_filter_is_decided_once_a_write(
    settings: Settings, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a metadata filter's mask, a text filter's rows are kept until the next write: the
    same filter again scans no text, and after a write it is decided afresh."""
    store = KnowledgeStore.open(settings, embedder)
    scans: list[str] = []
    scan = Mirror.rows_containing

    def counted(mirror: Mirror, text: str, size: int) -> np.ndarray:
        scans.append(text)
        return scan(mirror, text, size)

    monkeypatch.setattr(Mirror, "rows_containing", counted)
    try:
        store.add([DocumentIn(id="a", text="A GAN pits a generator against a critic.")])
        store.replica.wait_loaded()
        body = {"query": "generator", "min_score": -1, "where_document": {"$contains": "GAN"}}
        request = QueryRequest.model_validate(body)
        for _ in range(3):
            assert [m.id for m in search(store, request)[0].matches] == ["a"]
        assert scans == ["GAN"]
        store.add([DocumentIn(id="b", text="Another GAN, another generator.")])
        assert sorted(m.id for m in search(store, request)[0].matches) == ["a", "b"]
        assert scans == ["GAN", "GAN"]
    finally:
        store.close()
