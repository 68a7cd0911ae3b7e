"""The query pipeline: filters, nearest chunks, grouping by document, similarity threshold."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from kb.answer_budget import AnswerBudget
from kb.collection import CALIBRATED_KEY
from kb.config import Settings
from kb.diversity import mmr
from kb.errors import ValidationFailed, field_error
from kb.filters import CompiledFilter, FilterLimits, compile_filter
from kb.hybrid import fuse, in_memory, keyword_documents
from kb.keyword import MAX_TERMS, distinct_terms
from kb.mirror import Mirror
from kb.ranking import Hit, Ranking, best_scored, widen
from kb.records import Record, user_metadata
from kb.schemas import Document, Match, QueryRequest, QueryResult, QueryStatus, Threshold
from kb.shown import rank_and_fetch
from kb.store import KnowledgeStore
from kb.unread import Unread, unread

POOL_FACTOR = 4  # diversify: MMR picks top_k from the best POOL_FACTOR x top_k documents


def ranking_depth(settings: Settings, top_k: int) -> int:
    """How many documents a side a keyword or hybrid search for top_k ranks (at least
    KB_HYBRID_DEPTH), which the threshold then picks from; dense order does not depend on
    it. `kb eval` and `kb calibrate` ask as deep as the service looks."""
    return max(top_k, settings.hybrid_depth)


def resolve_threshold(store: KnowledgeStore, requested: float | None) -> Threshold:
    """The minimum score for a query, and where it came from."""
    if requested is not None:
        return Threshold(min_score=requested, source="request")
    calibrated = store.records.settings_value(CALIBRATED_KEY)
    if isinstance(calibrated, int | float):
        return Threshold(min_score=float(calibrated), source="calibrated")
    return Threshold(min_score=store.settings.min_score, source="configured")


@dataclass(frozen=True)
class Asked:
    """One request's queries, embedded, with what every step of the pipeline reads (kb.shown
    ranks them with `_ranked`, again while documents are rewritten under it, and fetches
    what the results show)."""

    store: KnowledgeStore
    request: QueryRequest
    texts: Sequence[str]
    vectors: np.ndarray
    min_score: float
    flt: CompiledFilter  # the filters, a text filter decided per document (by_document)

    @property
    def mode(self) -> str:
        return self.request.mode or self.store.settings.search_mode


def search(
    store: KnowledgeStore, request: QueryRequest, answer_bytes: int | None = None
) -> list[QueryResult]:
    """Run every query of the request through the same pipeline; one result each. A text
    asked twice is searched once and its result shown twice (a batch's queries share every
    other field). `answer_bytes` (KB_MAX_ANSWER_BYTES) bounds the answer's texts and
    metadata: past it a 422, raised as they are read and the matches made."""
    mode = request.mode or store.settings.search_mode
    if request.fusion is not None and mode != "hybrid":
        # the request's own mode is checked with its fields; KB_SEARCH_MODE only here
        problem = f"applies only to hybrid search, not mode '{mode}' (KB_SEARCH_MODE)"
        raise ValidationFailed(f"fusion: {problem}", details=[field_error("fusion", problem)])
    limits = FilterLimits.of(store.settings)
    flt = compile_filter(request.filters, request.where, request.where_document, limits)
    filtered = flt.where is not None or flt.where_document is not None
    top_k = request.top_k or store.settings.top_k
    # once per request (and per new ranking): apply the writes (and settings) the local
    # copies have not seen
    store.replica.catch_up()
    threshold = resolve_threshold(store, request.min_score)
    min_score = threshold.min_score
    times = Counter(request.texts())  # each text's count, in the order first asked
    texts = list(times)
    batch = len(request.queries) if request.queries is not None else None
    vectors = store.embedder.embed_queries(texts)
    asked = Asked(store, request, texts, vectors, min_score, flt)
    cut = {text: unread(store.embedder, text, asked.mode) for text in texts}
    shown = rank_and_fetch(
        asked, _ranked, top_k, [times[text] for text in texts], answer_bytes, batch
    )
    full, budget = shown.full, shown.budget
    results = {
        text: _result(
            text,
            ranking,
            shows,
            threshold,
            full,
            request.explain,
            _no_candidates(store, asked.mode, text, vector, shown.passing, filtered)
            if not ranking.candidates
            else None,
            budget,
            times[text],
            cut[text],
        )
        for text, vector, ranking, shows in zip(
            texts, vectors, shown.rankings, shown.showing, strict=True
        )
    }
    return [results[text] for text in request.texts()]


def _ranked(asked: Asked, top_k: int) -> list[Ranking]:
    """Each query's reading of its ranking by the request's mode, or (`diversify`) MMR's
    choice of top_k among the best POOL_FACTOR x top_k passing the threshold; the counts
    and near misses stay those of the top_k reading (so lambda 1 answers as no diversify,
    in keyword and hybrid mode while POOL_FACTOR x top_k is within KB_HYBRID_DEPTH: a deeper
    pool ranks more documents a side)."""
    if not asked.request.diversify:
        return candidates(asked, top_k)
    size = top_k * POOL_FACTOR
    lam = asked.request.mmr_lambda
    chosen = []
    for vector, pool in zip(asked.vectors, candidates(asked, size), strict=True):
        reading = _top_k_of_dense(pool, top_k) if asked.mode == "dense" else pool
        picked = mmr(asked.store, vector, pool.matches, top_k, lam, asked.mode)
        chosen.append(replace(reading, matches=picked, misses=reading.misses[:top_k]))
    return chosen


def _top_k_of_dense(pool: Ranking, top_k: int) -> Ranking:
    """A dense pool read as its first top_k: in cosine order the passing come first, then
    the best-scored rejected (the pool's first misses)."""
    candidates = min(top_k, pool.candidates)
    rejected = candidates - min(len(pool.matches), candidates)
    return Ranking(pool.matches[:top_k], candidates, rejected, pool.misses[:rejected])


def candidates(asked: Asked, top_k: int) -> list[Ranking]:
    """Each query's ranking by the request's mode, read for top_k matches: dense order is
    cosine order, so its top_k are its candidates; keyword and hybrid rank KB_HYBRID_DEPTH
    documents a side, and the threshold picks the top_k passing among them."""
    store, texts, vectors, flt = asked.store, asked.texts, asked.vectors, asked.flt
    min_score = asked.min_score
    if asked.mode == "dense":
        dense = nearest_documents(store, vectors, top_k, flt)
        return [Ranking.of(hits[:top_k], top_k, min_score) for hits in dense]
    depth = ranking_depth(store.settings, top_k)
    fusion = asked.request.fusion or store.settings.fusion
    mirror = _in_memory(store, flt)
    if asked.mode == "hybrid" and mirror is not None:
        where = mirror.filtered(flt)
        return [
            in_memory(mirror, text, vector, depth, where, fusion, top_k, min_score)
            for text, vector in zip(texts, vectors, strict=True)
        ]
    keyword = [
        keyword_documents(store, text, vector, depth, flt)
        for text, vector in zip(texts, vectors, strict=True)
    ]
    if asked.mode == "keyword":
        return [Ranking.of(hits, top_k, min_score) for hits in keyword]
    # Fusion needs only ids and scores: no texts. Each side is cut to the same depth as the
    # mirror's (the widened read may hold more), or score fusion normalizes over another set.
    dense = nearest_documents(store, vectors, depth, flt, texts=False)
    fused = [fuse(d[:depth], k, fusion) for d, k in zip(dense, keyword, strict=True)]
    return [Ranking.of(hits, top_k, min_score) for hits in fused]


def _in_memory(store: KnowledgeStore, flt: CompiledFilter) -> Mirror | None:
    """The mirror, when a dense search with this filter can run on it alone: it can answer
    the filter, and (unfiltered) its vector index is built or not needed."""
    mirror = store.replica.mirror_for(flt)
    if mirror is None:
        return None
    filtered = flt.where is not None or flt.text_rows is not None
    return mirror if filtered or mirror.searches_all else None


def nearest_documents(
    store: KnowledgeStore,
    vectors: np.ndarray,
    top_k: int,
    flt: CompiledFilter,
    *,
    texts: bool = True,
) -> list[list[Hit]]:
    """For each vector, at least top_k distinct documents (if there are that many), best first.

    Chroma returns chunks; several may belong to one document, so ask for more than top_k and
    widen the search until top_k documents are found or the candidates run out.
    Without `texts`, hits carry ids, metadata and scores only (`complete` fetches the rest).
    """
    mirror = store.replica.mirror_for(flt)
    selected = mirror.filtered(flt) if mirror is not None else None
    mask, key = selected if selected is not None else (None, None)
    # until the mirror's index is built, an unfiltered search asks Chroma's for ids
    ids_from_chroma = mirror is not None and mask is None and not mirror.searches_all
    from_chroma = mirror is None or ids_from_chroma  # the mirror answers a tie whole
    texts = texts and mirror is None

    def read(n: int) -> list[tuple[list[Hit], int, int]]:
        if mirror is None:
            raw = store.records.nearest(vectors, n, flt, texts=texts)
        elif ids_from_chroma:
            raw = [mirror.records(hits) for hits in store.records.nearest_ids(vectors, n)]
        else:  # the mirror's index, or an exact search over its rows
            raw = [mirror.nearest(vector, n, mask, key) for vector in vectors]
        grouped = [_best_per_document(hits, texts) for hits in raw]
        return [
            (hits, _settled(hits, chunks, n, top_k) if from_chroma else len(hits), len(chunks))
            for hits, chunks in zip(grouped, raw, strict=True)
        ]

    return widen(read, top_k)


def _settled(
    hits: Sequence[Hit], chunks: Sequence[tuple[Record, float]], n: int, top_k: int
) -> int:
    """How many documents a read of n chunks from Chroma holds for sure: all of them, unless
    the read was full and its last chunk ties with the top_k-th document; then only those
    scoring above that tie, since more of it may lie beyond the read and ties go by id."""
    if len(chunks) < n or len(hits) < top_k:
        return len(hits)
    last = min(score for _, score in chunks)
    if hits[top_k - 1].score > last:
        return len(hits)
    return sum(hit.score > last for hit in hits)


def _best_per_document(hits: Sequence[tuple[Record, float]], texts: bool) -> list[Hit]:
    best: dict[str, Hit] = {}
    for record, score in hits:
        doc_id = record.doc_id
        if doc_id not in best:
            best[doc_id] = Hit(record, score, complete=texts)
    # equal scores (identical texts) by id: the order is the same on every search path
    return best_scored(best.values(), len(best))


def _matches(
    hits: list[Hit], full: dict[str, Document], budget: AnswerBudget, times: int
) -> list[Match]:
    """The hits as matches, each counted in the budget (`times` in the answer) as it is
    made; a chunked one written or gone since it was ranked is left out."""
    matches = []
    for hit in hits:
        if hit.chunked and hit.record.doc_id not in full:
            continue
        match = Match(
            id=hit.record.doc_id,
            score=hit.score,
            text=full[hit.record.doc_id].text if hit.chunked else hit.record.text,
            metadata=user_metadata(hit.record.metadata),
            passage=hit.record.text if hit.chunked else None,
            keyword_score=hit.keyword,
            fused_score=hit.fused,
        )
        budget.charge(times, match.id, match.text, match.metadata, match.passage)
        matches.append(match)
    return matches


def _result(
    query: str,
    ranking: Ranking,
    shows: list[Hit],
    threshold: Threshold,
    full: dict[str, Document],
    explain: bool,
    nothing: tuple[QueryStatus, str] | None,
    budget: AnswerBudget,
    times: int,
    cut: Unread | None,
) -> QueryResult:
    """The query's answer from the reading of its ranking and the hits fetched to be shown
    (`shows`: its matches, then with explain its near misses); `nothing` says why there was
    no candidate; `cut`, what the search left unread of it (its message then says so). The
    answer shows it `times`, each counted in the budget."""
    budget.charge(times, query)
    min_score = threshold.min_score
    matches = _matches([hit for hit in shows if hit.score >= min_score], full, budget, times)
    best_rejected = ranking.best_rejected
    if not matches and best_rejected is None:  # every match written or deleted meanwhile
        nothing = nothing or (
            "no_candidates",
            "The documents found were changed or deleted while the search ran.",
        )
    status, message = nothing or _verdict(matches, best_rejected, threshold)
    if cut is not None and (said := cut.sentence(status == "no_keyword_match")):
        message = f"{message} {said}"
    near = [hit for hit in shows if hit.score < min_score]
    return QueryResult(
        query=query,
        status=status,
        message=message,
        matches=matches,
        threshold=threshold,
        candidates=ranking.candidates,
        rejected=ranking.rejected,
        best_rejected_score=best_rejected,
        near_misses=_matches(near, full, budget, times) if explain else None,
        truncated=cut is not None,
    )


def _no_candidates(
    store: KnowledgeStore,
    mode: str,
    text: str,
    vector: np.ndarray,
    flt: CompiledFilter | None,
    filtered: bool,
) -> tuple[QueryStatus, str]:
    """Why a query found no candidate: a keyword search that found none of its terms in the
    documents the filters allow (if any: one dense look finds out), no document passing the
    filters, or an empty store. `flt` is None when no document passes its text filter.
    With filters, the keyword messages speak of the documents passing them: "No document
    contains" was said though one outside the filters did (review helper 99)."""
    if mode == "keyword" and flt is not None and nearest_documents(store, vector[None], 1, flt)[0]:
        none = "No document passing the filters contains" if filtered else "No document contains"
        terms = len(distinct_terms(text))
        if not terms:
            return "no_keyword_match", (
                "The query has no searchable terms: keyword search ignores punctuation and "
                "English stop words such as 'the', 'of' and 'and'."
            )
        if terms > MAX_TERMS:
            return "no_keyword_match", (
                f"{none} any of the query's first {MAX_TERMS} terms (it has "
                f"{terms}; keyword search reads the first {MAX_TERMS} distinct words that "
                "are not stop words)."
            )
        return "no_keyword_match", f"{none} any of the query's terms."
    if filtered:
        return "no_candidates", "No document matches the filters."
    return "no_candidates", "The knowledge base is empty."


def _verdict(
    matches: list[Match], best_rejected: float | None, threshold: Threshold
) -> tuple[QueryStatus, str]:
    limit = threshold_text(threshold.min_score)
    if not matches:
        assert best_rejected is not None  # else there was no candidate (`_result`)
        best = _below_text(best_rejected, threshold.min_score)
        return "no_confident_match", (
            f"No confident match: the best score, {best}, is below the threshold "
            f"{limit} ({threshold.source}). Nothing in the knowledge base "
            "answers this closely enough."
        )
    return "ok", f"{len(matches)} match(es) scored at least {limit}."


def threshold_text(value: float) -> str:
    """A threshold as the search page writes it: two decimals when they are exact, else all
    its digits (0.5645 written 0.56 said a score of 0.564 was below it)."""
    value += 0.0  # -0.0 as 0.00
    short = f"{value:.2f}"
    return short if float(short) == value else repr(value)


def _below_text(score: float, threshold: float) -> str:
    """A score below the threshold in three decimals, or as many more as keep it below (0.5649
    in three is 0.565: not below a threshold of 0.565)."""
    for digits in range(3, 18):
        text = f"{score + 0.0:.{digits}f}"
        if float(text) < threshold:
            return text
    return repr(score)
