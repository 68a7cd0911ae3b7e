"""KnowledgeStore: persistence, the model guard, all-or-nothing writes, chunked documents."""

from __future__ import annotations

import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kb.search
from kb.app import close_app, create_app
from kb.chunking import Chunk, Tokens
from kb.collection import FINGERPRINT_KEY
from kb.config import Settings, cpu_count
from kb.encoders.onnx_backend import OnnxEmbedder
from kb.errors import ConfigError, Conflict, ModelMismatch, StoreTimeout, StoreUnavailable
from kb.filters import CompiledFilter
from kb.records import DOC, HASH, HEADS, build_records, chunk_id
from kb.schemas import DocumentIn, QueryRequest, UpdateFields
from kb.search import CALIBRATED_KEY, search
from kb.store import KnowledgeStore, WriteMode
from tests.conftest import BUSY, FailingFirst, changed


class OtherModel:
    """A stand-in for a different embedding model: another dimension and fingerprint."""

    name, dim, fingerprint, max_tokens = "other-model", 8, "0123456789abcdef", 128
    backend, former_fingerprints = "fake", ()

    def embed_documents(self, texts):
        return np.ones((len(texts), self.dim), dtype=np.float32) / np.sqrt(self.dim)

    embed_queries = embed_documents

    def tokens(self, text):
        return Tokens([(0, len(text))], [True])


def test_data_survives_a_restart(settings: Settings, embedder) -> None:
    first = create_app(settings, embedder=embedder)
    first.test_client().post(
        "/add", json={"id": "keep", "text": "Persistent words", "metadata": {"date": "2024-04-04"}}
    )
    close_app(first)

    second = create_app(settings, embedder=embedder)
    try:
        client = second.test_client()
        assert client.get("/documents/keep").json["metadata"] == {"date": "2024-04-04"}
        result = client.post(
            "/query", json={"query": "words that persist", "where": {"date": {"$gt": "2024-01-01"}}}
        ).json
        assert [m["id"] for m in result["matches"]] == ["keep"]
    finally:
        close_app(second)


@pytest.mark.skipif(cpu_count() < 2, reason="one core: no session for lone texts at all")
def test_a_store_that_will_not_search_opens_no_session_for_lone_queries(
    settings: Settings,
) -> None:
    """kb load, export, backup and duplicates opened one (about 0.12 s and 96 MiB) and never
    asked a lone query."""
    writer = KnowledgeStore.open(settings, searching=False)
    try:
        assert writer.embedder.has_query_session is False  # type: ignore[attr-defined]
        writer.add([DocumentIn(id="one", text="a lone text still embeds")], WriteMode.ERROR)
    finally:
        writer.close()
    reader = KnowledgeStore.open(settings)
    try:
        assert reader.embedder.has_query_session is True  # type: ignore[attr-defined]
        assert reader.get("one").text == "a lone text still embeds"
    finally:
        reader.close()


def test_a_store_that_will_not_search_opens_its_encoder_only_when_it_embeds(
    settings: Settings,
) -> None:
    """kb export, backup and duplicates read what is stored and never embed: their store
    opened the batch session all the same (0.1-0.25 s and its memory, each command). It
    opens now at the first text, and the vectors are those an opened one gives."""
    first = KnowledgeStore.open(settings)
    try:
        first.add([DocumentIn(id="one", text="stored before the export")], WriteMode.ERROR)
        want = first.records.get([chunk_id("one", 0)], embeddings=True)[0].embedding
    finally:
        first.close()
    reading = KnowledgeStore.open(settings, searching=False)
    try:
        encoder = reading.embedder
        assert isinstance(encoder, OnnxEmbedder)
        assert [doc.id for doc in reading.iter_documents(CompiledFilter())] == ["one"]
        assert reading.count() == 1
        assert reading.stats().documents == 1
        assert encoder._session is None
        assert not encoder.has_query_session
        reading.add([DocumentIn(id="two", text="stored before the export")], WriteMode.ERROR)
        assert encoder._session is not None
        assert not encoder.has_query_session
        got = reading.records.get([chunk_id("two", 0)], embeddings=True)[0].embedding
        assert float(np.abs(np.asarray(got) - np.asarray(want)).max()) < 1e-6
    finally:
        reading.close()


def test_opening_a_store_with_another_model_is_refused(settings: Settings, embedder) -> None:
    store = KnowledgeStore.open(settings, embedder)
    store.add([DocumentIn(id="kept", text="Glaciers carve valleys.")])
    store.close()
    with pytest.raises(ModelMismatch, match="all-MiniLM-L6-v2") as caught:
        KnowledgeStore.open(settings, OtherModel())
    assert "other-model" in caught.value.message
    assert caught.value.status == 409


def test_an_empty_store_takes_the_model_it_is_opened_with(settings: Settings, embedder) -> None:
    """A command refused after opening a new store (a restore of a backup of another model)
    left it recording that model, and the right one was refused for good: "Mixing vector
    spaces would return wrong matches" of a collection holding nothing (review helper 83)."""
    other = KnowledgeStore.open(settings, OtherModel())
    other.records.set_settings_value(CALIBRATED_KEY, 0.9)  # that model's threshold
    other.close()
    store = KnowledgeStore.open(settings, embedder)
    try:
        assert store.records.settings_value(CALIBRATED_KEY) is None  # went with it
        store.add([DocumentIn(id="kept", text="Glaciers carve valleys.")])
    finally:
        store.close()
    with pytest.raises(ModelMismatch, match="other-model"):
        KnowledgeStore.open(settings, OtherModel())  # not once it holds records


def test_an_emptied_collection_keeps_refusing_a_model_of_another_dimension(
    settings: Settings, embedder
) -> None:
    """Chroma keeps the dimension of the vectors a collection once held: taken over by an
    8-d model, every add was then refused for good (review helper 86)."""
    store = KnowledgeStore.open(settings, embedder)
    store.add([DocumentIn(id="gone", text="Glaciers carve valleys.")])
    store.delete(["gone"])
    store.close()
    with pytest.raises(ModelMismatch, match="It holds no records: delete it"):
        KnowledgeStore.open(settings, OtherModel())


