"""Near-duplicate detection: documents whose first chunks are almost the same vector."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kb.collection import RecordCollection
from kb.filters import CompiledFilter
from kb.records import HEADS, Record

FIRST_CHUNKS = CompiledFilter(where=HEADS)
BATCH = 256
NEIGHBOURS = 4


def nearest_stored(
    records: RecordCollection, new: Sequence[Record], min_score: float
) -> dict[str, tuple[str, float]]:
    """For each new document (by its chunk-0 record), the most similar other stored document
    scoring at least `min_score`: new id -> (existing id, score)."""
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
    for head, hits in zip(heads, nearest, strict=True):
        for other_id, score in hits:
            other = stored.get(other_id)
            if score < min_score or other is None:
                continue
            if other.chunk == 0 and other.doc_id != head.doc_id:
                found[head.doc_id] = (other.doc_id, score)
                break
    return found


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
        for head, hits in zip(
            batch, records.nearest(vectors, neighbours + 1, FIRST_CHUNKS), strict=True
        ):
            for other, score in hits:
                if other.doc_id != head.doc_id and score >= min_score:
                    parent[root(other.doc_id)] = root(head.doc_id)
    members: dict[str, list[str]] = {}
    for doc in parent:
        members.setdefault(root(doc), []).append(doc)
    return sorted((sorted(m) for m in members.values() if len(m) > 1), key=lambda g: g[0])
