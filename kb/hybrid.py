"""Keyword and hybrid retrieval: BM25 candidates, their cosine scores, and rank fusion.

Whatever the mode, a hit's `score` is the cosine similarity of the query with the chunk shown,
so the similarity threshold means the same thing everywhere; `keyword` is the BM25 score and
`fused` the fusion score that orders hybrid results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TypeVar

import numpy as np

from kb import fusion
from kb.filters import CompiledFilter
from kb.keyword import query_tokens
from kb.mirror import Mirror
from kb.ranking import Hit, Ranking, best_scored, cosines, widen
from kb.records import DOC, HASH, Record
from kb.store import KnowledgeStore

T = TypeVar("T")


def keyword_documents(
    store: KnowledgeStore, text: str, vector: np.ndarray, depth: int, flt: CompiledFilter
) -> list[Hit]:
    """Up to `depth` documents by BM25 (best chunk each), with their cosine scores.

    From the in-memory BM25 when the mirror is current (a metadata filter is its mask), else
    from SQLite FTS5 (a filter then lists the ids it allows). Both keep each chunk's vector,
    so no record is fetched here: the hits are ids and scores, and search fetches the few it
    shows.
    """
    mirror = store.replica.mirror_for(flt)
    if mirror is not None:
        selected = mirror.filtered(flt)
        mask = selected[0] if selected is not None else None
        rows, bm25, _, row_cosines = _keyword_rows(mirror, text, vector, depth, mask)
        # each row's metadata carries the version ranked, which `complete` checks
        ranked = [
            (mirror.record(row), score)
            for row, score in zip(rows.tolist(), bm25.tolist(), strict=True)
        ]
        shown = row_cosines.tolist()
    else:
        chosen = _fts_documents(store, text, depth, flt)
        ranked = [(Record(rid, "", {DOC: doc_id}), score) for rid, doc_id, score, _ in chosen]
        vectors = np.stack([v for *_, v in chosen]) if chosen else np.zeros((0, len(vector)))
        shown = cosines(vectors, vector).tolist()
    hits = [
        Hit(record, cosine, keyword, complete=False)
        for (record, keyword), cosine in zip(ranked, shown, strict=True)
    ]
    # equal BM25 scores by id: FTS5 and the mirror list ties in different orders
    return sorted(hits, key=lambda hit: (-(hit.keyword or 0.0), hit.record.doc_id))


def _fts_documents(
    store: KnowledgeStore, text: str, depth: int, flt: CompiledFilter
) -> list[tuple[str, str, float, np.ndarray]]:
    """FTS5's side: up to `depth` documents' best chunks (id, document, BM25, vector)."""
    allowed = _allowed(store, flt)  # once: it may list the filter's ids from Chroma

    def search(n: int) -> list[tuple[list[tuple[str, str, float, np.ndarray]], int, int]]:
        hits = store.keyword.search(text, n, allowed)
        chosen = _best_per_document(
            [(h.record_id, h.doc_id, h.score, h.vector) for h in hits], depth
        )
        return [(chosen, len(chosen), len(hits))]

    return widen(search, depth)[0]


def _keyword_rows(
    mirror: Mirror, text: str, vector: np.ndarray, depth: int, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The mirror's BM25 side: up to `depth` documents' best rows, their BM25 scores, their
    document numbers and their cosine scores with `vector`, best first."""
    terms = query_tokens(text)

    def search(n: int) -> list[tuple[tuple[np.ndarray, np.ndarray, np.ndarray], int, int]]:
        ranked = mirror.keyword(terms, n, mask)
        first = mirror.first_per_document(*ranked, depth)
        return [(first, len(first[0]), len(ranked[0]))]

    ((rows, bm25, docs),) = widen(search, depth)
    return rows, bm25, docs, mirror.cosines(rows, vector)