def test_an_empty_server_collection_of_another_model_is_refused_saying_it_is_empty(
    server_settings: Settings, embedder
) -> None:
    """On a server another process of the recorded model may be writing: refused still."""
    KnowledgeStore.open(server_settings, OtherModel(), searching=False).close()
    with pytest.raises(ModelMismatch, match="It holds no records: delete it"):
        KnowledgeStore.open(server_settings, embedder, searching=False)


def test_a_store_recorded_with_an_earlier_kbs_fingerprint_of_the_model_is_re_recorded(
    settings: Settings, embedder
) -> None:
    store = KnowledgeStore.open(settings, embedder)
    store.add([DocumentIn(id="kept", text="Glaciers carve valleys.")])
    # what kb recorded before the fingerprint covered every file of the model
    store.records.set_settings_value(FINGERPRINT_KEY, embedder.former_fingerprints[0])
    store.close()
    store = KnowledgeStore.open(settings, embedder)
    try:
        assert store.records.settings_value(FINGERPRINT_KEY) == embedder.fingerprint
        assert store.get("kept").text == "Glaciers carve valleys."
        store.records.set_settings_value(FINGERPRINT_KEY, "0" * 16)  # same dimension, unknown
    finally:
        store.close()
    with pytest.raises(ModelMismatch, match="0000000000000000"):
        KnowledgeStore.open(settings, embedder)


def test_another_collection_on_the_same_path_may_use_another_model(
    settings: Settings, embedder
) -> None:
    KnowledgeStore.open(settings, embedder).close()
    other = KnowledgeStore.open(settings.model_copy(update={"collection": "other"}), OtherModel())
    other.add([DocumentIn(text="fine")])
    assert other.count() == 1
    other.close()


def test_collection_names_follow_chromas_rules() -> None:
    with pytest.raises(ValueError, match="3-505"):
        Settings(collection="kb")


@pytest.mark.parametrize("mode", ["embedded", "server"])
def test_a_store_opened_to_read_needs_its_collection(
    tmp_path: Path, embedder, mode: str, request: pytest.FixtureRequest
) -> None:
    """Reading commands (export, backup, duplicates) on a mistyped KB_COLLECTION created it
    and read an empty knowledge base (rc 0): opening with `existing` names the collections
    there and creates none; on a Chroma server too."""
    if mode == "server":
        settings = request.getfixturevalue("server_settings")
    else:
        settings = Settings(chroma_path=tmp_path / "db", collection="kb_test")
    store = KnowledgeStore.open(settings, embedder, searching=False)
    store.add([DocumentIn(id="a", text="Something stored.")])
    store.close()  # an embedded store takes one opener at a time
    typo = changed(settings, collection=f"{settings.collection}-typo")
    with pytest.raises(ConfigError) as raised:
        KnowledgeStore.open(typo, embedder, searching=False, existing=True)
    message = raised.value.message
    assert message.startswith(f"no collection '{typo.collection}' (KB_COLLECTION) in ")
    if mode == "embedded":  # the session's server holds other tests' collections too
        assert message.endswith("; its collections: 'kb_test'")
    store = KnowledgeStore.open(settings, embedder, searching=False, existing=True)
    try:
        assert store.get("a").text == "Something stored."
        names = [c.name for c in store.records._client.list_collections()]
        assert typo.collection not in names
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_a_wrong_model_path_is_a_clear_error(tmp_path: Path, backend: str) -> None:
    from kb.embeddings import load_embedder

    settings = Settings(model=str(tmp_path / "missing-model"), backend=backend)
    with pytest.raises(ConfigError, match="neither"):
        load_embedder(settings)


