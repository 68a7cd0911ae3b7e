"""The IVF index over the mirror's rows: what it nominates, how it follows writes, and that
searches through it find what exact search finds."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

import numpy as np
import pytest

from kb import ann, replica
from kb import mirror as mirror_module
from kb.ann import AnnConfig, AnnIndex, list_count
from kb.config import Settings
from kb.keyword import KeywordIndex
from kb.mirror import Mirror
from kb.records import Record
from kb.schemas import DocumentIn
from kb.store import KnowledgeStore
from tests.conftest import changed

DIM = 16


def clustered(n: int, seed: int = 0) -> np.ndarray:
    """Normalized vectors around 20 centres: the shape real embeddings have."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, DIM))
    vectors = centres[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, DIM))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


def exact(vectors: np.ndarray, query: np.ndarray, k: int, allowed: np.ndarray) -> list[int]:
    scores = np.where(allowed, vectors @ query, -np.inf)
    return [int(i) for i in np.argsort(-scores, kind="stable")[:k] if np.isfinite(scores[i])]


@pytest.fixture(scope="module")
def built() -> tuple[np.ndarray, AnnIndex]:
    vectors = clustered(3000)
    return vectors, AnnIndex.build(vectors, np.arange(len(vectors)), nprobe=32)


def test_lists_grow_with_the_square_root_of_the_rows() -> None:
    assert list_count(100_000) == 1265
    assert list_count(10_000) == 256  # 39 rows a list to train on
    assert list_count(1) == 1


def test_candidates_hold_the_true_neighbours(built) -> None:
    vectors, index = built
    queries, everything = clustered(50, seed=1), np.ones(len(vectors), dtype=bool)
    found = 0
    for query in queries:
        candidates = set(index.candidates(query, 10).tolist())
        found += len(candidates & set(exact(vectors, query, 10, everything)))
    assert found / (10 * len(queries)) > 0.9


def test_a_filtered_search_nominates_allowed_rows_only_and_enough_of_them(built) -> None:
    vectors, index = built
    rng = np.random.default_rng(2)
    for share in (0.5, 0.05, 0.002):  # the last allows 6 rows: every list gets probed
        allowed = rng.random(len(vectors)) < share
        bits = np.packbits(allowed, bitorder="little")
        query = clustered(1, seed=3)[0]
        rows = index.candidates(query, 10, bits, int(allowed.sum()))
        assert allowed[rows].all()
        assert len(rows) >= min(10, int(allowed.sum()))
        if share < 0.01:
            assert set(rows.tolist()) == set(np.flatnonzero(allowed).tolist())


