"""Keyword and hybrid retrieval: BM25 candidates, their cosine scores, and rank fusion.

Whatever the mode, a hit's `score` is the cosine similarity of the query with the chunk shown,
so the similarity threshold means the same thing everywhere; `keyword` is the BM25 score and
`fused` the fusion score that orders hybrid results.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from operator import itemgetter
from typing import TypeVar

import numpy as np

from kb.filters import CompiledFilter
from kb.keyword import query_tokens
from kb.records import CHUNKS, DOC, Record
from kb.store import KnowledgeStore

RRF_K = 60  # the constant of Cormack et al.'s reciprocal rank fusion
DENSE_WEIGHT = 0.5  # score fusion: the dense side's share after min-max normalization
T = TypeVar("T")


@dataclass(slots=True)
class Hit:
    """A document's best chunk for one query (never changed once made: `replace` makes a new
    one; not frozen, because a frozen dataclass is slower to build and a query builds
    hundreds)."""

    record: Record  # without text and user metadata while `complete` is False
    score: float  # cosine similarity of the query with this chunk
    keyword: float | None = None  # BM25 of this document's best chunk, when it has one
    fused: float | None = None  # hybrid ordering score
    complete: bool = True  # False: only the ids are known; search fetches what it shows

    @property
    def chunked(self) -> bool:
        return int(self.record.metadata.get(CHUNKS, 1)) > 1


def keyword_documents(
    store: KnowledgeStore, text: str, vector: np.ndarray, depth: int, flt: CompiledFilter
) -> list[Hit]:
    """Up to `depth` documents by BM25 (best chunk each), with their cosine scores.

    From the in-memory BM25 when the mirror is current (a metadata filter is its mask), else
    from SQLite FTS5 (a filter then lists the ids it allows). Both keep each chunk's vector,
    so no record is fetched here: the hits are ids and scores, and search fetches the few it
    shows.
    """
    mirror = store.replica.current_mirror() if flt.where_document is None else None
    if mirror is not None and store.replica.consistent():
        mask = mirror.matches(flt.where) if flt.where is not None else None
        ranked = mirror.keyword(query_tokens(text), depth * 2, mask)  # chunks: some share a doc
        chosen = _best_per_document(
            [(mirror.ids[row], mirror.metadata[row][DOC], score, row) for row, score in ranked],
            depth,
        )
        cosines = mirror.cosines([row for *_, row in chosen], vector)
    else:
        hits = store.keyword.search(text, depth * 2, _allowed(store, flt))
        chosen = _best_per_document(
            [(h.record_id, h.doc_id, h.score, h.vector) for h in hits], depth
        )
        cosines = (np.stack([v for *_, v in chosen]) @ vector).tolist() if chosen else []
    return [
        Hit(Record(record_id, "", {DOC: doc_id}), cosine, bm25, complete=False)
        for (record_id, doc_id, bm25, _), cosine in zip(chosen, cosines, strict=True)
    ]


def _best_per_document(
    ranked: Sequence[tuple[str, str, float, T]], depth: int
) -> list[tuple[str, str, float, T]]:
    """The first (best) chunk of each document in a ranking of (record id, document id,
    score, vector or row), up to `depth` documents."""
    best: dict[str, tuple[str, str, float, T]] = {}
    for found in ranked:
        if found[1] not in best:
            best[found[1]] = found
            if len(best) >= depth:
                break
    return list(best.values())


def _allowed(store: KnowledgeStore, flt: CompiledFilter) -> Callable[[str], bool] | None:
    """Which record ids the filter lets through (FTS5 path): from the mirror's mask when it
    can answer, else from the ids Chroma lists."""
    if flt.where is None and flt.where_document is None:
        return None
    mirror = store.replica.mirror_for(flt)
    if mirror is None:
        return set(store.records.ids(flt)).__contains__
    mask = mirror.matches(flt.where or {})

    def allowed(record_id: str) -> bool:
        row = mirror.row(record_id)
        return row is not None and row < len(mask) and bool(mask[row])

    return allowed


def fuse(
    dense: Sequence[Hit], keyword: Sequence[Hit], method: str, limit: int | None = None
) -> list[Hit]:
    """One ranking from both sides, best first (the best `limit` only, if given); a document
    in both keeps its dense chunk."""
    dense_ids = [hit.record.doc_id for hit in dense]
    keyword_ids = [hit.record.doc_id for hit in keyword]
    by_doc = dict(zip(keyword_ids, keyword, strict=True))
    by_doc.update(zip(dense_ids, dense, strict=True))
    bm25 = {doc_id: hit.keyword for doc_id, hit in zip(keyword_ids, keyword, strict=True)}
    if method == "rrf":
        fused = _rrf([dense_ids, keyword_ids])
    else:
        fused = _score_fusion(
            {doc_id: hit.score for doc_id, hit in zip(dense_ids, dense, strict=True)},
            {doc_id: hit.keyword or 0.0 for doc_id, hit in zip(keyword_ids, keyword, strict=True)},
        )
    # nlargest is sorted(..., reverse=True)[:n], ties included, without sorting the rest
    ranked = heapq.nlargest(len(fused) if limit is None else limit, fused.items(), itemgetter(1))
    merged = []
    for doc_id, value in ranked:
        hit = by_doc[doc_id]
        merged.append(Hit(hit.record, hit.score, bm25.get(doc_id), value, hit.complete))
    return merged


def complete(store: KnowledgeStore, per_query: Sequence[Sequence[Hit]]) -> list[list[Hit]]:
    """The hits with their records' text and metadata, fetched in one call for all queries;
    a hit whose record is gone since the search is dropped."""
    wanted = list(dict.fromkeys(h.record.id for hits in per_query for h in hits if not h.complete))
    records = _records(store, wanted) if wanted else {}
    return [
        [
            hit if hit.complete else replace(hit, record=records[hit.record.id], complete=True)
            for hit in hits
            if hit.complete or hit.record.id in records
        ]
        for hits in per_query
    ]


def _records(store: KnowledgeStore, ids: Sequence[str]) -> dict[str, Record]:
    """Records by id: from the mirror when it is current (no trip to Chroma or SQLite on a
    search), else from Chroma."""
    mirror = store.replica.current_mirror()
    if mirror is None:
        return {r.id: r for r in store.records.get(ids)}
    return {record.id: record for record, _ in mirror.records([(i, 0.0) for i in ids], True)}


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
