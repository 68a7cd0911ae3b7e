"""Keyword and hybrid retrieval: BM25 candidates, their cosine scores, and rank fusion.

Whatever the mode, a hit's `score` is the cosine similarity of the query with the chunk shown,
so the similarity threshold means the same thing everywhere; `keyword` is the BM25 score and
`fused` the fusion score that orders hybrid results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from kb.filters import CompiledFilter
from kb.records import CHUNKS, Record
from kb.store import KnowledgeStore

RRF_K = 60  # the constant of Cormack et al.'s reciprocal rank fusion
DENSE_WEIGHT = 0.5  # score fusion: the dense side's share after min-max normalization


@dataclass(frozen=True)
class Hit:
    """A document's best chunk for one query."""

    record: Record
    score: float  # cosine similarity of the query with this chunk
    keyword: float | None = None  # BM25 of this document's best chunk, when it has one
    fused: float | None = None  # hybrid ordering score

    @property
    def chunked(self) -> bool:
        return int(self.record.metadata.get(CHUNKS, 1)) > 1


def keyword_documents(
    store: KnowledgeStore, text: str, vector: np.ndarray, depth: int, flt: CompiledFilter
) -> list[Hit]:
    """Up to `depth` documents by BM25 (best chunk each), with their cosine scores."""
    filtered = flt.where is not None or flt.where_document is not None
    allowed = set(store.records.ids(flt)) if filtered else None
    best: dict[str, tuple[str, float]] = {}
    for record_id, doc_id, score in store.keyword.search(text, depth * 3, allowed):
        best.setdefault(doc_id, (record_id, score))
        if len(best) >= depth:
            break
    records = {
        r.id: r for r in store.records.get([rid for rid, _ in best.values()], embeddings=True)
    }
    hits = []
    for record_id, score in best.values():
        record = records.get(record_id)
        if record is not None:  # deleted since the index saw it
            cosine = float(np.dot(np.asarray(record.embedding, dtype=np.float32), vector))
            hits.append(Hit(Record(record.id, record.text, record.metadata), cosine, score))
    return hits


def fuse(dense: Sequence[Hit], keyword: Sequence[Hit], method: str) -> list[Hit]:
    """One ranking from both sides, best first; a document in both keeps its dense chunk."""
    by_doc = {hit.record.doc_id: hit for hit in keyword}
    by_doc.update({hit.record.doc_id: hit for hit in dense})
    bm25 = {hit.record.doc_id: hit.keyword for hit in keyword}
    if method == "rrf":
        fused = _rrf([[h.record.doc_id for h in dense], [h.record.doc_id for h in keyword]])
    else:
        fused = _score_fusion(
            {h.record.doc_id: h.score for h in dense},
            {h.record.doc_id: h.keyword or 0.0 for h in keyword},
        )
    merged = [
        replace(by_doc[doc_id], keyword=bm25.get(doc_id), fused=value)
        for doc_id, value in fused.items()
    ]
    return sorted(merged, key=lambda hit: hit.fused or 0.0, reverse=True)


def _rrf(rankings: Sequence[Sequence[str]]) -> dict[str, float]:
    fused: dict[str, float] = {}
    for ranking in rankings:
        for rank, doc_id in enumerate(ranking, start=1):
            fused[doc_id] = fused.get(doc_id, 0.0) + 1.0 / (RRF_K + rank)
    return fused


def _score_fusion(dense: dict[str, float], keyword: dict[str, float]) -> dict[str, float]:
    """Min-max normalize each side over its candidates; a side that lacks a document adds 0."""
    left, right = _minmax(dense), _minmax(keyword)
    return {
        doc_id: DENSE_WEIGHT * left.get(doc_id, 0.0) + (1 - DENSE_WEIGHT) * right.get(doc_id, 0.0)
        for doc_id in {*dense, *keyword}
    }


def _minmax(scores: dict[str, float]) -> dict[str, float]:
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    span = high - low
    return {k: (v - low) / span if span else 1.0 for k, v in scores.items()}
