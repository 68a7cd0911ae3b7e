"""Near-duplicate detection: documents whose chunks are almost the same vectors, one by one
(found through their first chunks)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Set

import numpy as np

from kb.collection import RecordCollection
from kb.filters import CompiledFilter
from kb.records import CHUNKS, HEADS, Record, chunk_id

FIRST_CHUNKS = CompiledFilter(where=HEADS)
BATCH = 256
NEIGHBOURS = 4


def nearest_stored(
    records: RecordCollection,
    new: Sequence[Record],
    min_score: float,
    replaced: Set[str] = frozenset(),
) -> dict[str, tuple[str, float]]:
    """For each new document (by its chunk-0 record), the most similar other stored document
    scoring at least `min_score`: new id -> (existing id, score), compared whole (`_confirmed`:
    a shared preamble does not make two documents duplicates). Documents in `replaced` are
    being rewritten by the same write, so their stored text is no match."""
    heads = [r for r in new if r.chunk == 0]
    if not heads or not records.count():
        return {}
    found: dict[str, tuple[str, float]] = {}
    vectors = np.asarray([r.embedding for r in heads], dtype=np.float32)
    # Unfiltered: a filter on chunk 0 matches nearly every record, and Chroma's filtered
    # search is slow when a filter matches many; a few extra neighbours cover later chunks.
    nearest = records.nearest_ids(vectors, NEIGHBOURS)
    close = {rid for hits in nearest for rid, score in hits if score >= min_score}
    stored = {r.id: r for r in records.get(sorted(close))} if close else {}
    pairs = [
        (head, other, score)
        for head, hits in zip(heads, nearest, strict=True)
        for other_id, score in hits
        if score >= min_score
        and (other := stored.get(other_id)) is not None
        and other.chunk == 0
        and other.doc_id != head.doc_id
        and other.doc_id not in replaced
    ]
    paired = {head.doc_id for head, _, _ in pairs}
    known = _vectors_by_chunk(r for r in new if r.doc_id in paired)  # not stored yet
    for head, other, score in _confirmed(pairs, records, min_score, known):
        if head.doc_id not in found or score > found[head.doc_id][1]:
            found[head.doc_id] = (other.doc_id, score)
    return found


Vectors = dict[str, dict[int, np.ndarray]]  # document id -> chunk number -> vector


def _confirmed(
    pairs: Sequence[tuple[Record, Record, float]],
    records: RecordCollection,
    min_score: float,
    known: Vectors,
) -> list[tuple[Record, Record, float]]:
    """The pairs of first chunks whose documents are near-duplicates compared whole: as many
    chunks each, and every chunk scoring `min_score` with its counterpart (the lowest score
    counts), so a shared preamble or footer around different bodies makes no duplicate.
    Chunks come from `known` or the store (pairs are rare: only candidates are fetched)."""
    alike = [(a, b, score) for a, b, score in pairs if _chunks(a) == _chunks(b)]
    chunked = {h.doc_id: h for a, b, _ in alike if _chunks(a) > 1 for h in (a, b)}
    vectors = _stored_chunks([h for d, h in chunked.items() if d not in known], records)
    vectors.update(known)
    kept = []
    for a, b, score in alike:
        for n in range(1, _chunks(a)):
            va, vb = vectors.get(a.doc_id, {}).get(n), vectors.get(b.doc_id, {}).get(n)
            if va is None or vb is None:  # deleted meanwhile
                score = -1.0
                break
            score = min(score, float(np.dot(va, vb)))
            if score < min_score:
                break
        if score >= min_score:
            kept.append((a, b, score))
    return kept


def _chunks(record: Record) -> int:
    return int(record.metadata.get(CHUNKS, 1))


def _stored_chunks(heads: Sequence[Record], records: RecordCollection) -> Vectors:
    """The stored later chunks' vectors of these documents."""
    ids = [chunk_id(head.doc_id, n) for head in heads for n in range(1, _chunks(head))]
    return _vectors_by_chunk(records.get(ids, embeddings=True) if ids else [])


def _vectors_by_chunk(found: Iterable[Record]) -> Vectors:
    vectors: Vectors = {}
    for record in found:
        vectors.setdefault(record.doc_id, {})[record.chunk] = np.asarray(record.embedding)
    return vectors


def groups(records: RecordCollection, min_score: float, neighbours: int = 5) -> list[list[str]]:
    """Groups of stored documents linked by near-duplicate pairs (each group sorted)."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for batch in records.pages(FIRST_CHUNKS, BATCH, embeddings=True):
        vectors = np.asarray([r.embedding for r in batch], dtype=np.float32)
        nearest = records.nearest(vectors, neighbours + 1, FIRST_CHUNKS)
        pairs = [
            (head, other, score)
            for head, hits in zip(batch, nearest, strict=True)
            for other, score in hits
            if other.doc_id != head.doc_id and score >= min_score
        ]
        for head, other, _ in _confirmed(pairs, records, min_score, {}):
            parent[root(other.doc_id)] = root(head.doc_id)
    members: dict[str, list[str]] = {}
    for doc in parent:
        members.setdefault(root(doc), []).append(doc)
    return sorted((sorted(m) for m in members.values() if len(m) > 1), key=lambda g: g[0])
