"""What a search's results show: each query's ranking, ranked again while documents it would
show are rewritten under it, and the hits and whole documents it shows, fetched after it and
counted in the answer budget (KB_MAX_ANSWER_BYTES). kb.search runs the pipeline around it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from kb.answer_budget import AnswerBudget
from kb.document_filter import by_document
from kb.filters import CompiledFilter
from kb.hybrid import complete, rewritten
from kb.mirror import Mirror
from kb.ranking import Hit, Ranking
from kb.records import Record
from kb.schemas import Document
from kb.store import KnowledgeStore

if TYPE_CHECKING:
    from kb.search import Asked

# whole documents read a call for chunked matches under an answer budget, each counted as it
# comes: the documents read past the budget are at most one such call's
FETCH_SLICE = 64
# rankings a search runs at most while documents it would show are rewritten under it
ATTEMPTS = 3


@dataclass(frozen=True)
class Shown:
    """The rankings a request's results read, and what they show, fetched."""

    passing: CompiledFilter | None  # the filters, a text filter decided (None: nothing passes)
    rankings: list[Ranking]
    showing: list[list[Hit]]  # each query's hits to show, complete
    full: dict[str, Document]  # the whole documents of the chunked ones
    budget: AnswerBudget  # what the answer has used of KB_MAX_ANSWER_BYTES so far


def rank_and_fetch(
    asked: Asked,
    rank: Callable[[Asked, int], list[Ranking]],
    top_k: int,
    times: list[int],
    answer_bytes: int | None,
    batch: int | None,
) -> Shown:
    """Each query's ranking by `rank` and what its result shows, fetched after it
    (`asked.flt`: the request's filters; `times`: how often the answer shows each query's
    result).
    A document written between the ranking and the fetch is dropped, never shown as the
    other version; when one was (not deleted: rewritten), all is ranked again, up to
    ATTEMPTS times in all. It was left out, so a search during a stream of upserts answered
    short, or no_candidates, though every document matched before and after (review helper
    90). So is a ranking on the mirror while a document under the filters was rewritten:
    one written after the filter's mask was decided was in neither version, and nothing was
    dropped (fixer 94). Only documents deleted meanwhile, or rewritten at every attempt, are
    missing."""
    store, request = asked.store, asked.request
    for attempt in range(1, ATTEMPTS + 1):
        if attempt > 1:
            store.replica.catch_up()  # the writes of other processes too, on a Chroma server
        last = attempt == ATTEMPTS
        mirror = store.replica.current_mirror()
        # noted before any mask is decided, on the mirror object even while it is not current
        # (a write under way): the ranking may run on it once that write is applied, and a
        # rewrite after its mask then went unseen (review helper 106)
        tracked = store.replica.mirror
        writes = tracked.writes if tracked is not None else 0
        # a text filter is decided per document, once for the batch: on the mirror, the rows
        # of the documents passing it; else a metadata filter listing them
        passing = by_document(asked.flt, store.records.ids, mirror)
        now = replace(asked, flt=passing if passing else asked.flt)
        none = Ranking([], 0, 0, [])
        rankings = rank(now, top_k) if passing is not None else [none for _ in asked.texts]
        if not last and tracked is not None and _rewritten(store, tracked, writes, asked):
            continue
        # only what a result shows is fetched: its matches, and with explain its near misses
        shown = [r.matches + (r.misses if request.explain else []) for r in rankings]
        showing = complete(store, shown, now.flt)
        if not last and rewritten(store, _dropped(shown, showing)):
            continue
        budget = AnswerBudget(answer_bytes, batch, len(asked.texts), top_k, request.explain)
        full = _whole_documents(store, showing, times, budget)
        torn = [h.record for hits in showing for h in hits if h.chunked]
        if last or not rewritten(store, [r for r in torn if r.doc_id not in full]):
            return Shown(passing, rankings, showing, full, budget)
    raise AssertionError("unreachable: the last attempt returns")


def _rewritten(store: KnowledgeStore, tracked: Mirror, writes: int, asked: Asked) -> bool:
    """Whether a document under the filters may have been rewritten while the search ranked:
    one was on the mirror noted before it, or that mirror was replaced (rebuilt)."""
    return store.replica.mirror is not tracked or tracked.rewritten_since(writes, asked.flt.where)


def _dropped(shown: list[list[Hit]], showing: list[list[Hit]]) -> list[Record]:
    """The records of the hits `complete` left out (written or deleted since the ranking):
    none, without a look, when every query kept all of its hits."""
    lost = []
    for before, after in zip(shown, showing, strict=True):
        if len(after) < len(before):
            kept = {hit.record.id for hit in after}
            lost += [hit.record for hit in before if hit.record.id not in kept]
    return lost


def _whole_documents(
    store: KnowledgeStore, showing: list[list[Hit]], times: list[int], budget: AnswerBudget
) -> dict[str, Document]:
    """The whole documents of the chunked hits shown (each query's `times` in the answer),
    for the batch in one call, or under a budget FETCH_SLICE documents a call, each counted
    as it comes (as many times as the answer shows it) after the texts already at hand: an
    answer past the budget is refused before the rest is read."""
    chunked: dict[str, tuple[Record, int]] = {}
    for hits, shown in zip(showing, times, strict=True):
        for hit in hits:
            if hit.chunked:
                counted = chunked.get(hit.record.doc_id, (hit.record, 0))[1]
                chunked[hit.record.doc_id] = (hit.record, counted + shown)
            else:
                budget.read(shown * len(hit.record.text))
    wanted = list(chunked.values())
    step = FETCH_SLICE if budget.limit is not None else max(len(wanted), 1)
    full: dict[str, Document] = {}
    for start in range(0, len(wanted), step):
        part = wanted[start : start + step]
        found = store.documents_of([record for record, _ in part])
        for record, shown in part:
            if (document := found.get(record.doc_id)) is not None:
                budget.read(shown * len(document.text))
        full.update(found)
    return full