def test_a_failed_batch_rolls_back_new_and_restores_replaced(
    store: KnowledgeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.add([DocumentIn(id="old", text="Original text", metadata={"v": 1})])
    store.records.max_batch = 2
    real = store.records._write
    calls = {"n": 0}

    def flaky(records, add=False):
        calls["n"] += 1
        if calls["n"] == 2:
            raise StoreUnavailable("disk full")
        real(records, add)

    monkeypatch.setattr(store.records, "_write", flaky)
    docs = [DocumentIn(id="old", text="Replaced text", metadata={"v": 2})]
    docs += [DocumentIn(id=f"new{i}", text=f"New document {i}") for i in range(3)]
    with pytest.raises(StoreUnavailable):
        store.add(docs, WriteMode.UPSERT)
    monkeypatch.setattr(store.records, "_write", real)
    assert store.count() == 1
    assert store.get("old").text == "Original text"
    assert store.get("old").metadata == {"v": 1}
    hits = store.records.nearest(store.embedder.embed_queries(["Original text"]), 1)
    assert hits[0][0][1] == pytest.approx(1.0, abs=1e-5)  # the old vector is back too


@pytest.mark.parametrize("loaded", [True, False], ids=["mirror", "chroma"])
def test_a_delete_failing_part_way_deletes_or_keeps_each_document_whole(
    store: KnowledgeStore, monkeypatch: pytest.MonkeyPatch, loaded: bool
) -> None:
    """Chroma takes max_batch ids a call. The calls cut documents (first chunks last): a
    store error between two calls left a first chunk with some of its chunks, served by GET
    and search with the middle gone, and a metadata update then made that permanent."""
    texts = {name: long_text(name) for name in ("alpha", "beta")}
    store.add([DocumentIn(id=name, text=text) for name, text in texts.items()])
    store.add([DocumentIn(id="short", text="A short note about otters.")])
    chunks = store.get("alpha").chunks
    assert chunks == store.get("beta").chunks > 2
    if loaded:
        store.replica.wait_loaded()
    store.records.max_batch = chunks + 1  # one document a call
    real, calls = store.records._col.delete, []

    def flaky(**kwargs: object) -> None:
        calls.append(kwargs)
        if len(calls) == 2:
            raise RuntimeError("transient store error")
        real(**kwargs)

    monkeypatch.setattr(store.records._col, "delete", flaky)
    with pytest.raises(StoreUnavailable) as raised:
        store.delete(["alpha", "beta"])
    monkeypatch.setattr(store.records._col, "delete", real)
    kept = "beta" if store.get_many(["beta"]) else "alpha"
    assert store.get_many(["alpha", "beta"]).keys() == {kept}
    assert store.get(kept).text == texts[kept]
    assert "the delete stopped part-way: 1 of 2 documents were deleted" in raised.value.message
    assert store.count() == 2
    assert len(store.records.ids()) == chunks + 1  # no chunk of the deleted one is left
    ask = QueryRequest(query=texts[kept][:200], mode="hybrid", min_score=-1, top_k=5)
    assert {m.id for m in search(store, ask)[0].matches} == {kept, "short"}
    store.delete([kept])  # the rest, deleted again
    assert store.count() == 1


def test_two_hosts_adding_one_id_at_once_end_with_the_last_write(
    server_settings: Settings, tmp_path: Path, embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two hosts share no write lock: host B checked that X was new, host A wrote X, then
    B wrote it with Chroma's add, which ignores an existing id: B answered 'added' and its
    text was never stored (its own copies kept it, so B's keyword search found it)."""
    host_a = KnowledgeStore.open(changed(server_settings, lock_dir=tmp_path / "a"), embedder)
    host_b = KnowledgeStore.open(changed(server_settings, lock_dir=tmp_path / "b"), embedder)
    try:
        write = host_b.records._write

        def after_host_a(records, add=False):
            host_a.add([DocumentIn(id="X", text="Version from host A: apples.")])
            monkeypatch.setattr(host_b.records, "_write", write)
            write(records, add)

        monkeypatch.setattr(host_b.records, "_write", after_host_a)
        host_b.add([DocumentIn(id="X", text="Version from host B: bananas.")])
        for host in (host_a, host_b):
            assert host.get("X").text == "Version from host B: bananas."
            host.replica.catch_up()
            found = search(host, QueryRequest(query="apples", mode="keyword", min_score=-1))
            assert found[0].matches == []
    finally:
        host_a.close()
        host_b.close()


def test_a_write_larger_than_a_chroma_servers_request_limit_is_cut_into_calls_under_it(
    server_settings: Settings, embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Chroma server refuses a request of about 40 MB ("Payload too large"), and every
    chunk carries its document's metadata: a load of long documents with a large metadata
    field sent one call of up to max_batch such chunks and stopped, nothing written. A write
    to a server is cut by size too (here 500 records of 90 KB, 45 MB, in three calls)."""
    store = KnowledgeStore.open(server_settings, embedder)
    try:
        vectors = np.random.default_rng(0).standard_normal((500, 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        records = []
        for n, vector in enumerate(vectors):
            text = f"Report {n}."
            summary = {"summary": f"{n} " + "x" * 90_000}
            (record,) = build_records(f"r{n}", text, summary, [Chunk(0, text)])
            record.embedding = vector
            records.append(record)
        calls: list[int] = []
        write = store.records._write

        def counted(part, add=False):
            calls.append(len(part))
            write(part, add)

        monkeypatch.setattr(store.records, "_write", counted)
        store.restore_records(records)
        assert sum(calls) == 500
        assert len(calls) == 3
        assert store.count() == 500
        assert store.get("r499").metadata["summary"] == "499 " + "x" * 90_000
    finally:
        store.close()


def test_a_read_torn_by_an_update_is_read_again_whole(
    store: KnowledgeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads take no lock: an update landing between the read of a document's first chunk
    and of the rest joined the old first chunk (and metadata) to the new chunks, a text
    never stored; listing and export the same."""
    old, new = long_text("Zebras gallop."), long_text("Horses canter.").replace("descent", "ascent")
    store.add([DocumentIn(id="L", text=old, metadata={"v": 1})])
    read_rest = store._chunks

    def update_first(heads, embeddings=False):
        monkeypatch.setattr(store, "_chunks", read_rest)
        store.update("L", UpdateFields(text=new, metadata={"v": 2}))
        return read_rest(heads, embeddings)

    for read in (
        lambda: store.get("L"),
        lambda: store.list_documents(CompiledFilter(), limit=10, offset=0).documents[0],
        lambda: next(store.iter_documents(CompiledFilter())),
    ):
        store.update("L", UpdateFields(text=old, metadata={"v": 1}))
        monkeypatch.setattr(store, "_chunks", update_first)
        document = read()
        assert (document.text, document.metadata) == (new, {"v": 2})


def test_a_document_missing_chunks_for_good_is_reported_once(
    store: KnowledgeStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A torn read is read again under the write lock; a document torn for good (chunks
    lost, as an old partial delete left them) was re-read on every read, silently."""
    store.add([DocumentIn(id="L", text=long_text("Zebras gallop."))])
    store.records.delete(["L#chunk1"])
    with caplog.at_level("WARNING", logger="kb.store"):
        for _ in range(2):
            with pytest.raises(Conflict, match="is damaged"):
                store.get("L")
    warned = [r for r in caplog.records if "are damaged" in r.getMessage()]
    assert len(warned) == 1
    assert "'L'" in warned[0].getMessage()


def test_a_match_updated_during_the_search_is_never_shown_torn(
    store: KnowledgeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunked match's whole text is fetched after the ranking, by the chunk count the
    ranking saw: an update lengthening the document in between showed the new text cut at
    the old count (neither version). The document read whole is of another version than
    the one ranked: the search ranks again and shows the new version whole (it was left
    out: review helper 90; test_search has the other cases)."""
    short, longer = long_text("Zebras gallop."), long_text("Zebras gallop.") * 3
    store.add([DocumentIn(id="L", text=short)])
    assert store.get("L").chunks < 2 * 3
    fetch = store.documents_of

    def update_first(records):
        monkeypatch.setattr(store, "documents_of", fetch)
        store.update("L", UpdateFields(text=longer))
        return fetch(records)

    monkeypatch.setattr(store, "documents_of", update_first)
    ask = QueryRequest(query="zebras gallop", mode="dense", min_score=-1, top_k=1)
    (match,) = search(store, ask)[0].matches
    assert match.text == longer
    assert store.get("L").text == longer


def test_a_damaged_document_is_left_out_without_ranking_again(
    store: KnowledgeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A damaged document whose best chunk is of another version than its first chunk (as a
    killed write leaves it) looked rewritten since the ranking, so every search reaching it
    through that chunk ranked three times, each with a read under the write lock (review
    helper 98). It is left out, and the search ranks once."""
    store.add([DocumentIn(id="X", text=long_text("Gradient boosting fits shallow trees."))])
    assert store.get("X").chunks > 1
    got = store.records._col.get(ids=[chunk_id("X", 1)], include=["metadatas", "embeddings"])
    meta = {**got["metadatas"][0], HASH: "0" * 32}  # another version's chunk, its count kept
    store.records._col.update(
        ids=[chunk_id("X", 1)],
        documents=["Zebras migrate across the Serengeti plains after the rains."],
        metadatas=[meta],
        embeddings=[got["embeddings"][0]],
    )
    store.replica.rebuild(store.replica.generation())  # the copies as Chroma holds them
    rankings: list[int] = []
    ranked = kb.search._ranked

    def counted(*args: Any, **kwargs: Any) -> Any:
        rankings.append(1)
        return ranked(*args, **kwargs)

    monkeypatch.setattr(kb.search, "_ranked", counted)
    for _ in range(2):
        rankings.clear()
        ask = QueryRequest(query="zebras serengeti", mode="keyword", min_score=-1, top_k=3)
        assert [m.id for m in search(store, ask)[0].matches] == []
        assert rankings == [1]


def test_negative_zero_is_the_zero_chroma_gives_back(store: KnowledgeStore) -> None:
    """Chroma reads -0.0 back as 0.0, but the content hash kept the sign: loading an export
    again with upsert counted the document as updated and rewrote it."""
    given = {"x": -0.0, "xs": [-0.0, 1.5]}
    store.add([DocumentIn(id="z", text="Zero degrees.", metadata=given)])
    exported = store.get("z").metadata
    assert exported == {"x": 0.0, "xs": [0.0, 1.5]}
    again = store.add(
        [DocumentIn(id="z", text="Zero degrees.", metadata=exported)], WriteMode.UPSERT
    )
    assert (again.updated, again.skipped) == (0, 1)
    # the search's copies hold what Chroma holds: no sign, in every mode (review helper 57)
    for mode in ("dense", "keyword", "hybrid"):
        ask = QueryRequest(query="zero degrees", mode=mode, min_score=-1, top_k=1)
        found = search(store, ask)[0].matches[0].metadata
        assert found == {"x": 0.0, "xs": [0.0, 1.5]}, mode
        signs = [math.copysign(1.0, value) for value in (found["x"], *found["xs"])]
        assert signs == [1.0, 1.0, 1.0], mode


def test_new_one_chunk_documents_are_added_and_the_rest_upserted(
    store: KnowledgeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chroma's add skips an existing id silently, so it is used only for records known not to
    be stored: a new document's single chunk (its id was checked under the write lock)."""
    real, calls = store.records._write, []

    def spy(records, add=False):
        calls.append((add, sorted(r.id for r in records)))
        real(records, add)

    monkeypatch.setattr(store.records, "_write", spy)
    store.add([DocumentIn(id="a", text="first"), DocumentIn(id="long", text=long_text("x"))])
    chunks = store.get("long").chunks
    assert calls == [
        (True, ["a"]),
        (False, sorted(["long", *(f"long#chunk{i}" for i in range(1, chunks))])),
    ]
    calls.clear()
    store.add([DocumentIn(id="a", text="second"), DocumentIn(id="b", text="b")], WriteMode.UPSERT)
    assert calls == [(True, ["b"]), (False, ["a"])]
    assert store.get("a").text == "second"
    assert store.get("b").text == "b"


def test_skip_mode_keeps_stored_documents(store: KnowledgeStore) -> None:
    store.add([DocumentIn(id="a", text="first")])
    result = store.add(
        [DocumentIn(id="a", text="second"), DocumentIn(id="b", text="b")], WriteMode.SKIP
    )
    assert (result.added, result.skipped) == (1, 1)
    assert store.get("a").text == "first"


def long_text(fact: str) -> str:
    filler = " ".join(
        f"Paragraph {i} discusses gradient descent, learning rates and loss curves in detail."
        for i in range(60)
    )
    return f"{filler}\n\n{fact}"


def test_long_documents_are_chunked_and_read_back_whole(store: KnowledgeStore) -> None:
    text = long_text("The secret ingredient of the recipe is smoked paprika.")
    store.add([DocumentIn(id="long", text=text, metadata={"kind": "essay"})])
    doc = store.get("long")
    assert doc.chunks > 1
    assert doc.text == text
    store.replica.wait_loaded()
    assert store.replica.current_mirror() is not None
    assert store.count() == 1  # counted by the mirror
    mirror, store.replica.mirror = store.replica.mirror, None
    try:
        assert store.count() == 1  # counted by Chroma
    finally:
        store.replica.mirror = mirror
    assert store.records.count() == doc.chunks


def test_a_fact_at_the_end_of_a_long_document_is_found_once(client, store) -> None:
    fact = (
        "A note on the recipe itself. Its secret ingredient is smoked paprika, which gives the "
        "stew a deep red colour and a gentle smoky warmth. Add the spice at the very end."
    )
    text = long_text(fact)
    client.post(
        "/add",
        json={
            "documents": [
                {"id": "long", "text": text},
                {"id": "short", "text": "Learning rate schedules decay the step size over time."},
            ]
        },
    )
    result = client.post("/query", json={"query": "which spice is the secret ingredient?"}).json
    assert [m["id"] for m in result["matches"]] == ["long"]
    match = result["matches"][0]
    assert match["text"] == text
    assert "smoked paprika" in match["passage"]
    assert len(match["passage"]) < len(text)


def test_updating_and_deleting_a_chunked_document(store: KnowledgeStore) -> None:
    store.add([DocumentIn(id="long", text=long_text("End."))])
    chunks = store.get("long").chunks
    store.update("long", UpdateFields(metadata={"tag": "x"}))
    assert store.get("long").metadata == {"tag": "x"}
    assert store.records.count() == chunks
    store.update("long", UpdateFields(text="Now it is short."))
    assert store.get("long").chunks == 1
    assert store.records.count() == 1
    store.delete(["long"])
    assert store.records.count() == 0


@pytest.mark.parametrize(
    ("before", "after"),
    [(True, 1), (1, 1.0), (0.0, False), ([1, 0], [True, False]), ([2.0], [2])],
)
def test_an_update_changing_only_a_values_type_is_written(
    store: KnowledgeStore, before: object, after: object
) -> None:
    """True, 1 and 1.0 are equal to Python but not as metadata (a filter on true matches
    only true): an update to another type is a change."""
    store.add([DocumentIn(id="a", text="some text", metadata={"x": before})])
    updated = store.update("a", UpdateFields(metadata={"x": after}))
    for document in (updated, store.get("a")):
        assert json.dumps(document.metadata) == json.dumps({"x": after})
    (stored,) = store.records.get(["a"])
    assert json.dumps(stored.metadata["x"]) == json.dumps(after)


def keyword_ids(store: KnowledgeStore, text: str) -> list[str]:
    """The record ids the keyword index (a copy kept in step with Chroma) finds for text."""
    store.replica.catch_up()
    return sorted({hit.record_id for hit in store.keyword.search(text, 50)})


def test_a_failed_delete_of_a_shrunk_documents_chunks_rolls_the_update_back(
    store: KnowledgeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An update that shortens a document deletes its extra chunks in the same
    all-or-nothing write: if that delete fails, the new first chunk is not left beside the
    old later ones."""
    text = long_text("The fact.")
    store.add([DocumentIn(id="long", text=text, metadata={"v": 1})])
    chunks = store.get("long").chunks
    indexed = keyword_ids(store, "gradient descent")

    def failing(**kwargs) -> None:
        raise RuntimeError("delete failed")

    monkeypatch.setattr(store.records._col, "delete", failing)
    with pytest.raises(StoreUnavailable):
        store.update("long", UpdateFields(text="Now it is short.", metadata={"w": 2}))
    monkeypatch.undo()
    assert store.get("long").text == text
    assert store.get("long").metadata == {"v": 1}
    assert store.records.count() == chunks
    assert keyword_ids(store, "short") == []  # the copies agree with Chroma
    assert keyword_ids(store, "gradient descent") == indexed
    store.delete(["long"])
    assert store.records.count() == 0


def test_rewriting_or_deleting_a_document_removes_chunks_it_no_longer_counts(
    store: KnowledgeStore,
) -> None:
    """Chunks a failed write left behind (the first chunk counts fewer) are found by the
    document id every chunk carries."""
    for doc_id in ("a", "b"):
        store.add([DocumentIn(id=doc_id, text=long_text(f"Fact {doc_id}."))])
        (head,) = build_records(doc_id, "Short.", None, [Chunk(0, "Short.")])
        head.embedding = store.embedder.embed_documents(["Short."])[0]
        store.records.upsert([head])  # the later chunks are orphans now
    orphans = store.records.count() - 2
    assert orphans > 0
    store.update("a", UpdateFields(text="Rewritten."))
    assert store.records.ids(CompiledFilter(where={DOC: "a"})) == ["a"]
    store.delete(["a", "b"])
    assert store.records.count() == 0
    assert keyword_ids(store, "gradient descent") == []


def test_a_delete_failing_part_way_can_be_repeated(
    store: KnowledgeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first chunk goes last: a delete cut off leaves the document's id, so deleting it
    again removes the rest."""
    store.add([DocumentIn(id="long", text=long_text("End."))])
    store.records.max_batch = 2
    real, calls = store.records._col.delete, []

    def flaky(**kwargs) -> None:
        calls.append(kwargs["ids"])
        if len(calls) == 2:
            raise RuntimeError("connection reset")
        real(**kwargs)

    monkeypatch.setattr(store.records._col, "delete", flaky)
    with pytest.raises(StoreUnavailable):
        store.delete(["long"])
    monkeypatch.undo()
    assert "long" not in calls[0]
    store.delete(["long"])
    assert store.records.count() == 0


def test_concurrent_adds_and_queries_all_succeed(app) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def work(i: int) -> tuple[int, int]:
        client = app.test_client()
        added = client.post("/add", json={"id": f"t{i}", "text": f"Thread {i} writes a note"})
        found = client.post("/query", json={"query": f"note from thread {i}"})
        return added.status_code, found.status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(work, range(24)))
    assert statuses == [(201, 200)] * 24
    assert app.test_client().get("/health").json["documents"] == 24


def test_chunking_can_be_switched_off(settings: Settings, embedder) -> None:
    store = KnowledgeStore.open(settings.model_copy(update={"chunking": False}), embedder)
    store.add([DocumentIn(id="long", text=long_text("End."))])
    assert store.get("long").chunks == 1
    store.close()


def test_chunks_longer_than_the_model_reads_are_refused(settings: Settings, embedder) -> None:
    """KB_CHUNK_TOKENS 1000 made a 458-token document one chunk, and the encoder cut it at
    256 tokens: the rest was stored and shown but never embedded, so never found."""
    with pytest.raises(ConfigError, match=r"KB_CHUNK_TOKENS is 1000, .* at most 254 tokens"):
        KnowledgeStore.open(changed(settings, chunk_tokens=1000), embedder)
    store = KnowledgeStore.open(changed(settings, chunk_tokens=254), embedder)  # the limit
    assert store.window == 254
    store.close()


def test_an_overlap_of_more_than_half_a_chunk_is_refused_unless_it_is_the_default(
    settings: Settings, embedder
) -> None:
    """KB_CHUNK_OVERLAP 100 on 128-token chunks was cut to 64 without a word."""
    with pytest.raises(ConfigError, match=r"KB_CHUNK_OVERLAP is 100, .* 128 tokens: at most 64"):
        KnowledgeStore.open(changed(settings, chunk_tokens=128, chunk_overlap=100), embedder)
    store = KnowledgeStore.open(changed(settings, chunk_tokens=128, chunk_overlap=64), embedder)
    assert store.overlap == 64
    store.close()
    store = KnowledgeStore.open(changed(settings, chunk_tokens=16), embedder)  # default 32
    assert store.overlap == 8
    store.close()


def test_an_open_embedded_store_is_locked_to_one_user(settings: Settings, embedder) -> None:
    from kb.lock import StoreLocked

    first = KnowledgeStore.open(settings, embedder)
    with pytest.raises(StoreLocked, match=r"open in pid \d+") as caught:
        KnowledgeStore.open(settings, embedder)
    assert caught.value.status == 409
    first.close()
    KnowledgeStore.open(settings, embedder).close()  # free again once closed


def test_a_second_process_fails_fast_on_a_locked_store(settings: Settings, embedder) -> None:
    import os
    import subprocess
    import sys

    store = KnowledgeStore.open(settings, embedder)
    env = {**os.environ, "KB_CHROMA_PATH": str(settings.chroma_path), "KB_COLLECTION": "kb_test"}
    result = subprocess.run(
        [sys.executable, "-m", "kb", "export"], env=env, capture_output=True, text=True, timeout=120
    )
    store.close()
    assert result.returncode != 0
    assert "is open in pid" in result.stderr
    # its own advice: export cannot go through the service (load and backup can, --url)
    assert "Stop that process first (kb export has no --url)" in result.stderr


def test_a_prepared_add_is_planned_again_if_the_store_changed(store: KnowledgeStore) -> None:
    """The loader embeds a batch while the previous one is written; a write in between
    must not be overwritten or duplicated by the batch prepared before it."""
    docs = [DocumentIn(id="a", text="first text"), DocumentIn(id="b", text="second text")]
    plan = store.prepare(docs, WriteMode.SKIP)
    store.add([DocumentIn(id="a", text="written meanwhile")])
    result = store.commit(plan)
    assert (result.added, result.skipped) == (1, 1)
    assert store.get("a").text == "written meanwhile"
    assert store.count() == 2
    strict = store.prepare([DocumentIn(id="c", text="third")], WriteMode.ERROR)
    store.add([DocumentIn(id="c", text="third, elsewhere")])
    with pytest.raises(Conflict):
        store.commit(strict)


@pytest.mark.parametrize("mode", ["embedded", "server"])
def test_the_configured_ef_search_is_given_to_new_and_existing_collections(
    mode: str, settings: Settings, embedder, request: pytest.FixtureRequest
) -> None:
    if mode == "server":
        settings = request.getfixturevalue("server_settings")
    store = KnowledgeStore.open(settings.model_copy(update={"hnsw_ef_search": 123}), embedder)
    store.add([DocumentIn(id="a", text="Vectors explored by the graph search")])
    assert store.records.ef_search == 123
    store.close()
    store = KnowledgeStore.open(settings.model_copy(update={"hnsw_ef_search": 321}), embedder)
    try:
        assert store.records.ef_search == 321
        assert store.get("a").text == "Vectors explored by the graph search"
        hits = store.records.nearest_ids(embedder.embed_queries(["graph search"]), 1)
        assert [rid for rid, _ in hits[0]] == [store.records.ids()[0]]
    finally:
        store.close()


def busy_then(real: Any, times: int = 1) -> FailingFirst:
    """A stand-in for a Chroma method that SQLite finds busy `times` times, then `real`."""
    from chromadb.errors import InternalError

    return FailingFirst(InternalError(BUSY), real, times)


def test_a_start_that_finds_the_store_busy_changing_ef_search_tries_again(
    settings: Settings, embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An embedded store's own work as it opens held SQLite's write lock for some ms, and
    the reopen's update of ef_search failed with Chroma's "database is locked" (a flake of
    the ef_search test above, about one start in a hundred); the update is tried again."""
    from chromadb.api.models.Collection import Collection

    store = KnowledgeStore.open(settings.model_copy(update={"hnsw_ef_search": 123}), embedder)
    store.add([DocumentIn(id="a", text="Vectors explored by the graph search")])
    store.close()
    modify = busy_then(Collection.modify, times=2)
    # a function, so that it binds to the collection as the method did
    monkeypatch.setattr(Collection, "modify", lambda self, **kwargs: modify(self, **kwargs))
    store = KnowledgeStore.open(settings.model_copy(update={"hnsw_ef_search": 321}), embedder)
    try:
        assert len(modify.calls) == 3
        assert store.records.ef_search == 321
        assert store.get("a").text == "Vectors explored by the graph search"
    finally:
        store.close()


def test_writes_sqlite_finds_busy_are_tried_again_and_land_once(
    store: KnowledgeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.add([DocumentIn(id="old", text="Original text", metadata={"v": 1})])
    col = store.records._col
    for name in ("add", "upsert", "delete"):
        monkeypatch.setattr(col, name, busy_then(getattr(col, name)))
    store.add([DocumentIn(id="new", text="A new document")])
    store.add([DocumentIn(id="old", text="Replaced text", metadata={"v": 2})], WriteMode.UPSERT)
    assert store.count() == 2
    assert store.get("old").text == "Replaced text"
    assert store.get("old").metadata == {"v": 2}
    store.delete(["new"])
    assert store.get_many(["new", "old"]).keys() == {"old"}
    assert [len(getattr(col, name).calls) for name in ("add", "upsert", "delete")] == [2, 2, 2]


def test_a_store_busy_past_the_waits_fails_the_write_with_nothing_changed(
    store: KnowledgeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kb.collection

    store.add([DocumentIn(id="old", text="Original text", metadata={"v": 1})])
    monkeypatch.setattr(kb.collection, "BUSY_WAITS", (0.0, 0.0))
    col = store.records._col
    upsert = busy_then(col.upsert, times=99)
    monkeypatch.setattr(col, "upsert", upsert)
    with pytest.raises(StoreUnavailable, match="database is locked"):
        store.add([DocumentIn(id="old", text="Replaced text")], WriteMode.UPSERT)
    assert len(upsert.calls) == 3  # each wait, then a last try
    monkeypatch.undo()
    assert store.get("old").text == "Original text"
    assert store.get("old").metadata == {"v": 1}


def test_only_a_busy_store_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    from chromadb.errors import InternalError

    from kb.collection import chroma_write
    from kb.errors import ValidationFailed

    calls: list[Exception] = []

    def failing(error: Exception) -> None:
        calls.append(error)
        raise error

    for error, kind in [
        (InternalError("Database error: disk I/O error"), StoreUnavailable),
        (ValueError("Expected where to have exactly one operator"), ValidationFailed),
    ]:
        calls.clear()
        with pytest.raises(kind):
            chroma_write(failing, error)
        assert calls == [error]
    assert chroma_write(busy_then(lambda x: x * 2, times=3), 21) == 42


def test_concurrent_nearest_neighbour_queries_share_chroma_calls(
    store: KnowledgeStore, monkeypatch
) -> None:
    """Searches that arrive together go to Chroma in one query per distinct n, and each gets
    exactly what it would get alone."""
    store.add([DocumentIn(id=f"d{i}", text=f"note {i} about topic {i % 7}") for i in range(40)])
    vectors = store.embedder.embed_queries([f"topic {i % 7} notes" for i in range(24)])
    sizes = [3 if i % 2 else 10 for i in range(24)]
    alone = [store.records.nearest_ids(vectors[i : i + 1], sizes[i])[0] for i in range(24)]
    calls: list[int] = []
    query = store.records._col.query

    def slow_query(**kwargs):
        calls.append(len(kwargs["query_embeddings"]))
        time.sleep(0.01)  # long enough for the other searches to queue behind this one
        return query(**kwargs)

    monkeypatch.setattr(store.records._col, "query", slow_query)
    gate = threading.Barrier(12)

    def ask(i: int) -> list[tuple[str, float]]:
        if i < 12:
            gate.wait()
        return store.records.nearest_ids(vectors[i : i + 1], sizes[i])[0]

    with ThreadPoolExecutor(12) as pool:
        together = list(pool.map(ask, range(24)))
    assert [[(rid, round(s, 5)) for rid, s in hits] for hits in together] == [
        [(rid, round(s, 5)) for rid, s in hits] for hits in alone
    ]
    assert max(calls) > 1, calls  # some queries went to Chroma together
    assert len(calls) < 24, calls


def test_reads_of_every_match_go_a_page_at_a_time(store: KnowledgeStore) -> None:
    """Chroma fails one `get` of ~32k records' documents or metadata; reads without ids or a
    limit (stats without the mirror, delete by filter) ask for pages of them."""
    docs = [
        DocumentIn(id=f"d{i}", text=f"document number {i}", metadata={"n": i}) for i in range(7)
    ]
    store.add(docs)
    heads = CompiledFilter(where=HEADS)
    store.records.read_page = 3
    assert sorted(meta["n"] for meta in store.records.metadatas(heads)) == list(range(7))
    assert len(store.records.get(flt=heads, offset=2)) == 5
    assert all(r.embedding is not None for r in store.records.get(flt=heads, embeddings=True))
    bare = store.records.get(flt=heads, texts=False)  # metadata only: what stats reads
    assert [r.text for r in bare] == [""] * 7
    assert sorted(r.metadata["n"] for r in bare) == list(range(7))
    deleted = store.delete_where(CompiledFilter(where={"n": {"$gte": 1}}))
    assert deleted.deleted == 6
    assert [r.id for r in store.records.get(flt=heads)] == ["d0"]


def test_a_get_of_more_ids_than_a_batch_keeps_the_embeddings(store: KnowledgeStore) -> None:
    store.add([DocumentIn(id=f"d{i}", text=f"document number {i}") for i in range(5)])
    store.records.max_batch = 2
    got = store.records.get([f"d{i}" for i in range(5)], embeddings=True)
    assert len(got) == 5
    assert all(r.embedding is not None for r in got)


def test_every_filtered_read_asks_a_long_id_list_in_parts(
    store: KnowledgeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A where-clause listing more document ids than one SQLite statement binds (a text
    filter passing most of a large store) was split for ids() and nearest() only; get(),
    pages() and metadatas() sent it whole (503 "too many SQL variables")."""
    from kb import collection

    store.add([DocumentIn(id=name, text=f"Note {name}.") for name in "abcd"])
    monkeypatch.setattr(collection, "ID_LIST_CAP", 2)
    sent: list[int] = []
    chroma_get = store.records._col.get

    def counted(*args: object, **kwargs: object) -> object:
        where = kwargs.get("where") or {}
        listed = [len(c[DOC]["$in"]) for c in where.get("$and", [where]) if DOC in c]  # type: ignore[attr-defined]
        sent.extend(listed)
        return chroma_get(*args, **kwargs)

    monkeypatch.setattr(store.records._col, "get", counted)
    flt = CompiledFilter(where={DOC: {"$in": list("abcd")}})
    assert sorted(r.id for r in store.records.get(flt=flt)) == list("abcd")
    assert sorted(r.id for page in store.records.pages(flt, size=1) for r in page) == list("abcd")
    assert len(store.records.metadatas(flt)) == 4
    assert sent
    assert max(sent) <= 2
    with pytest.raises(ValueError, match="a page of a where-clause"):
        store.records.get(flt=flt, limit=2)


def test_a_listing_page_agrees_with_its_total_during_a_write(
    store: KnowledgeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The total and the page were two reads: an add landing between them listed one
    document and showed two (review helper 30). Both come from one read of the ids now; a
    document deleted after it is left out of the page, never shown beyond the total."""
    store.add([DocumentIn(id="a", text="First note.", metadata={"k": 1})])
    ids = store.records.ids
    writer: list[threading.Thread] = []

    def write_meanwhile(*args: Any, **kwargs: Any) -> Any:
        found = ids(*args, **kwargs)
        if not writer:
            note = DocumentIn(id="b", text="Second note.", metadata={"k": 1})
            writer.append(threading.Thread(target=store.add, args=([note],)))
            writer[0].start()
            writer[0].join()
        return found

    monkeypatch.setattr(store.records, "ids", write_meanwhile)
    listed = store.list_documents(CompiledFilter(where={"k": 1}), limit=10, offset=0)
    assert listed.total == len(listed.documents) == 1
    assert store.count() == 2
    monkeypatch.undo()
    ids = store.records.ids

    def delete_meanwhile(*args: Any, **kwargs: Any) -> Any:
        found = ids(*args, **kwargs)
        if "a" in found:
            monkeypatch.setattr(store.records, "ids", ids)  # the delete reads ids too
            store.delete(["a"])
        return found

    monkeypatch.setattr(store.records, "ids", delete_meanwhile)
    listed = store.list_documents(CompiledFilter(where={"k": 1}), limit=10, offset=0)
    assert (listed.total, [doc.id for doc in listed.documents]) == (2, ["b"])


def test_a_batch_of_wide_reads_from_chroma_is_asked_in_parts(settings: Settings, embedder) -> None:
    """Chroma reads what a query call found in one SQLite statement (at most 32,766 bound
    values): 17 queries of 2,000 chunks, a widened batch search before the copies loaded,
    failed the whole request with "too many SQL variables" (review helper 73)."""
    store = KnowledgeStore.open(settings, embedder)
    try:
        vectors = np.random.default_rng(7).normal(size=(2_100, embedder.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        records = [
            record
            for i, vector in enumerate(vectors)
            for record in build_records(f"r{i}", f"text {i}", {"n": i}, [Chunk(0, f"text {i}")])
        ]
        for record, vector in zip(records, vectors, strict=True):
            record.embedding = vector.tolist()
        store.records.upsert(records)
        got = store.records.nearest(vectors[:17], 2_000, texts=False)
        assert [len(found) for found in got] == [2_000] * 17
        assert [found[0][0].id for found in got] == [f"r{i}" for i in range(17)]
    finally:
        store.close()


def test_a_document_stored_without_a_date_twin_gets_it_when_sent_or_patched_again(
    settings: Settings, embedder
) -> None:
    """Before 0fef3b5 a datetime with 9 fractional digits got no twin; sent again unchanged,
    or patched with the same value, the document was skipped, so no range ever found it
    (review helper 76)."""
    from kb.filters import TWIN_PREFIX, compile_filter
    from kb.replica import GENERATION_KEY

    at = "2024-05-01T12:00:00.123456789Z"
    day = compile_filter(where={"at": {"$gte": "2024-05-01", "$lte": "2024-05-01"}})

    def found(store: KnowledgeStore) -> list[str]:
        return [doc.id for doc in store.iter_documents(day)]

    store = KnowledgeStore.open(settings, embedder)
    try:
        for doc_id in ("sent", "patched"):
            store.add([DocumentIn(id=doc_id, text=f"Deployed, {doc_id}.", metadata={"at": at})])
            (record,) = store.records.get([doc_id], embeddings=True)
            store.records._col.upsert(  # as an earlier kb wrote it: no twin
                ids=[doc_id],
                embeddings=[record.embedding],
                metadatas=[{**record.metadata, f"{TWIN_PREFIX}at": None}],
            )
        generation = int(store.records.settings_value(GENERATION_KEY) or 0)
        store.records.set_settings_value(GENERATION_KEY, generation + 1)
        store.close()
        store = KnowledgeStore.open(settings, embedder)
        assert found(store) == []
        again = DocumentIn(id="sent", text="Deployed, sent.", metadata={"at": at})
        assert store.add([again], WriteMode.SKIP).skipped == 1  # skipped: not made a change
        assert found(store) == []
        written = store.add([again], WriteMode.UPSERT)
        assert (written.updated, written.skipped_changed) == (1, 0)
        store.update("patched", UpdateFields(metadata={"at": at}))
        assert sorted(found(store)) == ["patched", "sent"]
    finally:
        store.close()


@pytest.mark.parametrize("damage", ["a chunk missing", "a chunk of another version"])
def test_a_damaged_document_is_a_409_for_get_and_left_out_of_every_read_until_rewritten(
    store: KnowledgeStore, damage: str
) -> None:
    """An update that failed part-way, its rollback failing too (the store still away), left
    chunks of two versions; GET, the listing, exports and searches served them joined: a text
    never stored, with a 200 (review helper 82)."""
    text = long_text("alpha")
    store.add([DocumentIn(id="alpha", text=text), DocumentIn(id="short", text="Otters.")])
    assert store.get("alpha").chunks > 2
    later = chunk_id("alpha", 1)
    if damage == "a chunk missing":
        store.records.delete([later])
    else:
        (record,) = store.records.get([later], embeddings=True)
        record.text = "Words of a version the first chunk does not count."
        record.metadata["_kb_hash"] = "0" * 32
        store.records.upsert([record])
    with pytest.raises(Conflict, match="is damaged: its chunks are not all of one version"):
        store.get("alpha")
    assert [d.id for d in store.list_documents(CompiledFilter(), 10, 0).documents] == ["short"]
    assert [d.id for d in store.iter_documents(CompiledFilter())] == ["short"]
    request = QueryRequest(query="alpha fact", mode="keyword", min_score=-1)
    assert "alpha" not in [m.id for m in search(store, request)[0].matches]
    with pytest.raises(Conflict):  # a metadata-only update would keep what is left
        store.update("alpha", UpdateFields(metadata={"checked": True}))
    store.update("alpha", UpdateFields(text=text))  # written again whole: mended
    assert store.get("alpha").text == text


@pytest.mark.parametrize("error", [StoreUnavailable, StoreTimeout])
def test_a_write_whose_rollback_fails_too_names_the_documents_it_may_have_damaged(
    store: KnowledgeStore, monkeypatch: pytest.MonkeyPatch, error: type[StoreUnavailable]
) -> None:
    """A timeout stays a timeout (a 504), as without the rollback (review helper 86)."""
    store.add([DocumentIn(id="old", text="Original text")])
    store.records.max_batch = 2
    real, calls = store.records._write, [0]

    def failing_after_the_first(records: Any, add: bool = False) -> None:
        calls[0] += 1
        if calls[0] > 1:  # the second call fails, and every write of the rollback
            raise error("the store failed: disk full")
        real(records, add)

    monkeypatch.setattr(store.records, "_write", failing_after_the_first)
    docs = [DocumentIn(id=f"new{i}", text=f"New document {i}") for i in range(3)]
    with pytest.raises(StoreUnavailable) as caught:
        store.add([DocumentIn(id="old", text="Replaced text"), *docs], WriteMode.UPSERT)
    assert type(caught.value) is error
    message = caught.value.message
    assert "so did its rollback" in message
    assert "'new0', 'new1', 'new2', 'old' may be damaged" in message


def test_a_metadata_update_sends_only_the_metadata(
    store: KnowledgeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It upserted every chunk with its vector again, and Chroma rebuilt each one's place in
    its index: 20 s for a PATCH of one key on a 3,660-chunk document (review helper 82)."""
    text = long_text("alpha")
    store.add([DocumentIn(id="alpha", text=text, metadata={"stage": "draft", "old": 1})])
    ids = [chunk_id("alpha", i) for i in range(store.get("alpha").chunks)]
    before = {r.id: r.embedding for r in store.records.get(ids, embeddings=True)}

    def no_upsert(**kwargs: object) -> None:
        raise AssertionError("a metadata update upserted")

    monkeypatch.setattr(store.records._col, "upsert", no_upsert)
    patched = store.update("alpha", UpdateFields(metadata={"stage": "final", "old": None}))
    assert patched.metadata == {"stage": "final"}
    assert store.get("alpha").metadata == {"stage": "final"}
    assert store.get("alpha").text == text
    after = store.records.get(ids, embeddings=True)
    assert all(r.metadata["stage"] == "final" and "old" not in r.metadata for r in after)
    assert all(np.array_equal(r.embedding, before[r.id]) for r in after)
    request = QueryRequest(query="alpha", mode="keyword", min_score=-1, where={"stage": "final"})
    assert [m.id for m in search(store, request)[0].matches] == ["alpha"]