def _dense_rows(
    mirror: Mirror, vector: np.ndarray, depth: int, mask: np.ndarray | None, key: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mirror's dense side: up to `depth` documents' best rows, their cosine scores and
    their document numbers, best first."""

    def search(n: int) -> list[tuple[tuple[np.ndarray, np.ndarray, np.ndarray], int, int]]:
        rows, scores = mirror.nearest_rows(vector, n, mask, key)
        first = mirror.first_per_document(rows, scores, depth)
        return [(first, len(first[0]), len(rows))]

    # one chunk a document first: each row more costs every query (the index re-ranks twice
    # as many candidates: +0.2 ms of 1.3 at 100k for 300 rows, not 100), and a second pass
    # only the queries whose top rows hold several chunks of one document
    return widen(search, depth, first=depth)[0]


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
    mirror = store.replica.mirror_for(flt)
    if mirror is None:
        if flt.where is None and flt.where_document is None:
            return None
        return set(store.records.ids(flt)).__contains__
    selected = mirror.filtered(flt)
    if selected is None:
        return None
    mask = selected[0]

    def allowed(record_id: str) -> bool:
        row = mirror.row(record_id)
        return row is not None and row < len(mask) and bool(mask[row])

    return allowed


def fuse(dense: Sequence[Hit], keyword: Sequence[Hit], method: str) -> list[Hit]:
    """One ranking from both sides' hits (each in (score, id) order), best first; a document
    in both keeps its dense chunk."""
    fused = fusion.fuse(
        np.array([hit.record.doc_id for hit in dense], dtype=str),
        np.array([hit.score for hit in dense]),
        np.array([hit.record.doc_id for hit in keyword], dtype=str),
        np.array([hit.keyword or 0.0 for hit in keyword]),
        method,
        shown=np.array([hit.score for hit in [*dense, *keyword]]),
    )
    merged = []
    for value, at_dense, at_keyword in zip(
        fused.values.tolist(), fused.dense.tolist(), fused.keyword.tolist(), strict=True
    ):
        hit = dense[at_dense] if at_dense >= 0 else keyword[at_keyword]
        bm25 = keyword[at_keyword].keyword if at_keyword >= 0 else None
        merged.append(Hit(hit.record, hit.score, bm25, value, hit.complete))
    return merged


def in_memory(
    mirror: Mirror,
    text: str,
    vector: np.ndarray,
    depth: int,
    where: tuple[np.ndarray, str | None] | None,
    method: str,
    top_k: int,
    min_score: float,
) -> Ranking:
    """Hybrid search on the mirror's rows: both sides and their fusion are array operations,
    and hits are made only for the documents a result takes (its matches and near misses;
    `complete` fetches their texts). `where` is the filters' mask and key (Mirror.filtered)."""
    mask, key = where if where is not None else (None, None)
    dense_rows, dense_scores, dense_docs = _dense_rows(mirror, vector, depth, mask, key)
    keyword_rows, bm25, keyword_docs, keyword_cosines = _keyword_rows(
        mirror, text, vector, depth, mask
    )
    # equal fusion values in id order, not in insertion order (the document numbers'), as on
    # Chroma's path; ids are looked up only where there is a tie (RRF ranks a side's equal
    # scores alike, so the order of a tie within a side changes nothing)
    fused = fusion.fuse(
        dense_docs,
        dense_scores,
        keyword_docs,
        bm25,
        method,
        shown=np.concatenate([dense_scores, keyword_cosines]),
        names=mirror.doc_ids_of,
    )
    in_dense = fused.dense >= 0  # a document on both sides shows its dense chunk
    shown = np.empty(len(fused.values))
    shown[in_dense] = dense_scores[fused.dense[in_dense]]
    shown[~in_dense] = keyword_cosines[fused.keyword[~in_dense]]
    # the top_k best-ranked passing the threshold, and the top_k best-scored below it (with
    # any tied at the cut: ties go by id) are the only documents made into hits
    passing = np.flatnonzero(shown >= min_score)[:top_k]
    below = np.flatnonzero(shown < min_score)
    if len(below) > top_k:
        kth = np.partition(shown[below], len(below) - top_k)[len(below) - top_k]
        below_best = below[shown[below] >= kth]
    else:
        below_best = below

    def hit(at: int) -> Hit:
        at_dense, at_keyword = int(fused.dense[at]), int(fused.keyword[at])
        if at_dense >= 0:
            row, score = int(dense_rows[at_dense]), float(dense_scores[at_dense])
        else:
            row, score = int(keyword_rows[at_keyword]), float(keyword_cosines[at_keyword])
        keyword_score = float(bm25[at_keyword]) if at_keyword >= 0 else None
        value = float(fused.values[at])
        return Hit(mirror.record(row), score, keyword_score, value, complete=False)

    return Ranking(
        [hit(at) for at in passing.tolist()],
        len(shown),
        len(below),
        best_scored([hit(at) for at in below_best.tolist()], top_k),
    )


def complete(
    store: KnowledgeStore, per_query: Sequence[Sequence[Hit]], flt: CompiledFilter
) -> list[list[Hit]]:
    """The hits with their records' text and metadata, fetched in one call for all queries.
    A hit whose record is gone since the search, or is now of another version of its
    document than the one ranked (a write landed in between: its metadata may fail the
    filters, its text not be the one scored), is dropped (search ranks again when one was
    rewritten: `rewritten`). `flt` is the search's filter."""
    fetched = [h for hits in per_query for h in hits if not h.complete]
    wanted = list(dict.fromkeys(h.record.id for h in fetched))
    # FTS5's hits (ranked before the mirror was loaded) carry no version: they are read
    # from Chroma through the filter, even if the mirror has been loaded since
    versionless = any(HASH not in h.record.metadata for h in fetched)
    records = _records(store, wanted, flt, versionless) if wanted else {}
    return [
        [
            hit if hit.complete else replace(hit, record=records[hit.record.id], complete=True)
            for hit in hits
            if hit.complete or _same_version(hit.record, records.get(hit.record.id))
        ]
        for hits in per_query
    ]


def rewritten(store: KnowledgeStore, ranked: Sequence[Record]) -> bool:
    """Whether any of these records, ranked and then not found as ranked, is of a document
    still stored as another version (written between the ranking and the fetch): a new
    ranking finds it. False when each was deleted, or is still of the version ranked (a
    damaged document, left out of reads: a new ranking would lose it again; one whose
    ranked chunk is of another version than its first chunk looked rewritten, and each
    search that reached it through that chunk ranked three times: review helper 98)."""
    ranked = [record for record in ranked if not store.is_damaged(record.doc_id)]
    if not ranked:
        return False
    heads = _records(store, [record.doc_id for record in ranked], CompiledFilter(), False)
    return any(
        (head := heads.get(record.doc_id)) is not None
        and (HASH not in record.metadata or head.metadata.get(HASH) != record.metadata[HASH])
        for record in ranked
    )


def _same_version(ranked: Record, fetched: Record | None) -> bool:
    """Whether a record fetched after the ranking is of the version ranked (the content hash
    every chunk carries). FTS5's hits carry no version: any record of theirs is taken."""
    if fetched is None:
        return False
    version = ranked.metadata.get(HASH)
    return version is None or fetched.metadata.get(HASH) == version


def _records(
    store: KnowledgeStore, ids: Sequence[str], flt: CompiledFilter, versionless: bool
) -> dict[str, Record]:
    """Records by id: from the mirror when it is current (no trip to Chroma or SQLite on a
    search), else, or for `versionless` hits, from Chroma, those passing the filter's
    metadata part (a version cannot be checked)."""
    mirror = None if versionless else store.replica.current_mirror()
    if mirror is None:
        return {r.id: r for r in store.records.get(ids, CompiledFilter(where=flt.where))}
    return {record.id: record for record, _ in mirror.records([(i, 0.0) for i in ids], True)}
