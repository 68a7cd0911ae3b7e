"""How a document maps to Chroma records (one per chunk, internal fields) and back.

Chunk 0 of a document has the document's own id; chunk i > 0 has id `<id>#chunk<i>`. Every
chunk carries the user's metadata plus internal `_kb_*` fields that users never see.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from kb.chroma_floats import held
from kb.chunking import Chunk, join
from kb.filters import TWIN_PREFIX, date_twins
from kb.schemas import CHUNK_ID_RE, RESERVED_PREFIX, Document

if TYPE_CHECKING:
    import numpy as np

DOC = f"{RESERVED_PREFIX}doc"
CHUNK = f"{RESERVED_PREFIX}chunk"
CHUNKS = f"{RESERVED_PREFIX}chunks"
START = f"{RESERVED_PREFIX}start"
HASH = f"{RESERVED_PREFIX}hash"
EMPTY_LISTS = f"{RESERVED_PREFIX}empty"
HEADS = {CHUNK: 0}  # where-clause for the first chunk of every document: one record each

T = TypeVar("T")


@dataclass
class Record:
    """One row of the Chroma collection."""

    id: str
    text: str
    metadata: dict[str, Any]
    embedding: Sequence[float] | np.ndarray | None = None

    @property
    def doc_id(self) -> str:
        return str(self.metadata[DOC])

    @property
    def chunk(self) -> int:
        return int(self.metadata[CHUNK])


def chunk_id(doc_id: str, index: int) -> str:
    return doc_id if index == 0 else f"{doc_id}#chunk{index}"


def doc_id_of(record_id: str) -> str:
    """The id of the document a record (chunk) id belongs to."""
    return CHUNK_ID_RE.sub("", record_id)


def chunk_of(record_id: str) -> int:
    """The chunk number a record id names (0 for a document's first chunk)."""
    suffix = CHUNK_ID_RE.search(record_id)
    return int(suffix.group().removeprefix("#chunk")) if suffix else 0


def of_version(count: int, version: object, index: int, digest: object) -> bool:
    """Whether a chunk (its index and content hash) belongs to the version of its document
    that the first chunk is (the chunks it counts and its content hash). Chunks a killed
    write left carry an index past the count, or another version's hash (kb.repair)."""
    return index < count and digest == version


def whole_documents(
    items: Sequence[T],
    most: int,
    record_id: Callable[[T], str],
    size: Callable[[T], int] | None = None,
    most_size: int = 0,
) -> list[list[T]]:
    """Records (or record ids) in parts of at most `most`, and with `size`, of at most
    `most_size` in all: one Chroma call each, a document's chunks never split between two
    parts: a process killed between two calls then leaves each document as it was or as
    written, never a first chunk with part of its chunks. A document beyond one part is cut
    with its first chunk last: killed part-way, an add leaves chunks without a first chunk
    (kb.repair removes them), a delete leaves the document findable by its id, and deleting
    it again removes the rest."""
    chunks: dict[str, list[T]] = {}
    for item in items:
        chunks.setdefault(doc_id_of(record_id(item)), []).append(item)
    parts: list[list[T]] = [[]]
    held = 0  # the last part's size
    for doc_id, group in chunks.items():
        group.sort(key=lambda item: record_id(item) == doc_id)
        sizes = [size(item) for item in group] if size is not None else [0] * len(group)
        whole = sum(sizes)
        if parts[-1] and (len(parts[-1]) + len(group) > most or held + whole > most_size > 0):
            parts.append([])
            held = 0
        for item, grows in zip(group, sizes, strict=True):
            if parts[-1] and (len(parts[-1]) == most or held + grows > most_size > 0):
                parts.append([])
                held = 0
            parts[-1].append(item)
            held += grows
    return [part for part in parts if part]


def derive_id(text: str) -> str:
    """The id of a document given without one: a hash of its text, so re-adding is detected."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def content_hash(text: str, metadata: dict[str, Any] | None) -> str:
    return hashlib.sha256(_content(text, metadata).encode("utf-8")).hexdigest()[:32]


def same_content(
    text: str,
    metadata: dict[str, Any] | None,
    other_text: str,
    other_metadata: dict[str, Any] | None,
) -> bool:
    """Whether two documents' texts and metadata are equal, values' types included: Python's
    == takes True == 1 == 1.0 and [1, 0] == [True, False], which are different metadata (a
    filter on `true` matches only the first)."""
    return _content(text, metadata) == _content(other_text, other_metadata)


def _content(text: str, metadata: dict[str, Any] | None) -> str:
    """A document's content as JSON, where true, 1 and 1.0 are spelt apart, and decimals are
    as kb writes them (`chroma_floats.held`: -0.0 as 0.0, 123456789.12345679 as
    123456789.1234568): an export of it, loaded again, is the same document."""
    plain = {key: held(value) for key, value in (metadata or {}).items()}
    return json.dumps([text, plain], sort_keys=True, ensure_ascii=False)


def twins_stale(stored: dict[str, Any], metadata: dict[str, Any] | None) -> bool:
    """Whether a stored first chunk's date twins (`stored`, its whole metadata) are not the
    ones `metadata` gives now: a datetime with 7 to 9 fractional digits got none before
    0fef3b5, and sent again unchanged, or patched with the same values, such a document was
    skipped, so no range could ever find it (review helper 76)."""
    have = {key for key in stored if key.startswith(TWIN_PREFIX)}
    return have != set(date_twins(metadata or {}))


def as_held(records: Sequence[Record]) -> Sequence[Record]:
    """These records as Chroma holds them once written (`chroma_floats.held`): a record
    whose metadata holds a decimal kb writes as another float (or -0.0) is copied with that
    float; the others are not copied. Chroma is given these (`RecordCollection._write`),
    and so are kb's copies of the store."""
    out: list[Record] | None = None
    for i, record in enumerate(records):
        metadata = record.metadata
        # `is not`: held gives the value itself when unmoved (-0.0 == 0.0, so != would miss it)
        moved = {k: h for k, v in metadata.items() if (h := held(v)) is not v}
        if moved:
            if out is None:
                out = list(records)
            out[i] = Record(record.id, record.text, {**metadata, **moved}, record.embedding)
    return records if out is None else out


def build_records(
    doc_id: str, text: str, metadata: dict[str, Any] | None, chunks: Sequence[Chunk]
) -> list[Record]:
    """The records of one document, without embeddings."""
    metadata = metadata or {}
    # the values as given: the write turns decimals into floats Chroma keeps as they are,
    # and the copies are given those once it lands (`as_held`)
    stored = {key: value for key, value in metadata.items() if value != []}
    empty = sorted(key for key, value in metadata.items() if value == [])
    internal: dict[str, Any] = {
        DOC: doc_id,
        CHUNKS: len(chunks),
        HASH: content_hash(text, metadata),
        **date_twins(stored),
    }
    if empty:
        # Chroma rejects empty lists; remember them so the document reads back as given.
        internal[EMPTY_LISTS] = json.dumps(empty)
    return [
        Record(
            id=chunk_id(doc_id, i),
            text=chunk.text,
            metadata={**stored, **internal, CHUNK: i, START: chunk.start},
        )
        for i, chunk in enumerate(chunks)
    ]


def user_metadata(stored: dict[str, Any] | None) -> dict[str, Any] | None:
    """The metadata as the user gave it, keys in sorted order: internal fields off, empty
    lists back. (Chroma gives keys back in another order on each run: an export of an
    unchanged store differed byte for byte from the last.)"""
    if not stored:
        return None
    metadata = {
        key: value
        for key, value in stored.items()
        if not key.startswith(RESERVED_PREFIX) and not key.startswith(TWIN_PREFIX)
    }
    for key in json.loads(stored.get(EMPTY_LISTS, "[]")):
        metadata[key] = []
    return dict(sorted(metadata.items())) or None


def assemble(records: Iterable[Record]) -> Document:
    """One document from all of its chunk records (any order)."""
    ordered = sorted(records, key=lambda record: record.chunk)
    head = ordered[0]
    text = join([Chunk(int(r.metadata[START]), r.text) for r in ordered])
    return Document(
        id=head.doc_id, text=text, metadata=user_metadata(head.metadata), chunks=len(ordered)
    )
