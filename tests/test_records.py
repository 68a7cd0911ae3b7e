"""Documents to records and back: internal fields hidden, empty lists kept, ids derived."""

from __future__ import annotations

from kb.chunking import Chunk
from kb.records import (
    assemble,
    build_records,
    chunk_id,
    derive_id,
    of_version,
    user_metadata,
)


def test_metadata_reads_back_exactly_as_given() -> None:
    metadata = {"tags": [], "date": "2024-01-02", "n": 3, "ok": True}
    records = build_records("d", "text", metadata, [Chunk(0, "text")])
    assert any(key.startswith("_kb_") for key in records[0].metadata)
    assert "tags" not in records[0].metadata  # Chroma rejects empty lists
    assert user_metadata(records[0].metadata) == metadata


def test_metadata_reads_back_with_its_keys_in_sorted_order() -> None:
    """Chroma gives a record's keys back in another order on each run: four exports of an
    unchanged store were four different files (review helper 26)."""
    metadata = {"zeta": 1, "tags": [], "alpha": "2024-01-02", "Mid": True}
    (record,) = build_records("d", "text", metadata, [Chunk(0, "text")])
    shuffled = dict(reversed(list(record.metadata.items())))
    assert list(user_metadata(shuffled) or {}) == ["Mid", "alpha", "tags", "zeta"]


def test_no_metadata_reads_back_as_none() -> None:
    records = build_records("d", "text", None, [Chunk(0, "text")])
    assert user_metadata(records[0].metadata) is None


def test_chunks_get_their_own_ids_and_assemble_in_order() -> None:
    text = "alpha beta gamma delta"
    chunks = [Chunk(0, "alpha beta "), Chunk(6, "beta gamma "), Chunk(17, "delta")]
    records = build_records("doc", text, {"k": "v"}, chunks)
    assert [r.id for r in records] == ["doc", "doc#chunk1", "doc#chunk2"]
    doc = assemble(reversed(records))
    assert doc.text == text
    assert doc.id == "doc"
    assert doc.chunks == 3
    assert doc.metadata == {"k": "v"}


def test_derived_ids_depend_on_text_only() -> None:
    assert derive_id("same") == derive_id("same")
    assert derive_id("same") != derive_id("other")
    assert chunk_id("x", 0) == "x"


def test_a_chunk_belongs_to_its_first_chunks_version_by_index_and_hash() -> None:
    assert of_version(3, "h1", 2, "h1")
    assert not of_version(3, "h1", 3, "h1")  # past the count: a shrunk document's old tail
    assert not of_version(3, "h1", 1, "h0")  # another version's chunk in its place
    assert of_version(2, None, 1, None)  # stored before content hashes: compared as they are
