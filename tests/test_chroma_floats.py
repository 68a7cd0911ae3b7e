"""Decimals as Chroma holds them: kb's copies and filters agree with Chroma's parse, whichever
process wrote a record and whatever path reads it."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path

import chromadb
import numpy as np
import pytest

from kb.chroma_floats import chroma_float, stable_float
from kb.config import Settings
from kb.embeddings import Embedder
from kb.filters import compile_filter
from kb.records import Record, as_held
from kb.replica import GENERATION_KEY
from kb.schemas import DocumentIn, QueryRequest, UpdateFields
from kb.search import search
from kb.store import KnowledgeStore, WriteMode

MOVED = 123456789.12345679  # Chroma holds it as 123456789.1234568
HELD = 123456789.1234568


def sample() -> list[float]:
    rng = random.Random(5)
    return [
        *(rng.random() for _ in range(400)),
        *(rng.randrange(1, 10**6) / 7 for _ in range(400)),
        *(rng.uniform(-180, 180) for _ in range(400)),
        *(float(rng.randrange(10**15, 10**17)) for _ in range(200)),
        *(rng.random() * 10.0 ** rng.randint(-300, 300) for _ in range(400)),
        *(float(2**53 + i) for i in range(-3, 4)),
        5e-324, 1e-310, 2.2250738585072014e-308, 1.7976931348623157e308, MOVED, -MOVED,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def chroma() -> Iterator[tuple[list[float], dict[int, float], object]]:
    """The sample written to an in-memory Chroma collection, and what Chroma reads back."""
    values = sample()
    collection = chromadb.EphemeralClient().get_or_create_collection("chroma_floats")
    collection.add(
        ids=[str(i) for i in range(len(values))],
        embeddings=np.ones((len(values), 2)).tolist(),
        metadatas=[{"n": v} for v in values],
    )
    got = collection.get(include=["metadatas"])
    back = {int(i): m["n"] for i, m in zip(got["ids"], got["metadatas"], strict=True)}
    yield values, back, collection
    chromadb.EphemeralClient().delete_collection("chroma_floats")


def test_chroma_float_is_what_chroma_reads_back(chroma) -> None:
    values, back, _ = chroma
    assert sum(back[i] != v for i, v in enumerate(values)) > 200  # the parse moves many
    assert [i for i, v in enumerate(values) if chroma_float(v) != back[i]] == []
    assert chroma_float(MOVED) == HELD


def test_chroma_float_is_what_a_filter_of_chroma_finds(chroma) -> None:
    """A filter's decimal is parsed the same way: $eq finds a record iff the parsed filter
    value is the value held, by the number as given or as read back."""
    values, back, collection = chroma
    wrong = []
    for i in random.Random(9).sample(range(len(values)), 60):
        for value in (values[i], back[i]):
            found = str(i) in collection.get(where={"n": {"$eq": value}}, include=[])["ids"]
            if found != (chroma_float(value) == back[i]):
                wrong.append((i, value))
    assert wrong == []


def drifting() -> list[float]:
    """Decimals whose reading Chroma moves again at the next parse (small ones, about one
    in ten of those it moves), some below 1e-6, some beyond 1e22."""
    rng = random.Random(11)
    found: list[float] = []
    while len(found) < 150:
        value = rng.random() * 10.0 ** rng.choice([-12, -10, -9, -7, 25, 60, -60])
        if chroma_float(chroma_float(value)) != chroma_float(value):
            found.append(value)
    return found


def test_a_decimal_is_written_as_a_float_chroma_keeps() -> None:
    """Kept as it is when Chroma keeps it, Chroma's reading when that stays put (what it held
    before), else the nearest float that stays put: never more than a few units away."""
    for value in [*sample(), *drifting()]:
        written = stable_float(value)
        assert chroma_float(written) == written == stable_float(written)
        if chroma_float(value) == value:
            assert written is value
        elif chroma_float(chroma_float(value)) == chroma_float(value):
            assert written == chroma_float(value)
        else:
            assert abs(written - value) <= 8 * math.ulp(value), value


def test_decimals_written_as_kb_writes_them_do_not_move_in_chroma(chroma) -> None:
    """Written back as read (each PATCH writes a document's other keys back), a decimal
    Chroma moves again moved a unit at every write (review helper 75: 8.619691065212169e-10
    read back as ...168e-10, then ...167, ...166, ...165 after three PATCHes)."""
    values = drifting()
    collection = chroma[2]
    for _ in range(3):
        collection.upsert(
            ids=[f"d{i}" for i in range(len(values))],
            embeddings=np.ones((len(values), 2)).tolist(),
            metadatas=[{"n": stable_float(v)} for v in values],
        )
        got = collection.get(ids=[f"d{i}" for i in range(len(values))], include=["metadatas"])
        back = {i: m["n"] for i, m in zip(got["ids"], got["metadatas"], strict=True)}
        assert [v for i, v in enumerate(values) if back[f"d{i}"] != stable_float(v)] == []
        values = [back[f"d{i}"] for i in range(len(values))]  # written back as read


def test_a_zero_is_held_without_its_sign() -> None:
    assert math.copysign(1.0, chroma_float(-0.0)) == 1.0


def test_a_document_sent_again_as_get_returns_it_is_the_same_document(
    settings: Settings, embedder: Embedder
) -> None:
    """The content hash read the number as given, GET Chroma's reading: the document, sent
    again as exported, counted as changed ('skipped_changed', and rewritten with --upsert;
    review helper 70)."""
    store = KnowledgeStore.open(settings, embedder)
    try:
        given = {"n": MOVED, "l": [MOVED, 2.5], "z": -0.0}
        store.add([DocumentIn(id="m", text="A measured value.", metadata=given)])
        exported = store.get("m").metadata
        assert exported == {"n": HELD, "l": [HELD, 2.5], "z": 0.0}
        again = store.add([DocumentIn(id="m", text="A measured value.", metadata=exported)],
                          WriteMode.SKIP)  # fmt: skip
        assert (again.skipped, again.skipped_changed) == (1, 0)
        upserted = store.add([DocumentIn(id="m", text="A measured value.", metadata=given)],
                             WriteMode.UPSERT)  # fmt: skip
        assert (upserted.updated, upserted.skipped) == (0, 1)
        patched = store.update("m", UpdateFields(metadata={"s": "x"}))
        assert patched.metadata == {**exported, "s": "x"} == store.get("m").metadata
    finally:
        store.close()


def test_as_held_copies_only_records_whose_decimals_move() -> None:
    kept = Record("a", "t", {"n": 0.5, "s": "x", "i": 3, "l": [1.5, 2.5]})
    moved = Record("b", "t", {"n": MOVED, "l": [MOVED, 2.5], "s": "x"}, [0.1])
    held = as_held([kept, moved])
    assert held[0] is kept
    assert held[1].metadata == {"n": HELD, "l": [HELD, 2.5], "s": "x"}
    assert held[1].embedding == [0.1]
    assert moved.metadata["n"] == MOVED  # the record written is left as it was


def hits(store: KnowledgeStore, where: dict, mode: str) -> list[str]:
    request = QueryRequest.model_validate(
        {"query": "a measured value", "mode": mode, "min_score": -1, "where": where}
    )
    return sorted(match.id for match in search(store, request)[0].matches)


def listed(store: KnowledgeStore, where: dict) -> list[str]:
    return sorted(doc.id for doc in store.iter_documents(compile_filter(where=where)))


FILTERS = [
    ({"n": MOVED}, ["moved"]),
    ({"n": HELD}, ["moved"]),  # as read back: the parse keeps it
    ({"n": {"$in": [MOVED, 7.0]}}, ["moved"]),
    ({"n": {"$lte": MOVED}}, ["moved", "plain"]),
    ({"n": {"$gt": MOVED}}, []),
    ({"n": {"$ne": MOVED}}, ["plain"]),
    ({"n": {"$nin": [MOVED]}}, ["plain"]),
    ({"l": {"$contains": MOVED}}, ["moved"]),
]


def check(store: KnowledgeStore) -> None:
    """Every search mode and the listing select what Chroma's own filter selects."""
    for where, expected in FILTERS:
        assert listed(store, where) == expected, where
        for mode in ("dense", "keyword", "hybrid"):
            assert hits(store, where, mode) == expected, (where, mode)


def add(store: KnowledgeStore) -> None:
    store.add(
        [
            DocumentIn(id="moved", text="A measured value of the survey.",
                       metadata={"n": MOVED, "l": [MOVED, 2.5], "s": "a"}),
            DocumentIn(id="plain", text="Another measured value.", metadata={"n": 2.5}),
        ]
    )  # fmt: skip


def test_a_filter_on_a_moved_decimal_finds_the_same_documents_everywhere(
    settings: Settings, embedder: Embedder
) -> None:
    """The copies held the number as given and Chroma its parse: after a PATCH (which wrote
    back Chroma's reading of the other keys), searches missed what listings and deletes by
    the same filter found."""
    store = KnowledgeStore.open(settings, embedder)
    try:
        add(store)
        check(store)
        store.update("moved", UpdateFields(metadata={"s": "b"}))  # another key only
        check(store)
        (shown,) = search(store, QueryRequest(query="survey", where={"s": "b"}, min_score=-1))[
            0
        ].matches
        assert shown.metadata["n"] == store.get("moved").metadata["n"] == HELD
    finally:
        store.close()
    again = KnowledgeStore.open(settings, embedder)  # the copies loaded from their file
    try:
        again.replica.wait_loaded()
        check(again)
    finally:
        again.close()


DRIFT = 8.619691065212169e-10  # Chroma reads it as ...168e-10, which it reads as ...167e-10
DRIFT_SHOWN = 8.61969106521217e-10  # what kb writes: the nearest float Chroma keeps
WHOLE = 945250317053727.9  # Chroma reads it as 945250317053728.0: a whole float
MORE = [
    ({"t": DRIFT}, ["tiny"]),
    ({"t": DRIFT_SHOWN}, ["tiny"]),  # as GET shows it
    ({"t": {"$gte": DRIFT, "$lte": DRIFT_SHOWN}}, ["tiny"]),
    ({"w": WHOLE}, ["whole"]),  # was judged a fraction: its neighbours were kept out, itself too
    ({"w": {"$in": [WHOLE, 1.5]}}, ["whole"]),
    ({"w": {"$lte": WHOLE}}, ["whole"]),
    ({"w": {"$gt": WHOLE}}, []),
    ({"w": 945250317053728}, ["whole"]),
]


def add_more(store: KnowledgeStore) -> None:
    store.add(
        [
            DocumentIn(id="tiny", text="A measured value, tiny.", metadata={"t": DRIFT, "k": 0}),
            DocumentIn(id="whole", text="A measured value, whole.", metadata={"w": WHOLE}),
        ]
    )


def check_more(store: KnowledgeStore) -> None:
    for where, expected in MORE:
        assert listed(store, where) == expected, where
        for mode in ("dense", "keyword", "hybrid"):
            assert hits(store, where, mode) == expected, (where, mode)


def test_a_decimal_chroma_moves_again_stays_put_and_is_found_by_either_spelling(
    settings: Settings, embedder: Embedder
) -> None:
    """Review helper 75: a filter on the number as GET showed it missed on every path, a
    PATCH of another key moved it a unit at each write, and the document sent again as GET
    returned it counted as changed; a filter on 945250317053727.9 found nothing."""
    store = KnowledgeStore.open(settings, embedder)
    try:
        add_more(store)
        assert store.get("tiny").metadata["t"] == DRIFT_SHOWN
        assert store.get("whole").metadata["w"] == 945250317053728.0
        check_more(store)
        for k in (1, 2, 3):
            store.update("tiny", UpdateFields(metadata={"k": k}))  # another key only
            assert store.get("tiny").metadata == {"t": DRIFT_SHOWN, "k": k}
        check_more(store)
        shown = store.get("tiny")
        again = store.add([DocumentIn(id="tiny", text=shown.text, metadata=shown.metadata)],
                          WriteMode.SKIP)  # fmt: skip
        assert (again.skipped, again.skipped_changed) == (1, 0)
    finally:
        store.close()


@pytest.mark.parametrize("mode", ["embedded", "server"])
def test_a_decimal_stored_by_an_earlier_kb_is_found_by_the_number_as_given(
    request: pytest.FixtureRequest, embedder: Embedder, mode: str, tmp_path: Path
) -> None:
    """Before 4c9c52e kb sent the number as given, and Chroma stored its reading of it
    (8.619691065212168e-10, which it reads as ...167e-10; a server, which parses a value
    twice, its second reading); filters sending only the float kb writes now missed such a
    document, on every path (review helpers 76 and 78)."""
    settings = (
        Settings(chroma_path=tmp_path / "db", collection="kb_test")
        if mode == "embedded"
        else request.getfixturevalue("server_settings")
    )
    store = KnowledgeStore.open(settings, embedder)
    try:
        store.add([DocumentIn(id="old", text="A measured value, tiny.", metadata={"t": 1.0})])
        (record,) = store.records.get(["old"], embeddings=True)
        store.records._col.upsert(  # as kb wrote it then: the number as given
            ids=["old"], embeddings=[record.embedding], metadatas=[{**record.metadata, "t": DRIFT}]
        )
        generation = int(store.records.settings_value(GENERATION_KEY) or 0)
        store.records.set_settings_value(GENERATION_KEY, generation + 1)  # copies: read again
        store.close()
        store = KnowledgeStore.open(settings, embedder)  # the copies read it from Chroma
        store.replica.wait_loaded()
        held = chroma_float(DRIFT) if mode == "embedded" else chroma_float(chroma_float(DRIFT))
        assert store.get("old").metadata["t"] == held != stable_float(DRIFT)
        for where, expected in [
            ({"t": DRIFT}, ["old"]),
            ({"t": {"$in": [DRIFT, 0.5]}}, ["old"]),
            ({"t": {"$ne": DRIFT}}, []),
            ({"t": {"$nin": [DRIFT]}}, []),
        ]:
            assert listed(store, where) == expected, where
            for mode in ("dense", "keyword", "hybrid"):
                assert hits(store, where, mode) == expected, (where, mode)
    finally:
        store.close()


def test_another_process_on_a_server_filters_a_moved_decimal_alike(
    server_settings: Settings, embedder: Embedder
) -> None:
    """A process whose copies were read from Chroma held its reading; one that wrote, the
    number as given: the same filter found the document on one and not the other."""
    first = KnowledgeStore.open(server_settings, embedder)
    second = KnowledgeStore.open(server_settings, embedder)
    try:
        first.replica.wait_loaded()
        second.replica.wait_loaded()
        add(first)
        check(first)
        check(second)
        add_more(first)
        # a server parses a value twice (the request, then the stored JSON): its decimals
        # were not what the writer's copies held, nor what the other process's read
        check_more(first)
        check_more(second)
        assert second.get("tiny").metadata["t"] == DRIFT_SHOWN
    finally:
        first.close()
        second.close()