def test_rows_past_a_filters_bitmap_are_never_nominated(built) -> None:
    """A filter's mask covers the rows there were when it was taken; rows the index holds past
    it (a write landing during the search) are not allowed, whatever memory follows the
    bitmap. FAISS read the bitmap's size in bytes, and was given its size in bits: it read up
    to eight times past the end, here into bytes whose bits are all set."""
    vectors, index = built
    allowed = np.zeros(len(vectors) // 2, dtype=bool)
    allowed[:40] = True
    bits = np.packbits(allowed, bitorder="little")
    backing = np.full(len(bits) * 8, 0xFF, dtype=np.uint8)
    backing[: len(bits)] = bits
    for seed in range(5):
        query = clustered(1, seed=10 + seed)[0]
        rows = index.candidates(query, 10, backing[: len(bits)], int(allowed.sum()))
        assert rows.max() < len(allowed)
        assert allowed[rows].all()


def test_added_rows_are_found_and_removed_rows_are_not() -> None:
    vectors = clustered(2000)
    index = AnnIndex.build(vectors, np.arange(1500), nprobe=16)
    index.add(np.arange(1500, 2000), vectors[1500:])
    index.remove(np.arange(0, 1500, 2))
    assert len(index) == 1250
    for row in (1501, 1999, 1):  # a vector is its own nearest neighbour
        assert index.candidates(vectors[row], 1)[0] == row
    assert not set(index.candidates(vectors[0], 50).tolist()) & set(range(0, 1500, 2))


def records(vectors: np.ndarray, start: int = 0) -> list[Record]:
    return [
        Record(f"r{start + i}", f"text {start + i}", {"_kb_doc": f"r{start + i}", "n": i % 3}, v)
        for i, v in enumerate(vectors)
    ]


def test_the_mirror_builds_its_index_from_the_minimum_and_searches_through_it() -> None:
    vectors = clustered(1200)
    mirror = Mirror(DIM, 0, AnnConfig(min_rows=1000, nprobe=64))
    mirror.apply(records(vectors[:900]), [], 1)
    mirror.wait_index()
    assert mirror._index is None
    assert mirror.searches_all
    mirror.apply(records(vectors[900:], 900), [], 2)
    mirror.wait_index()
    assert mirror._index is not None
    assert len(mirror._index) == 1200
    query = clustered(1, seed=5)[0]
    hits = mirror.nearest(query, 5)
    want = exact(vectors, query, 5, np.ones(1200, dtype=bool))
    assert [r.id for r, _ in hits] == [f"r{i}" for i in want]
    assert np.allclose([s for _, s in hits], vectors[want] @ query)  # exact cosine scores


def test_writes_during_a_build_reach_the_new_index(monkeypatch) -> None:
    """The index is trained without the lock; writes landing meanwhile are applied to it
    before it replaces the old one."""
    vectors = clustered(1500)
    mirror = Mirror(DIM, 0, AnnConfig(min_rows=1000, nprobe=1000))
    started, release = threading.Event(), threading.Event()
    build = AnnIndex.build

    def slow_build(*args: Any, **kwargs: Any) -> AnnIndex:
        started.set()
        release.wait(10)
        return build(*args, **kwargs)

    monkeypatch.setattr(AnnIndex, "build", slow_build)
    mirror.apply(records(vectors[:1200]), [], 1)
    assert started.wait(10)
    mirror.apply(records(vectors[1200:], 1200), [f"r{i}" for i in range(100)], 2)
    release.set()
    mirror.wait_index()
    assert mirror._index is not None
    assert len(mirror._index) == 1400
    for row in (0, 1300):
        found = {r.id for r, _ in mirror.nearest(vectors[row], 3)}
        assert (f"r{row}" in found) == (row >= 100)


def test_a_broad_filter_goes_to_the_index_and_a_narrow_one_is_scored_exactly() -> None:
    vectors = clustered(3000)
    mirror = Mirror(DIM, 0, AnnConfig(min_rows=1000, nprobe=8))
    mirror.apply(records(vectors), [], 1)
    mirror.wait_index()
    calls: list[int] = []
    index = mirror._index
    assert index is not None
    candidates = index.candidates

    def counted(*args: Any, **kwargs: Any) -> np.ndarray:
        calls.append(1)
        return candidates(*args, **kwargs)

    index.candidates = counted  # type: ignore[method-assign]
    query = clustered(1, seed=9)[0]
    broad = mirror.matches({"n": {"$ne": 0}})  # two thirds of the rows
    narrow = mirror.matches({"_kb_doc": {"$in": ["r1", "r2", "r3"]}})
    mirror.nearest(query, 5, broad)
    assert calls == [1]
    hits = mirror.nearest(query, 5, narrow)
    assert calls == [1]
    assert sorted(r.id for r, _ in hits) == ["r1", "r2", "r3"]


def test_a_filter_whose_gather_costs_more_than_the_index_goes_to_the_index_every_time() -> None:
    """Gathering a filter's rows costs about GATHER_COST times what the index spends on a
    vector. Such a filter was gathered anyway, and its rows kept: at 100k, a quarter of the
    rows took 7 ms against the index's 2.5, and a stream of such filters filled the blocks'
    memory with vectors read once or pushed out before they were read again (1.5 GB)."""
    vectors = clustered(3000)
    mirror = Mirror(DIM, 0, AnnConfig(min_rows=1000, nprobe=8))
    mirror.apply(records(vectors), [], 1)
    mirror.wait_index()
    index = mirror._index
    assert index is not None
    calls: list[int] = []
    candidates = index.candidates

    def counted(*args: Any, **kwargs: Any) -> np.ndarray:
        calls.append(1)
        return candidates(*args, **kwargs)

    index.candidates = counted  # type: ignore[method-assign]
    mask, key = mirror.selection({"_kb_doc": {"$in": [f"r{i}" for i in range(0, 3000, 4)]}})
    allowed = int(mask.sum())  # a quarter: the index scans more rows, but less than the gather
    assert allowed < index.scanned(allowed / 3000) < allowed * mirror_module.GATHER_COST
    query = clustered(1, seed=9)[0]
    want = [f"r{i}" for i in exact(vectors, query, 5, mask)]
    for _ in range(3):
        assert [r.id for r, _ in mirror.nearest(query, 5, mask, key)] == want
    assert calls == [1, 1, 1]
    assert key not in mirror._blocks


def test_a_tie_past_the_index_candidates_is_scored_exactly_and_keeps_no_block() -> None:
    """A filter the index serves (cheaper than a gather) whose search ends in a tie is scored
    exactly that once; it gathered and kept a block, and from then on, until the next write,
    every search with the filter went the exact way: the path depended on an earlier tie."""
    vectors = clustered(3000)
    vectors[0:3000:4][:40] = vectors[0]  # forty identical vectors among the filter's rows
    mirror = Mirror(DIM, 0, AnnConfig(min_rows=1000, nprobe=8))
    mirror.apply(records(vectors), [], 1)
    mirror.wait_index()
    index = mirror._index
    assert index is not None
    mask, key = mirror.selection({"_kb_doc": {"$in": [f"r{i}" for i in range(0, 3000, 4)]}})
    allowed = int(mask.sum())
    assert allowed < index.scanned(allowed / 3000) < allowed * mirror_module.GATHER_COST
    other = clustered(1, seed=9)[0]
    for query in (other, other, vectors[0], other):
        rows, _ = mirror.nearest_rows(query, 5, mask, key)
        if query is other:
            assert rows.tolist() == exact(vectors, query, 5, mask)
        else:
            assert sorted(rows.tolist()) == list(range(0, 160, 4))  # the whole tie
        assert key not in mirror._blocks


def centroids(index: AnnIndex) -> np.ndarray:
    quantizer = index._index.quantizer
    return quantizer.reconstruct_n(0, quantizer.ntotal)


@pytest.fixture
def seeded(settings, embedder, seed_docs: list[DocumentIn]) -> Settings:
    """Settings of a store holding the seed documents, closed, with an index from 100 rows."""
    config = changed(settings, ann_min_rows=100)
    store = KnowledgeStore.open(config, embedder)
    store.add(seed_docs)
    store.close()
    return config


@pytest.fixture
def trainings(monkeypatch) -> list[str]:
    """The threads that trained lists (the load's training and the build's), in order."""
    trained: list[str] = []
    real = ann.train

    def watched(sample: np.ndarray, rows: int) -> ann.Lists:
        trained.append(threading.current_thread().name)
        return real(sample, rows)

    monkeypatch.setattr(ann, "train", watched)  # the build's
    monkeypatch.setattr(replica, "train", watched)  # the load's
    return trained


class Opening:
    """A store being opened, for hooks that run on its loader thread and need the store."""

    def __init__(self) -> None:
        self.store: KnowledgeStore | None = None
        self._open = threading.Event()

    def open(self, config: Settings, embedder: Any) -> KnowledgeStore:
        self.store = KnowledgeStore.open(config, embedder)
        self._open.set()
        return self.store

    def wait(self) -> KnowledgeStore:
        assert self._open.wait(30)
        assert self.store is not None
        return self.store


def indexed(store: KnowledgeStore) -> Mirror:
    """The store's mirror once loaded, with its vector index built."""
    store.replica.wait_loaded()
    mirror = store.replica.mirror
    assert mirror is not None
    assert mirror._index is not None
    return mirror


def test_a_loads_index_is_trained_beside_it_as_the_build_would_train_it(
    seeded: Settings, embedder, trainings: list[str]
) -> None:
    """At start-up the lists are trained on the keyword index's vectors while the mirror
    loads; the build only fills them, and they are the lists it would have trained."""
    store = KnowledgeStore.open(seeded, embedder)
    try:
        mirror = indexed(store)
        assert trainings == ["kb-ann-lists"]  # not trained again by the build
        rows = np.flatnonzero(mirror._alive[: mirror.size])
        assert len(rows) > ann.training_sample(len(rows)).size  # a sample, not every row
        again = AnnIndex.build(mirror._vectors, rows, 8)
        assert np.array_equal(centroids(mirror._index), centroids(again))
        assert len(mirror._index) == len(rows)
        assert ask(store, "dense")[0]
    finally:
        store.close()


def test_a_write_landing_as_the_load_ends_builds_with_the_lists_trained_beside_it(
    seeded: Settings, embedder, trainings: list[str], monkeypatch
) -> None:
    """A write waiting for the copies' lock during the load gets it once the mirror is
    published, before the loader starts the build: the build that write starts must take
    the lists being trained, not train a second time (both on the 2 cores at once)."""
    opening = Opening()

    def a_write_first() -> None:  # runs between the mirror's publication and build_index
        opening.wait().add([DocumentIn(id="late", text="Written while the mirror was loading.")])

    monkeypatch.setattr(replica, "release_freed_memory", a_write_first)
    store = opening.open(seeded, embedder)
    try:
        mirror = indexed(store)
        assert trainings == ["kb-ann-lists"]
        assert mirror._lists is None  # taken, not left for a later build
        assert store.get("late").text.startswith("Written")
    finally:
        store.close()


def test_an_index_whose_training_beside_the_load_failed_is_trained_by_the_build(
    seeded: Settings, embedder, monkeypatch
) -> None:
    def broken(*args: Any) -> None:
        raise OSError("the keyword index could not be read")

    monkeypatch.setattr(KeywordIndex, "sample", broken)
    store = KnowledgeStore.open(seeded, embedder)
    try:
        store.replica.wait_loaded()
        assert store.replica.mirror._index is not None
        assert store.replica.ready
    finally:
        store.close()


def test_a_load_that_failed_skips_the_k_means_beside_it(
    seeded: Settings, embedder, trainings: list[str], monkeypatch
) -> None:
    opening = Opening()
    sample = KeywordIndex.sample

    def unreadable(*args: Any, **kwargs: Any) -> None:
        raise OSError("the keyword index could not be read")

    def after_the_load(self: KeywordIndex, *args: Any) -> Any:
        loader = opening.wait().replica._loader
        assert loader is not None
        loader.join(30)  # the load has failed and returned
        return sample(self, *args)

    monkeypatch.setattr(KeywordIndex, "snapshot", unreadable)
    monkeypatch.setattr(KeywordIndex, "sample", after_the_load)
    store = opening.open(seeded, embedder)
    try:
        store.replica.wait_loaded()
        assert store.replica.mirror is None
        for thread in threading.enumerate():  # the training thread, done with its sample
            if thread.name == "kb-ann-lists":
                thread.join(30)
        assert trainings == []
    finally:
        store.close()


def test_lists_trained_for_another_row_count_are_not_used() -> None:
    vectors = clustered(3000)
    few = ann.train(vectors[:1000], 1000)
    assert few.suits(1500)
    assert not few.suits(3000)
    assert not few.suits(500)
    given: Future[ann.Lists | None] = Future()
    given.set_result(few)
    mirror = Mirror(DIM, 0, AnnConfig(min_rows=1000, nprobe=8))
    mirror.apply(records(vectors), [], 1, index=False)
    mirror.expect_lists(given)
    mirror.build_index()
    mirror.wait_index()
    assert mirror._index is not None
    assert mirror._index.nlist == list_count(3000) != few.index.nlist
    assert mirror._index.trained_rows == 3000


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_searches_through_the_index_agree_with_exact_searches(
    settings, embedder, seed_docs: list[DocumentIn], mode: str
) -> None:
    """Probing every list is exhaustive: the same answers as the exact path, filtered or not."""
    through_index = changed(settings, ann_min_rows=100, ann_nprobe=65_536)
    answers = []
    for config in (through_index, changed(settings, ann_min_rows=10**9)):
        store = KnowledgeStore.open(config, embedder)
        try:
            if not store.count():
                store.add(seed_docs)
            store.replica.wait_loaded()
            assert store.replica.ready
            assert (store.replica.mirror._index is not None) == (config is through_index)
            answers.append(ask(store, mode))
        finally:
            store.close()
    assert answers[0] == answers[1]
    assert all(answers[0])


def ask(store: KnowledgeStore, mode: str) -> list[list[tuple[str, float]]]:
    from kb.schemas import QueryRequest
    from kb.search import search

    out = []
    for extra in ({}, {"filters": {"difficulty": ["beginner", "intermediate"]}}):
        body = {"query": "how do indexes speed up queries", "mode": mode, "top_k": 8, **extra}
        request = QueryRequest.model_validate({**body, "min_score": -1})
        out.append([(m.id, round(m.score, 5)) for m in search(store, request)[0].matches])
    return out
