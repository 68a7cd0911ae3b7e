"""The in-memory mirror answers where-clauses exactly as Chroma does, and searches exactly."""

from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import chromadb
import numpy as np
import pytest

from kb import mirror as mirror_module
from kb.filters import compile_filter
from kb.mirror import Mirror, filter_key
from kb.records import Record

KEYS = ("a", "b", "tags")
SCALARS: tuple[Any, ...] = (1, 2, 2.0, 3.5, True, False, "1", "x", "y", 0)
THRESHOLDS = ("$gt", "$gte", "$lt", "$lte")


def random_metadata(rng: random.Random) -> dict[str, Any]:
    meta: dict[str, Any] = {"_kb_doc": "d"}
    for key in ("a", "b"):
        if rng.random() < 0.7:
            meta[key] = rng.choice(SCALARS)
    if rng.random() < 0.6:
        meta["tags"] = rng.sample(["x", "y", "z", "w"], rng.randint(1, 3))
    return meta


def random_where(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    if depth < 2 and rng.random() < 0.3:
        op = rng.choice(["$and", "$or"])
        return {op: [random_where(rng, depth + 1) for _ in range(rng.randint(2, 3))]}
    key = rng.choice(KEYS)
    op = rng.choice(["$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte", "$contains"])
    if op in {"$gt", "$gte", "$lt", "$lte"}:
        # integral bounds only: Chroma truncates a fractional bound against integer metadata
        # (it finds 2 >= 2.5); the mirror compares numbers as numbers (test below)
        return {key: {op: rng.choice([0, 1, 2, 3, 2.0])}}
    if op in {"$in", "$nin"}:
        return {key: {op: rng.choice([[1, 2], [0, 2], [2.0, 3.5], ["x", "1"], [True]])}}
    if op == "$contains":
        return {"tags": {rng.choice(["$contains", "$not_contains"]): rng.choice("xyzw")}}
    return {key: {op: rng.choice(SCALARS)}}


@pytest.fixture(scope="module")
def both() -> tuple[Any, Mirror, list[Record]]:
    rng = random.Random(7)
    vectors = np.random.default_rng(7).normal(size=(300, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    records = [Record(f"r{i}", "", random_metadata(rng), vectors[i]) for i in range(300)]
    collection = chromadb.EphemeralClient().get_or_create_collection(
        "mirror_diff", metadata={"hnsw:space": "cosine"}
    )
    collection.add(
        ids=[r.id for r in records],
        metadatas=[r.metadata for r in records],
        embeddings=vectors,
    )
    mirror = Mirror(8, generation=0)
    mirror.apply(records[:200], [], 1)
    mirror.apply(records[200:], [], 2)  # two batches: the arrays grow
    return collection, mirror, records


def test_filters_select_what_chroma_selects(both) -> None:
    collection, mirror, _ = both
    rng = random.Random(11)
    for _ in range(300):
        where = random_where(rng)
        want = set(collection.get(where=where, include=[])["ids"])
        got = {mirror.ids[row] for row in np.flatnonzero(mirror.matches(where))}
        assert got == want, where


def test_ranges_compare_numbers_as_numbers(both) -> None:
    _, mirror, _ = both
    rows = np.flatnonzero(mirror.matches({"a": {"$gte": 2.5}}))
    assert rows.size
    assert all(mirror.record(row).metadata["a"] == 3.5 for row in rows)


def held_by_both(name: str, metadatas: list[dict[str, Any]]) -> tuple[Any, Mirror]:
    """A Chroma collection and a mirror holding records r0, r1, ... with these metadatas."""
    records = [
        Record(f"r{i}", "", meta, np.eye(1, 8, i % 8, dtype=np.float32)[0])
        for i, meta in enumerate(metadatas)
    ]
    collection = chromadb.EphemeralClient().get_or_create_collection(name)
    collection.add(
        ids=[r.id for r in records],
        metadatas=[r.metadata for r in records],
        embeddings=np.stack([r.embedding for r in records]),
    )
    mirror = Mirror(8, generation=0)
    mirror.apply(records, [], 1)
    return collection, mirror


FRACTIONS = (2.5, -2.5, 0.5, -0.5, 2.7, -0.2)
BEYOND_64_BITS = (1e19, -1e19, 9.3e18, 2.0**63)
ENDS_OF_64_BITS = (2**63 - 1, 2**63 - 2, -(2**63), -(2**63) + 1)
HOLDS = {
    "$eq": lambda v, b: v == b,
    "$ne": lambda v, b: v != b,
    "$gt": lambda v, b: v > b,
    "$gte": lambda v, b: v >= b,
    "$lt": lambda v, b: v < b,
    "$lte": lambda v, b: v <= b,
    "$in": lambda v, b: v in b,
    "$nin": lambda v, b: v not in b,
}


def assert_numbers_as_numbers(
    collection: Any, mirror: Mirror, values: list[Any], bounds: list[Any]
) -> None:
    """Every operator with every bound (lists for $in / $nin), compiled as kb compiles it:
    Chroma selects what Python's comparisons of the numbers select (the last record, with
    no `n`, aside), and the mirror selects what Chroma does."""
    for op, holds in HOLDS.items():
        for bound in bounds:
            if (op in {"$in", "$nin"}) != isinstance(bound, list):
                continue
            where = compile_filter(where={"n": {op: bound}}).where
            assert where is not None
            chroma = set(collection.get(where=where, include=[])["ids"])
            memory = {mirror.ids[row] for row in np.flatnonzero(mirror.matches(where))}
            numbers = {f"r{i}" for i, value in enumerate(values) if holds(value, bound)}
            assert chroma - {"r" + str(len(values))} == numbers, (op, bound)
            assert memory == chroma, (op, bound)


def test_fractional_bounds_select_numbers_as_numbers_in_chroma_too() -> None:
    """Chroma compares stored integers with a fractional bound truncated toward zero:
    {"n": {"$eq": 2.5}} matched n = 2, so a delete by that filter removed it (and a bound
    beyond 64 bits clamped: $eq 1e19 matched 2**63 - 1). The compiled filter names the
    integers beside the bound; Chroma, the mirror and Python then agree (documents without
    the key: whatever Chroma says, the mirror says too)."""
    values: list[Any] = [*range(-4, 5), *(float(n) for n in range(-4, 5))]
    # (not 2.0**63 itself: Chroma does not find a stored 2.0**63 equal to the bound 2.0**63)
    values += [*FRACTIONS, 1e19, -1e19, 9.3e18, *ENDS_OF_64_BITS]
    metadatas = [{"_kb_doc": "d", "n": value} for value in values] + [{"_kb_doc": "d"}]
    collection, mirror = held_by_both("mirror_fractions", metadatas)
    bounds: list[Any] = [*FRACTIONS, *BEYOND_64_BITS, [2.5], [2.5, 3.0], [-0.5, 0.5, 1.0]]
    bounds += [[0.2, 2.0], [1e19, 1.0]]
    assert_numbers_as_numbers(collection, mirror, values, bounds)


def test_integer_bounds_beyond_2_53_select_floats_as_numbers_in_chroma_too() -> None:
    """Chroma compares a stored float with an integer bound as the float nearest to it:
    {"n": {"$eq": 2**53 + 1}} matched n = 2.0**53, so a delete by that filter removed it,
    and $lt 2**53 + 1 missed it. The compiled filter names that float; Chroma, the mirror
    and Python then agree."""
    big = 1_700_000_000_000_000_001
    values: list[Any] = [2**53, 2**53 + 1, 2**53 + 2, float(2**53), float(2**53 + 2)]
    values += [big - 1, big, big + 1, float(big), -(2**53) - 1, -float(2**53), 1, 2.0]
    values += [2**63 - 1, -(2**63), 2**63 - 2048, float(2**63 - 2048)]  # ends of 64 bits
    metadatas = [{"_kb_doc": "d", "n": value} for value in values] + [{"_kb_doc": "d"}]
    collection, mirror = held_by_both("mirror_rounded", metadatas)
    bounds: list[Any] = [2**53 + 1, 2**53 + 3, -(2**53) - 1, big, big + 1, big - 1, 2**53]
    bounds += [[2**53 + 1], [big, 2], [2**53 + 1, 2**53 + 3], [2**53, big + 1]]
    # beside 2**63 Chroma cannot be corrected (these are left as it answers them): a
    # correction must not make them worse, as naming 2.0**63 - 1024 did (a delete by
    # $lt 2**63 - 808 removed 2**63 - 1; review helper 29)
    edges = [2**63 - 513, 2**63 - 808, 2**63 - 1535, -(2**63) + 513, -(2**63) + 1535]
    for op in ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte"):
        for bound in edges:
            where = compile_filter(where={"n": {op: bound}}).where
            assert where == {"n": {op: bound}}, (op, bound)
    assert_numbers_as_numbers(collection, mirror, values, bounds)


BIG = 1_700_000_000_000_000_001  # a snowflake id: above 2**53, where floats skip integers
NUMBERS: tuple[Any, ...] = (
    *(BIG - 1, BIG, BIG + 1, float(BIG), 2**53, 2**53 + 1, float(2**53), 2**63 - 1, -(2**63)),
    *(1, 2, 1.0, 2.0, 2.5, -2, 0),
)
LISTS: tuple[list[Any], ...] = ([1, 2], [1.0, 2.5], [2.0], [BIG], [BIG + 1], [float(BIG)])
# whole bounds only: Chroma truncates a fractional one against integers (see random_where)
BOUNDS = tuple(n for n in (*NUMBERS, 1.7e18, 2.0**62, -(2.0**63)) if float(n).is_integer())


def test_large_integers_are_compared_exactly_as_chroma_does() -> None:
    """Integers beyond 2**53 (ids, nanosecond stamps) were compared as float64 in memory:
    BIG matched BIG - 1 and BIG + 1, and $ne or $gt on it found nothing."""
    metadatas = [{"_kb_doc": "d", "n": value} for value in NUMBERS]
    metadatas += [{"_kb_doc": "d", "n": items} for items in LISTS] + [{"_kb_doc": "d"}]
    collection, mirror = held_by_both("mirror_big", metadatas)
    wheres = [{"n": {op: bound}} for op in ("$eq", "$ne", *THRESHOLDS) for bound in BOUNDS]
    wheres += [{"n": {op: [BIG, 2]}} for op in ("$in", "$nin")]
    wheres += [{"n": {op: item}} for op in ("$contains", "$not_contains") for item in NUMBERS]
    for where in wheres:
        want = set(collection.get(where=where, include=[])["ids"])
        got = {mirror.ids[row] for row in np.flatnonzero(mirror.matches(where))}
        assert got == want, where


def test_bounds_beyond_64_bits_pass_every_integer_or_none() -> None:
    values = [-(2**63), -1, 0, 2**63 - 1, 0.5]
    records = [Record(f"r{i}", "", {"_kb_doc": "d", "n": v}, [1.0]) for i, v in enumerate(values)]
    mirror = Mirror(1, generation=0)
    mirror.apply([*records, Record("none", "", {"_kb_doc": "d"}, [1.0])], [], 1)

    def found(where: dict[str, Any]) -> list[Any]:
        return [values[row] for row in np.flatnonzero(mirror.matches(where))]

    assert found({"n": {"$lt": 1e19}}) == values
    assert found({"n": {"$gte": -1e19}}) == values
    assert found({"n": {"$gt": 1e19}}) == found({"n": {"$lte": -1e19}}) == []
    assert found({"n": {"$gte": 2**63 - 1}}) == [2**63 - 1]
    assert found({"n": {"$lte": -(2**63)}}) == [-(2**63)]
    assert found({"n": {"$lt": 2**63 - 1}}) == [-(2**63), -1, 0, 0.5]


def test_filtered_search_is_exact(both) -> None:
    _, mirror, records = both
    query = np.asarray(records[0].embedding)
    where = {"a": {"$in": [1, 2]}}
    mask = mirror.matches(where)
    hits = mirror.nearest(query, 5, mask)
    allowed = [r for r in records if mask[int(r.id[1:])]]
    scores = sorted((float(np.dot(r.embedding, query)) for r in allowed), reverse=True)[:5]
    assert [round(score, 5) for _, score in hits] == [round(s, 5) for s in scores]


def test_deleted_and_replaced_rows_are_masked(both) -> None:
    _, _, records = both
    mirror = Mirror(8, generation=0)
    mirror.apply(records[:10], [], 1)
    replaced = Record("r1", "", {"_kb_doc": "d", "a": "new"}, records[1].embedding)
    mirror.apply([replaced], ["r2"], 2)
    found = {mirror.ids[row] for row in np.flatnonzero(mirror.matches({"a": {"$ne": "zz"}}))}
    assert "r2" not in found
    assert len(found) == 9
    new = {mirror.ids[row] for row in np.flatnonzero(mirror.matches({"a": "new"}))}
    assert new == {"r1"}
    assert len(mirror) == 9
    assert mirror.generation == 2


def test_hits_show_their_texts_as_added_long_ones_kept_compressed() -> None:
    long = "Sourdough starters need feeding; naïve bakers forget. " * 12  # 648 characters
    odd = "".join(chr(0x4E00 + i) for i in range(300))  # long, but compresses to more bytes
    texts = [long, "a short note", odd, ""]
    vector = [1.0] + [0.0] * 7
    mirror = Mirror(8, generation=0)
    mirror.apply(
        [Record(f"t{i}", text, {"_kb_doc": f"t{i}"}, vector) for i, text in enumerate(texts)],
        [],
        1,
    )
    shown = mirror.records([(f"t{i}", 1.0) for i in range(len(texts))], texts=True)
    assert [record.text for record, _ in shown] == texts
    assert [record.text for record, _ in mirror.records([("t0", 1.0)])] == [""]  # not asked
    kept = [mirror._texts.stored_size(mirror.row(f"t{i}")) for i in range(len(texts))]  # type: ignore[arg-type]
    assert kept[0] < len(long) / 2  # packed
    assert kept[1:] == [len(text) for text in texts[1:]]  # as they were


FILTERS = [
    {"filters": {"category": "cooking"}},
    {"filters": {"difficulty": ["beginner", "advanced"]}},
    {"where": {"date": {"$gte": "2024-01-01"}}},
    {"where": {"$or": [{"minutes": {"$lt": 60}}, {"category": "baking"}]}},
    {"where": {"tags": {"$contains": "italian"}}},
]


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_store_searches_agree_with_and_without_the_mirror(cooking, store, mode: str) -> None:
    """The same filtered query through the mirror and through Chroma: same answers."""
    store.replica.wait_loaded()
    assert store.replica.mirror is not None
    assert len(store.replica.mirror) == 4

    def ask(filters: dict[str, Any]) -> list[tuple[str, float]]:
        body = {"query": "italian food to cook", "mode": mode, "min_score": -1, **filters}
        result = cooking.post("/query", json=body).json
        return [(m["id"], round(m["score"], 5)) for m in result["matches"]]

    with_mirror = [ask(f) for f in FILTERS]
    mirror, store.replica.mirror = store.replica.mirror, None
    try:
        without = [ask(f) for f in FILTERS]
    finally:
        store.replica.mirror = mirror
    assert with_mirror == without
    assert all(with_mirror)


def test_writes_reach_the_mirror(cooking, store) -> None:
    store.replica.wait_loaded()
    cooking.post("/delete", json={"ids": ["pasta"]})
    body = {"query": "pasta", "mode": "dense", "min_score": -1, "filters": {"category": "cooking"}}
    store_filter = compile_filter({"category": "cooking"})
    assert store.replica.mirror_for(store_filter) is not None
    assert store_filter.where is not None
    ids = [m["id"] for m in cooking.post("/query", json=body).json["matches"]]
    assert ids == ["risotto"]


def test_stats_from_the_mirror_equal_stats_from_chroma(cooking, store) -> None:
    store.replica.wait_loaded()
    cooking.post("/delete", json={"ids": ["bread"]})
    from_mirror, count = store.stats(), store.count()
    mirror, store.replica.mirror = store.replica.mirror, None
    try:
        assert store.stats() == from_mirror
        assert store.count() == count
    finally:
        store.replica.mirror = mirror
    assert from_mirror.documents == count == 3


def test_a_filters_gathered_vectors_are_reused_until_the_next_write(cooking, store) -> None:
    """Kept from the filter's second search on: a filter asked once (a different one on every
    query, say) would fill the blocks' memory with vectors no search reads again."""
    store.replica.wait_loaded()
    mirror = store.replica.current_mirror()
    flt = compile_filter({"difficulty": ["intermediate", "advanced"]})
    vector = store.embedder.embed_queries(["bread and rice"])[0]
    first = mirror.nearest(vector, 5, mirror.matches(flt.where), "key")
    assert [r.id for r, _ in first] in (["bread", "risotto"], ["risotto", "bread"])
    assert "key" not in mirror._blocks  # asked once: gathered for that search alone
    assert mirror.nearest(vector, 5, mirror.matches(flt.where), "key") == first
    assert "key" in mirror._blocks  # two of four rows: gathered, and kept

    def same(hits: list) -> bool:
        return [(r.id, round(x, 5)) for r, x in hits] == [(r.id, round(x, 5)) for r, x in first]

    assert same(mirror.nearest(vector, 5, mirror.matches(flt.where), "key"))
    assert same(mirror.nearest(vector, 5, mirror.matches(flt.where)))
    cooking.post("/delete", json={"ids": ["risotto"]})
    mirror = store.replica.current_mirror()
    assert "key" not in mirror._blocks  # a write drops them
    again = mirror.nearest(vector, 5, mirror.matches(flt.where), "key")
    assert [r.id for r, _ in again] == ["bread"]
    assert "key" not in mirror._blocks  # and what was asked: the first search since is once


def test_health_says_whether_the_mirror_is_loaded(cooking, store) -> None:
    """/health is 200 from the start; `ready` turns true once searches run in memory."""
    store.replica.wait_loaded()
    assert cooking.get("/health").json["ready"] is True
    mirror, store.replica.mirror = store.replica.mirror, None  # as before the load finishes
    try:
        health = cooking.get("/health")
        assert health.status_code == 200
        assert health.json["ready"] is False
        body = {"query": "italian food", "min_score": -1}
        assert cooking.post("/query", json=body).json["matches"]  # still answers
    finally:
        store.replica.mirror = mirror


@pytest.mark.parametrize(
    ("where", "key", "shared"),
    [
        ({"a": {"$ne": "zz"}}, None, True),  # most rows, no key: one pass over every row
        ({"a": {"$ne": "zz"}}, "broad", True),  # most rows, kept as a block
        ({"a": 1}, None, False),  # few rows, no key: gathered for each search
    ],
)
def test_concurrent_searches_sharing_a_product_get_their_own_exact_answers(
    both, monkeypatch, where: dict[str, Any], key: str | None, shared: bool
) -> None:
    """Searches that arrive together are scored in one matrix product; each must still get
    what it gets alone."""
    _, mirror, records = both
    batches: list[int] = []
    product = mirror._product

    def slow_product(matrix: np.ndarray, vectors: list[np.ndarray]) -> np.ndarray:
        batches.append(len(vectors))
        time.sleep(0.01)  # long enough for the other searches to queue behind this one
        return product(matrix, vectors)

    monkeypatch.setattr(mirror, "_product", slow_product)
    monkeypatch.setattr(mirror, "_blocks", type(mirror._blocks)())  # blocks use the patch
    mask = mirror.matches(where)
    queries = [np.asarray(r.embedding) for r in records[:48]]
    alone = [mirror.nearest(q, 5, mask, key) for q in queries]
    gate = threading.Barrier(16)

    def ask(i: int) -> list[tuple[Record, float]]:
        if i < 16:
            gate.wait()  # the first sixteen start at once
        return mirror.nearest(queries[i], 5, mask, key)

    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(ask, range(len(queries))))
    # the same rows; scores equal but for float32 rounding (a matrix product sums in
    # another order than a matrix-vector one)
    assert [[r.id for r, _ in hits] for hits in together] == [[r.id for r, _ in h] for h in alone]
    assert np.allclose([[s for _, s in h] for h in together], [[s for _, s in h] for h in alone])
    assert all(alone)
    together_sizes = batches[len(queries) :]  # the searches made alone came first
    assert (max(together_sizes) > 1) == shared, together_sizes


def test_a_shared_product_scores_more_vectors_at_once_the_same() -> None:
    rng = np.random.default_rng(3)
    mirror = Mirror(8, generation=0)
    matrix = rng.normal(size=(50, 8)).astype(np.float32)
    for count in (1, 3, 4, 20):  # one product each, then one matrix product
        vectors = list(rng.normal(size=(count, 8)).astype(np.float32))
        got = mirror._product(matrix, vectors)
        assert np.allclose(got, np.stack([matrix @ v for v in vectors]), atol=1e-5)


def test_vectors_gathered_for_a_mask_from_before_a_write_serve_no_later_search() -> None:
    """A search that took a filter's mask before a write and gathered its rows' vectors after
    it must not leave them for the searches after the write: they would still find the rows
    the write deleted."""
    mirror = Mirror(dim=2, generation=0)
    vectors = [np.array([1.0, 0.0], dtype=np.float32), np.array([0.8, 0.6], dtype=np.float32)]
    records = [Record(f"r{i}", "", {"_kb_doc": f"r{i}", "a": 1}, v) for i, v in enumerate(vectors)]
    mirror.apply(records, [], 1)
    where = {"a": 1}
    before, key = mirror.selection(where)  # a search takes its mask ...
    mirror.apply([], ["r0"], 2)  # ... a write deletes r0 ...
    assert [r.id for r, _ in mirror.nearest(vectors[0], 2, before, key)] == ["r0", "r1"]
    # asked again with its old mask: its vectors are kept now, under the same key
    assert [r.id for r, _ in mirror.nearest(vectors[0], 2, before, key)] == ["r0", "r1"]
    assert mirror._blocks[key].mask is before
    after, key = mirror.selection(where)  # the next search, after the write
    # the old block's rows are not this mask's: no read of a kept block, a pass over all rows
    assert mirror._exact_cost(1, after, key) == len(after)
    assert [r.id for r, _ in mirror.nearest(vectors[0], 2, after, key)] == ["r1"]


def hundred_keys(size: int = 2000) -> tuple[Mirror, np.ndarray]:
    """A mirror of `size` rows whose metadata `k` takes 100 values (i % 100), and its vectors."""
    mirror = Mirror(dim=4, generation=0)
    vectors = np.random.default_rng(0).normal(size=(size, 4)).astype(np.float32)
    mirror.apply(
        [Record(f"r{i}", "", {"_kb_doc": f"r{i}", "k": i % 100}, v) for i, v in enumerate(vectors)],
        [],
        1,
    )
    return mirror, vectors


def counted_blocks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows of each block of vectors the mirror gathers to keep, from now on."""
    gathered: list[int] = []

    class Counted(mirror_module._Block):
        def __init__(self, mask: np.ndarray, rows: np.ndarray, *rest: Any) -> None:
            gathered.append(len(rows))
            super().__init__(mask, rows, *rest)

    monkeypatch.setattr(mirror_module, "_Block", Counted)
    return gathered


def test_vectors_gathered_for_a_filter_are_reused_past_the_kept_masks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A filter's mask pushed out of the kept masks is made afresh for its next search: its
    gathered vectors still serve that search, whose mask is equal."""
    mirror, vectors = hundred_keys()
    gathered = counted_blocks(monkeypatch)
    masks = []
    for _ in range(4):
        masks.append(mirror.selection({"k": 99}))
        for k in range(mirror_module.KEPT_MASKS):  # push it out of the kept masks
            mirror.selection({"k": k})
    assert masks[0][0] is not masks[1][0]
    found = [mirror.nearest_rows(vectors[0], 3, mask, key)[0].tolist() for mask, key in masks]
    assert gathered == [20]
    assert found == [found[0]] * 4


def test_a_filter_asked_all_along_stays_kept_among_a_stream_of_filters_asked_once() -> None:
    """The first KEPT_MASKS filters' masks were kept until the next write and no later one:
    a text filter asked after a stream of one-off author filters was decided afresh for
    every search (32 instead of 125 queries/s at 100k documents, 16 clients)."""
    mirror, _ = hundred_keys()
    hot = {"k": {"$in": [1, 2]}}
    first = mirror.selection(hot)[0]
    for k in range(10 * mirror_module.KEPT_MASKS):  # one-off filters, the hot one among them
        mirror.selection({"k": {"$in": [k % 100, 100 + k]}})
        if k % 8 == 0:
            assert mirror.selection(hot)[0] is first  # kept: not decided again
    assert len(mirror._masks) == mirror_module.KEPT_MASKS
    for k in range(mirror_module.KEPT_MASKS):  # not asked meanwhile: the first out
        mirror.selection({"k": {"$in": [k, 1000 + k]}})
    again = mirror.selection(hot)[0]
    assert again is not first
    assert np.array_equal(again, first)


def test_a_filter_asked_again_after_many_asked_once_gets_its_vectors_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The mirror remembered the first ASKED_KEYS filters asked since the last write: past
    them, no filter counted as asked again, and none had its vectors kept."""
    monkeypatch.setattr(mirror_module, "ASKED_KEYS", 8)
    mirror, vectors = hundred_keys()  # its write makes the asked filters' Lru: 8 at most
    gathered = counted_blocks(monkeypatch)
    for k in range(20):  # filters asked once, more than ASKED_KEYS
        mask, key = mirror.selection({"k": k})
        mirror.nearest_rows(vectors[0], 3, mask, key)
    assert gathered == []
    mask, key = mirror.selection({"k": 99})
    for _ in range(3):
        mirror.nearest_rows(vectors[0], 3, mask, key)
    assert gathered == [20]  # at the second search, kept for the third
    assert len(mirror._asked) == 8


def test_a_keyword_search_during_a_write_finds_only_rows_it_can_read() -> None:
    """BM25 published a write's rows before the mirror had their ids and metadata: a keyword
    search in between (on a Chroma server, searches use the mirror while it applies a write)
    read a row past them, IndexError, a 500 (review helper 61). Here the search runs at each
    step of the write, as another thread's could."""
    vectors = np.eye(4, dtype=np.float32)
    meta = {"_kb_doc": "d0"}
    mirror = Mirror(4, generation=0)
    mirror.apply([Record("r0", "zebra one", meta, vectors[0])], [], 1)
    seen: list[list[str]] = []

    def search() -> None:
        rows, _ = mirror.keyword(["zebra"], 10)
        seen.append([mirror.record(row).id + "/" + mirror.doc_id(row) for row in rows.tolist()])

    for name in ("_append", "_reserve"):
        step = getattr(mirror, name)

        def searched_first(*args: Any, _step: Any = step) -> Any:
            search()
            return _step(*args)

        setattr(mirror, name, searched_first)
    add_many = mirror.bm25.add_many

    def searched_after(*args: Any) -> None:
        add_many(*args)
        search()

    mirror.bm25.add_many = searched_after  # type: ignore[method-assign]
    more = [Record(f"r{i}", f"zebra {i}", {"_kb_doc": f"d{i}"}, vectors[i]) for i in (1, 2)]
    mirror.apply(more, [], 2)
    assert seen[:2] == [["r0/d0"], ["r0/d0"]]
    assert sorted(seen[2]) == ["r0/d0", "r1/d1", "r2/d2"]
    search()
    assert sorted(seen[-1]) == ["r0/d0", "r1/d1", "r2/d2"]


def test_a_search_keeps_its_filters_mask_while_a_write_holds_the_mirror() -> None:
    """Keeping a mask (and evicting the least recently used) takes a lock of its own: the
    mirror's is held by a write for as long as it takes (a large add, its index update)."""
    mirror, _ = hundred_keys()
    with ThreadPoolExecutor(1) as pool, mirror._lock:  # as a write holds it
        mask = pool.submit(mirror.selection, {"k": 1}).result(timeout=5)[0]
    assert mirror.selection({"k": 1})[0] is mask  # kept


def test_one_search_gathers_a_filters_block_while_others_score_without_copying_it(
    monkeypatch,
) -> None:
    """Sixteen clients asking a new filter again at once each gathered its rows to keep
    them: sixteen copies of the same block at a time (37 MB each at 100k for a quarter of
    the rows), and the service's memory went past its target."""
    vectors = np.random.default_rng(3).normal(size=(400, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    mirror = Mirror(8, 0)
    mirror.apply(
        [Record(f"r{i}", "", {"_kb_doc": f"r{i}", "n": i % 4}, v) for i, v in enumerate(vectors)],
        [],
        1,
    )
    mask, key = mirror.selection({"n": 1})
    query = vectors[5]
    first = mirror.nearest(query, 3, mask, key)  # asked once: nothing kept
    held, release, made = threading.Event(), threading.Event(), []
    block = mirror_module._Block

    def slow_block(*args: Any) -> Any:
        made.append(1)
        held.set()
        assert release.wait(10)
        return block(*args)

    monkeypatch.setattr(mirror_module, "_Block", slow_block)
    with ThreadPoolExecutor(1) as pool:
        gathering = pool.submit(mirror.nearest, query, 3, mask, key)  # asked again: kept
        assert held.wait(10)
        assert [mirror.nearest(query, 3, mask, key) for _ in range(3)] == [first] * 3
        assert made == [1]  # the others scored without gathering a block of their own
        release.set()
        assert gathering.result(timeout=10) == first
    assert key in mirror._blocks
    assert mirror.nearest(query, 3, mask, key) == first
    assert made == [1]


def quarters(rows: int, dim: int = 4) -> tuple[Mirror, np.ndarray]:
    """A mirror without an index over `rows` random unit vectors, "k" = row % 4."""
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    mirror = Mirror(dim=dim, generation=0)
    mirror.apply(
        [Record(f"r{i}", "", {"_kb_doc": f"r{i}", "k": i % 4}, v) for i, v in enumerate(vectors)],
        [],
        1,
    )
    return mirror, vectors


def test_a_search_without_a_block_gathers_its_filters_rows_a_slice_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each search held a copy of all its filter's vectors while it waited for the product's
    lock: sixteen searches of a quarter of 100k rows held 16 copies of 37 MB."""
    mirror, vectors = quarters(20_000)
    mask, _ = mirror.selection({"k": 0})  # 5,000 rows: gathered (a full pass is for a third)
    gathered: list[int] = []
    product = mirror._product
    monkeypatch.setattr(mirror, "_product", lambda m, v: gathered.append(len(m)) or product(m, v))
    query = vectors[8]
    rows, _ = mirror.nearest_rows(query, 5, mask)
    assert max(gathered) <= mirror_module.GATHER_ROWS < sum(gathered) == 5_000
    scores = np.where(mask, vectors @ query, -np.inf)
    assert rows.tolist() == np.argsort(-scores, kind="stable")[:5].tolist()


def test_a_block_pushed_out_while_a_search_reads_it_still_serves_that_search() -> None:
    """Searches touch a kept block without the lock; another search's gather may push it out
    in between, and the touch raised KeyError into the search."""
    mirror, vectors = quarters(400)
    mask, key = mirror.selection({"k": 1})
    first = mirror.nearest_rows(vectors[5], 5, mask, key)  # asked once
    assert mirror.nearest_rows(vectors[5], 5, mask, key)[0].tolist() == first[0].tolist()
    assert key in mirror._blocks  # asked again: kept

    class PushedOut(OrderedDict):
        def move_to_end(self, key: str, last: bool = True) -> None:
            del self[key]  # as a gather's eviction does between the lookup and the touch
            super().move_to_end(key, last)

    mirror._blocks = PushedOut(mirror._blocks)
    assert mirror.nearest_rows(vectors[5], 5, mask, key)[0].tolist() == first[0].tolist()


def test_a_filters_key_is_a_short_digest_of_its_canonical_form() -> None:
    """The mirror keeps up to ASKED_KEYS filters' keys per write: as the filters' own text,
    300 filters of a thousand long `$in` values held 289 MiB."""
    huge = {"author": {"$in": [f"{i:0>1000}" for i in range(1000)]}}
    assert len(filter_key(huge)) == 32
    assert filter_key({"a": 1, "b": [1, 2]}) == filter_key({"b": [1, 2], "a": 1})
    assert len({filter_key({"a": 1}), filter_key({"a": "1"}), filter_key({"a": [1]})}) == 3
