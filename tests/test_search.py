"""The query pipeline (kb.search) in every mode, on the mirror and as before it is loaded."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

from kb import collection, hybrid
from kb.config import Settings
from kb.embeddings import Embedder
from kb.fusion import RRF_K
from kb.schemas import DocumentIn, QueryRequest, QueryResult, UpdateFields
from kb.search import search
from kb.shown import ATTEMPTS
from kb.store import KnowledgeStore, WriteMode
from tests.conftest import changed

MODES = ["dense", "keyword", "hybrid"]


@pytest.fixture
def small_chunks(settings: Settings, embedder: Embedder) -> Iterator[KnowledgeStore]:
    """A store cutting texts into 16-token chunks: a few sentences make a chunked document."""
    store = KnowledgeStore.open(changed(settings, chunk_tokens=16, hybrid_depth=10), embedder)
    yield store
    store.close()


@contextmanager
def mirror_state(store: KnowledgeStore, loaded: bool) -> Iterator[None]:
    """Search on the loaded mirror, or as before it is loaded (Chroma and FTS5)."""
    store.replica.wait_loaded()
    mirror = store.replica.mirror
    assert mirror is not None
    if not loaded:
        store.replica.mirror = None
    try:
        yield
    finally:
        store.replica.mirror = mirror


def ask(store: KnowledgeStore, **body: Any) -> QueryResult:
    (result,) = search(store, QueryRequest.model_validate({"min_score": -1, **body}))
    return result


def ids(result: QueryResult) -> list[str]:
    return [match.id for match in result.matches]


@pytest.mark.parametrize("loaded", [True, False], ids=["mirror", "chroma"])
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_returns_top_k_documents_when_chunks_crowd_the_candidates(
    small_chunks: KnowledgeStore, mode: str, loaded: bool
) -> None:
    """Eight documents of many chunks each rank first on both sides; with top_k and the
    hybrid depth at 10, keyword and hybrid searches read 10 or 20 chunks, found those eight
    documents only, and answered fewer than top_k although sixteen documents match."""
    remark = "Overfitting: dropout and early stopping reduce overfitting of a model."
    long = [
        DocumentIn(id=f"long-{j}", text=" ".join([remark] * 6) + f" Variant {j}.") for j in range(8)
    ]
    short = [
        DocumentIn(id=f"short-{j}", text=f"Note {j}: boil pasta in salted water (overfitting).")
        for j in range(8)
    ]
    small_chunks.add([*long, *short])
    assert small_chunks.get("long-0").chunks > 4
    with mirror_state(small_chunks, loaded):
        result = ask(small_chunks, query="overfitting", mode=mode, top_k=10)
    assert len(result.matches) == 10 <= result.candidates  # hybrid ranks both sides: more
    assert {f"long-{j}" for j in range(8)} <= set(ids(result))


@pytest.mark.parametrize("mode", MODES)
def test_diversify_picks_from_the_best_four_times_top_k_documents(
    store: KnowledgeStore, mode: str
) -> None:
    """MMR over exactly the mode's best 4 x top_k documents; with pure diversity (lambda 0)
    a larger pool lets a far-ranked, unrelated document in."""
    texts = [f"Espresso brewing tip {i}: grind the coffee beans finely." for i in range(8)]
    texts += [
        "Coffee beans grow on shrubs in Ethiopia and Colombia.",
        "Coffee prices rose on the commodity markets this year.",
        "A coffee table made of oak wood for the living room.",
        "The coffee shop down the street hosts a chess club.",
    ]
    store.add([DocumentIn(id=f"doc-{i}", text=text) for i, text in enumerate(texts)])
    store.replica.wait_loaded()
    top_k, lam = 2, 0.0
    body = {"query": "how to brew espresso coffee", "mode": mode}
    pool = ask(store, **body, top_k=4 * top_k).matches
    assert len(pool) == 4 * top_k
    got = ask(store, **body, top_k=top_k, diversify=True, **{"lambda": lam})
    assert ids(got) == oracle_mmr(store, body["query"], [m.id for m in pool], top_k, lam)


@pytest.mark.parametrize("mode", MODES)
def test_diversify_with_lambda_one_answers_as_no_diversify(
    store: KnowledgeStore, seed_docs: list[DocumentIn], mode: str
) -> None:
    """Lambda 1 is relevance only. In dense mode the counts and near misses described MMR's
    4 x top_k pool: candidates 4 and a near miss where the plain search had none."""
    store.add(seed_docs[:60])
    for query in ("how do I stop my model overfitting", "best beaches in Portugal"):
        body = {"query": query, "mode": mode, "top_k": 2, "explain": True}
        plain, relevant = ask(store, **body), ask(store, **body, diversify=True, **{"lambda": 1})
        assert relevant.model_dump() == plain.model_dump()


@pytest.mark.parametrize("mode", MODES)
def test_diversify_weighs_the_modes_own_relevance(
    store: KnowledgeStore, seed_docs: list[DocumentIn], mode: str
) -> None:
    """MMR's relevance was the cosine in every mode: a diversified keyword or hybrid search
    was a dense one (lambda 0.999 re-sorted the pool by cosine, lambda 1 kept the mode's
    order; review helper 73, 66 of 66 seed queries). Lambda near 1 keeps the mode's order."""
    store.add(seed_docs)
    for query in ("how do I stop my model overfitting", "index a database table", "sourdough"):
        body = {"query": query, "mode": mode, "top_k": 5, "min_score": -1}
        plain, relevant = (
            ask(store, **body),
            ask(store, **body, diversify=True, **{"lambda": 0.999}),
        )
        assert ids(relevant) == ids(plain), query


def oracle_mmr(store: KnowledgeStore, query: str, pool: list[str], k: int, lam: float) -> list[str]:
    """Maximal marginal relevance, written out, over one-chunk documents' vectors."""
    found = {r.id: r.embedding for r in store.records.get(pool, embeddings=True)}
    vectors = np.array([found[doc] for doc in pool], dtype=np.float32)
    relevance = vectors @ store.embedder.embed_queries([query])[0]
    chosen: list[int] = []
    for _ in range(k):
        best, best_gain = -1, -np.inf
        for i in range(len(pool)):
            if i in chosen:
                continue
            closest = max((float(vectors[i] @ vectors[j]) for j in chosen), default=0.0)
            gain = lam * relevance[i] - (1 - lam) * closest
            if gain > best_gain:
                best, best_gain = i, gain
        chosen.append(best)
    return [pool[i] for i in chosen]


GAN_LAST = DocumentIn(
    id="long",
    text="Gradient descent trains the network. "
    + " ".join(f"Step {i} cooks pasta in tomato sauce." for i in range(8))
    + " Finally a GAN generator is mentioned.",
)
SHORT = [
    DocumentIn(id="short-a", text="Gradient descent updates the weights step by step."),
    DocumentIn(id="short-b", text="A GAN pits a generator against a discriminator."),
    DocumentIn(id="short-c", text="Creme brulee needs a blowtorch and sugar."),
]
SHORT_IDS = [doc.id for doc in SHORT if doc.id is not None]
TEXT_FILTERS = [
    ({"$not_contains": "GAN"}, ["short-a", "short-c"]),
    ({"$not_regex": "G[A-Z]N"}, ["short-a", "short-c"]),
    ({"$and": [{"$contains": "Gradient"}, {"$contains": "GAN"}]}, ["long"]),
    ({"$and": [{"$contains": "Gradient"}, {"$not_contains": "GAN"}]}, ["short-a"]),
    ({"$and": [{"$not_contains": "Gradient"}, {"$not_contains": "GAN"}]}, ["short-c"]),
    (
        {"$or": [{"$contains": "GAN"}, {"$not_contains": "Gradient"}]},
        ["long", "short-b", "short-c"],
    ),
    ({"$or": [{"$not_contains": "GAN"}, {"$not_contains": "Gradient"}]}, SHORT_IDS),
    ({"$contains": "GAN generator is"}, ["long"]),
    ({"$and": [{"$contains": "GAN"}, {"$contains": "brulee"}]}, []),
]


@pytest.mark.parametrize("mode", MODES)
def test_text_filters_passing_more_documents_than_one_statement_binds(
    small_chunks: KnowledgeStore, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the mirror loads, the passing documents' ids go to Chroma in a where-clause;
    SQLite binds ~32k values a statement, so a longer list is asked in parts and the answers
    merged (here with a cap of one id, against the same searches unsplit)."""
    small_chunks.add([GAN_LAST, *SHORT])
    query = "gradient descent pasta GAN blowtorch"
    parts: list[int] = []
    split = collection.split_id_lists

    def counted(where: Any) -> Any:
        parts.append(len(split(where)))
        return split(where)

    monkeypatch.setattr(collection, "split_id_lists", counted)
    with mirror_state(small_chunks, False):
        whole = [
            ask(small_chunks, query=query, mode=mode, where_document=w) for w, _ in TEXT_FILTERS
        ]
        assert max(parts) == 1
        monkeypatch.setattr(collection, "ID_LIST_CAP", 1)
        for (where_document, expected), before in zip(TEXT_FILTERS, whole, strict=True):
            result = ask(small_chunks, query=query, mode=mode, where_document=where_document)
            assert sorted(ids(result)) == expected, where_document
            assert [(m.id, m.score) for m in result.matches] == [
                (m.id, m.score) for m in before.matches
            ]
    assert max(parts) > 1


@pytest.mark.parametrize("loaded", [True, False], ids=["mirror", "chroma"])
@pytest.mark.parametrize("mode", MODES)
def test_text_filters_apply_to_the_whole_document(
    small_chunks: KnowledgeStore, mode: str, loaded: bool
) -> None:
    """ "GAN" is only in the last chunk of 'long', "Gradient" only in its first: a document
    passes $not_contains when no chunk contains the text, and $and/$or combine documents."""
    small_chunks.add([GAN_LAST, *SHORT])
    assert small_chunks.get("long").chunks > 2
    query = "gradient descent pasta GAN blowtorch"
    with mirror_state(small_chunks, loaded):
        for where_document, expected in TEXT_FILTERS:
            result = ask(small_chunks, query=query, mode=mode, where_document=where_document)
            assert sorted(ids(result)) == expected, where_document
            if not expected:
                assert result.status == "no_candidates"
                assert result.message == "No document matches the filters."


@pytest.fixture
def shallow(settings: Settings, embedder: Embedder) -> Iterator[KnowledgeStore]:
    """A store fusing 10 documents a side, holding 40 one-chunk documents (of different
    lengths: no two tie on BM25, whose ties FTS5 and the mirror order differently)."""
    store = KnowledgeStore.open(changed(settings, hybrid_depth=10), embedder)
    topics = ["pasta", "bread", "coffee", "tea", "rice", "soup", "salad", "cake"]
    texts = [
        f"Tip {i}: cook {topics[i % 8]} {'really ' * (i % 5)}well, step {i}." for i in range(40)
    ]
    store.add([DocumentIn(id=f"d{i:02}", text=text) for i, text in enumerate(texts)])
    yield store
    store.close()


@pytest.mark.parametrize("fusion", ["score", "rrf"])
def test_hybrid_fuses_the_same_candidates_before_the_mirror_loads(
    shallow: KnowledgeStore, fusion: str
) -> None:
    """Both sides are cut to KB_HYBRID_DEPTH documents on every path: before the mirror
    loaded, the dense side kept its widened read (30 documents, not 10), so score fusion
    normalized over another set and the fused scores (and order) differed."""
    body = {"query": "pasta", "mode": "hybrid", "fusion": fusion, "top_k": 10}
    answers = []
    for loaded in (True, False):
        with mirror_state(shallow, loaded):
            answers.append(ask(shallow, **body).matches)
    assert [m.id for m in answers[0]] == [m.id for m in answers[1]]
    # Chroma's distances and the mirror's products round differently in the last float bits
    fused = [[m.fused_score for m in answer] for answer in answers]
    assert fused[0] == pytest.approx(fused[1], rel=1e-4)


@pytest.mark.parametrize("loaded", [True, False], ids=["mirror", "chroma"])
@pytest.mark.parametrize("mode", ["keyword", "hybrid"])
def test_the_threshold_picks_before_top_k_cuts(
    shallow: KnowledgeStore, mode: str, loaded: bool
) -> None:
    """Keyword and hybrid order are not cosine order: a result holds the best-ranked top_k
    documents that pass the threshold (it answered 'no confident match' when the first-ranked
    one failed, though the next passed)."""
    # short, so first by BM25; about tax forms, so below the recipes by cosine
    shallow.add([DocumentIn(id="tax", text="Tax form 1040, line pasta.")])
    body = {"query": "line pasta", "mode": mode}
    with mirror_state(shallow, loaded):
        ranking = ask(shallow, **body, top_k=10).matches  # 10: the depth at top_k 1 and 2
        scores = [m.score for m in ranking]
        later = next(i for i in range(1, len(scores)) if scores[i] > scores[0])
        threshold = (scores[0] + scores[later]) / 2
        passing = [m.id for m in ranking if m.score >= threshold]
        for top_k in (1, 2):
            result = ask(shallow, **body, top_k=top_k, min_score=threshold)
            assert ids(result) == passing[:top_k]
            assert result.status == "ok"
        # every candidate rejected: the counts, and the ten best-scored of the whole ranking
        whole = ask(shallow, **body, top_k=10, min_score=1.0, explain=True)
        by_score = [m.score for m in whole.near_misses or []]
        above = [score for score in by_score if score >= threshold]
        assert 0 < len(above) < len(by_score)
        explained = ask(shallow, **body, top_k=1, min_score=threshold, explain=True)
        misses = [m.score for m in explained.near_misses or []]
        assert misses == [by_score[len(above)]]  # top_k of them, the best-scored rejected
        assert explained.candidates == whole.candidates
        assert explained.rejected == whole.candidates - len(above)


@pytest.mark.parametrize("loaded", [True, False], ids=["mirror", "chroma"])
@pytest.mark.parametrize("mode", ["keyword", "hybrid"])
def test_the_best_rejected_score_is_the_best_of_the_whole_ranking(
    shallow: KnowledgeStore, mode: str, loaded: bool
) -> None:
    """'No confident match: the best score, X' quoted the best of the first top_k in keyword
    or hybrid order, so X changed with top_k (the seed's Portugal query: 0.121 at top_k 2,
    0.149 at 5) and was not how close the best came."""
    shallow.add([DocumentIn(id="tax", text="Tax form 1040, line pasta.")])  # first by BM25
    body = {"query": "line pasta", "mode": mode}
    with mirror_state(shallow, loaded):
        asked = [ask(shallow, **body, top_k=k, min_score=0.99, explain=True) for k in (1, 2, 5)]
        first = ask(shallow, **body, top_k=1, min_score=-1).matches[0]
    best = max(m.score for m in asked[-1].near_misses or [])
    assert first.id == "tax"  # ranked first, scored below the best
    assert first.score < best
    for result in asked:
        assert (result.status, result.matches) == ("no_confident_match", [])
        assert result.best_rejected_score == best
        assert f"the best score, {best:.3f}," in result.message
        assert (result.near_misses or [])[0].score == best


@pytest.mark.parametrize("loaded", [True, False], ids=["mirror", "fts5"])
def test_equal_bm25_scores_at_the_depth_cut_are_taken_in_id_order(
    settings: Settings, embedder: Embedder, loaded: bool
) -> None:
    """Four notes score alike on 'kafka'; with two a side, which two made the cut depended
    on the order they were added in (rows), so two stores loaded alike could differ."""
    store = KnowledgeStore.open(changed(settings, hybrid_depth=2), embedder)
    try:
        notes = {
            "k1": "kafka topics hold ordered records",
            "k2": "kafka brokers replicate the partitions",
            "k3": "kafka consumers commit their offsets",
            "k4": "kafka producers batch small messages",
        }
        store.add([DocumentIn(id=key, text=notes[key]) for key in ("k4", "k3", "k2", "k1")])
        store.add([DocumentIn(id=f"f{i}", text=f"filler note {i} on cooking") for i in range(6)])
        with mirror_state(store, loaded):
            result = ask(store, query="kafka", mode="keyword", top_k=2, min_score=-1)
        assert ids(result) == ["k1", "k2"]
    finally:
        store.close()


def test_keyword_search_answers_alike_before_and_after_the_mirror_loads(
    store: KnowledgeStore,
) -> None:
    """The in-memory index tokenized otherwise than FTS5: 'js' matched the note about the
    letter J (both stemmed to 'j' in memory), and 'snake_case' matched any document with
    'snake' or 'case' in memory but only the phrase in FTS5."""
    notes = {
        "node": "Node.js runs JS on the server.",
        "letter": "The letter J comes after I.",
        "naming": "Python names variables in snake_case.",
        "zoo": "The zoo keeps a snake in a glass case.",
        "stats": "Methodology of the analogies study.",
    }
    store.add([DocumentIn(id=key, text=text) for key, text in notes.items()])
    for query in ("js", "snake_case", "methodologies", "analogy"):
        answers = []
        for loaded in (True, False):
            with mirror_state(store, loaded):
                result = ask(store, query=query, mode="keyword", min_score=-1)
            answers.append((sorted(ids(result)), result.candidates))
        assert answers[0] == answers[1], query
        assert "letter" not in answers[0][0]


@pytest.mark.parametrize("loaded", [True, False], ids=["mirror", "chroma"])
@pytest.mark.parametrize(
    ("mode", "fusion"), [("dense", None), ("keyword", None), ("hybrid", "score"), ("hybrid", "rrf")]
)
def test_equal_scores_are_ordered_by_id_on_every_path(
    store: KnowledgeStore, mode: str, fusion: str | None, loaded: bool
) -> None:
    """Two documents with the same text tie on every side; the tie falls by id, whichever
    was added first (the mirror broke hybrid ties by its document numbers: insertion order)."""
    text = "Sourdough needs a lively starter and a long, cool proof."
    store.add([DocumentIn(id="zz-first", text=text), DocumentIn(id="aa-second", text=text)])
    store.add([DocumentIn(id="other", text="Espresso wants finely ground coffee.")])
    with mirror_state(store, loaded):
        result = ask(store, query="sourdough starter proof", mode=mode, fusion=fusion, top_k=1)
    assert ids(result) == ["aa-second"]


@pytest.mark.parametrize("loaded", [True, False], ids=["mirror", "chroma"])
@pytest.mark.parametrize("best", ["z-best", "a-best"])
def test_rrf_gives_equal_scores_on_a_side_one_rank(
    store: KnowledgeStore, best: str, loaded: bool
) -> None:
    """Seven notes tie on BM25 for 'quasar'; the one about quasars is first by cosine. RRF
    ranked the tie by id, so as z-best it took keyword rank 7 and finished third, below
    m-02, which it beats on the dense side and ties on the other; as a-best it was first
    (review helper 90). Now the tie shares keyword rank 1, whatever the ids."""
    words = ["basil", "onion", "pepper", "thyme", "ginger", "lemon"]
    store.add(
        [
            DocumentIn(id=best, text="quasar observed by radio telescopes"),
            *(
                DocumentIn(id=f"m-{i:02d}", text=f"quasar soup recipe {w} garlic")
                for i, w in enumerate(words)
            ),
            *(
                DocumentIn(id=f"f-{i:02d}", text=f"filler note {i} about gardening")
                for i in range(20)
            ),
        ]
    )
    with mirror_state(store, loaded):
        dense = ids(ask(store, query="quasar", mode="dense", top_k=27))
        result = ask(store, query="quasar", mode="hybrid", fusion="rrf", top_k=4)
    assert len({m.keyword_score for m in result.matches}) == 1  # one BM25 tie
    # keyword rank 1 for each: 1 / (k + 1) + 1 / (k + dense rank)
    assert [m.fused_score for m in result.matches] == pytest.approx(
        [1 / (RRF_K + 1) + 1 / (RRF_K + 1 + dense.index(m.id)) for m in result.matches]
    )
    assert ids(result) == dense[:4]
    assert dense[0] == best


TWINS = [
    DocumentIn(id=f"twin-{i:02d}", text="Sourdough needs a lively starter and a long, cool proof.")
    for i in range(6)
]


@pytest.mark.parametrize("path", ["mirror", "index", "chroma"])
@pytest.mark.parametrize(
    ("mode", "fusion"), [("dense", None), ("keyword", None), ("hybrid", "score"), ("hybrid", "rrf")]
)
def test_identical_texts_tie_at_every_top_k_on_every_path(
    settings: Settings,
    embedder: Embedder,
    seed_docs: list[DocumentIn],
    path: str,
    mode: str,
    fusion: str | None,
) -> None:
    """Six documents with one text score alike and fall in id order, whatever top_k cuts the
    tie. A float32 matrix product scored them a few ulps apart by their rows (the mirror
    answered twin-04, twin-05, twin-00 for top_k 3), and Chroma's path read 3 x top_k chunks
    and ordered the tie within that read only."""
    config = changed(settings, ann_min_rows=100, ann_nprobe=65_536) if path == "index" else settings
    store = KnowledgeStore.open(config, embedder)
    try:
        store.add([*TWINS, DocumentIn(id="other", text="Espresso wants finely ground coffee.")])
        if path == "index":
            store.add(seed_docs)
        store.replica.wait_loaded()
        assert (store.replica.mirror._index is not None) == (path == "index")
        with mirror_state(store, path != "chroma"):
            for top_k in (1, 2, 3, 5):
                result = ask(
                    store, query="sourdough starter proof", mode=mode, fusion=fusion, top_k=top_k
                )
                assert ids(result) == [twin.id for twin in TWINS[:top_k]], top_k
                assert len({match.score for match in result.matches}) == 1
    finally:
        store.close()


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_a_tie_larger_than_the_index_candidates_falls_in_id_order(
    settings: Settings, embedder: Embedder, seed_docs: list[DocumentIn], mode: str
) -> None:
    """The IVF index nominates 2n + 16 candidates, and 120 identical documents share their
    8-bit codes: FAISS kept any of them (twin-098 for top_k 1). A candidate list ending in a
    tie is set aside for an exact search."""
    store = KnowledgeStore.open(changed(settings, ann_min_rows=100), embedder)
    try:
        text = TWINS[0].text
        store.add(seed_docs)
        store.add([DocumentIn(id=f"twin-{i:03d}", text=text) for i in reversed(range(120))])
        store.replica.wait_loaded()
        assert store.replica.mirror._index is not None
        for top_k in (1, 3, 5):
            result = ask(store, query="sourdough starter proof", mode=mode, top_k=top_k)
            assert ids(result) == [f"twin-{i:03d}" for i in range(top_k)], top_k
    finally:
        store.close()


@pytest.mark.parametrize("loaded", [True, False], ids=["mirror", "chroma"])
@pytest.mark.parametrize("mode", MODES)
def test_scores_stay_within_minus_one_and_one(
    store: KnowledgeStore, seed_docs: list[DocumentIn], mode: str, loaded: bool
) -> None:
    """A text's score against itself came out up to 1.0000007 (float32 rounding)."""
    docs = seed_docs[:40]
    store.add(docs)
    with mirror_state(store, loaded):
        results = search(
            store,
            QueryRequest(queries=[doc.text for doc in docs], mode=mode, top_k=1, min_score=-1),
        )
    scores = [m.score for result in results for m in result.matches]
    assert len(scores) == len(docs)
    assert max(scores) <= 1.0


def test_only_what_a_result_shows_is_fetched(
    shallow: KnowledgeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rejected candidates are counted, not fetched (43 records with their texts were
    read for one match of a keyword search)."""
    fetched: list[int] = []
    records = hybrid._records
    monkeypatch.setattr(
        hybrid, "_records", lambda s, ids, *rest: fetched.append(len(ids)) or records(s, ids, *rest)
    )
    shallow.replica.wait_loaded()
    # BM25 order d00 0.589, d16 0.542, d32 0.529, d08 0.552, d24 (cosine): two pass 0.545
    result = ask(shallow, query="line pasta", mode="keyword", top_k=2, min_score=0.545)
    assert (ids(result), result.candidates, result.rejected) == (["d00", "d08"], 5, 3)
    assert fetched == [2]


@pytest.mark.parametrize("loaded", [True, False], ids=["mirror", "chroma"])
def test_a_document_deleted_during_the_search_is_said_to_be(
    store: KnowledgeStore, monkeypatch: pytest.MonkeyPatch, loaded: bool
) -> None:
    """Hits found by id are fetched after the ranking; when all are gone by then the answer
    said 'The knowledge base is empty.' though it was not."""
    store.add([DocumentIn(id="one", text="Sourdough needs a lively starter.")])
    monkeypatch.setattr("kb.hybrid._records", lambda store, ids, *rest: {})  # deleted meanwhile
    with mirror_state(store, loaded):
        result = ask(store, query="sourdough", mode="keyword")
    assert (result.status, result.matches) == ("no_candidates", [])
    assert result.message == "The documents found were changed or deleted while the search ran."


@pytest.mark.parametrize("loaded", [True, False], ids=["mirror", "chroma"])
@pytest.mark.parametrize("mode", MODES)
def test_a_document_written_during_the_search_is_not_shown_failing_the_filter(
    store: KnowledgeStore, monkeypatch: pytest.MonkeyPatch, mode: str, loaded: bool
) -> None:
    """A write landing between the ranking and the fetch of what a result shows: the hit
    was shown as its new version, whose metadata failed the filter (where flag = 1 answered
    a document showing flag 0; review helper 25). It is now shown as ranked or not at all."""
    store.add(
        [
            DocumentIn(id="a", text="Zebra stripes are unique.", metadata={"flag": 1}),
            DocumentIn(id="b", text="A zebra herd grazes.", metadata={"flag": 1}),
        ]
    )
    fetch = hybrid.complete

    def written_first(store: KnowledgeStore, per_query: Any, flt: Any) -> Any:
        store.update("a", UpdateFields(metadata={"flag": 0}, text="Zebra foals."))
        return fetch(store, per_query, flt)

    monkeypatch.setattr("kb.shown.complete", written_first)
    with mirror_state(store, loaded):
        result = ask(store, query="zebra", mode=mode, where={"flag": 1})
    shown = {match.id: (match.text, match.metadata) for match in result.matches}
    assert shown["b"] == ("A zebra herd grazes.", {"flag": 1})
    assert shown.get("a", ("Zebra stripes are unique.", {"flag": 1})) == (
        "Zebra stripes are unique.",
        {"flag": 1},
    )


def test_a_document_deleted_during_the_search_is_not_ranked_again_for(
    store: KnowledgeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a rewritten document is ranked again: one deleted between the ranking and the
    fetch is left out, the rest shown from the one ranking."""
    store.add([DocumentIn(id=f"z{i}", text=f"Zebra note {i} on stripes.") for i in range(3)])
    fetch = hybrid.complete
    calls: list[int] = []

    def deleted_first(store: KnowledgeStore, per_query: Any, flt: Any) -> Any:
        if not calls:
            store.delete(["z0"])
        calls.append(1)
        return fetch(store, per_query, flt)

    monkeypatch.setattr("kb.shown.complete", deleted_first)
    store.replica.wait_loaded()
    result = ask(store, query="zebra stripes", mode="hybrid")
    assert sorted(ids(result)) == ["z1", "z2"]
    assert (len(calls), result.candidates) == (1, 3)


def test_a_keyword_hit_ranked_before_the_mirror_loaded_is_read_through_the_filter(
    store: KnowledgeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FTS5's hits carry no version; when the mirror was loaded between the ranking and
    the fetch, the hit was read from it without the filter (review helper 29)."""
    store.add([DocumentIn(id="a", text="Zebra stripes are unique.", metadata={"flag": 1})])
    store.replica.wait_loaded()
    mirror = store.replica.mirror
    fetch = hybrid.complete

    def loaded_then_written(store: KnowledgeStore, per_query: Any, flt: Any) -> Any:
        store.replica.mirror = mirror  # the load finishes, then a write lands
        store.update("a", UpdateFields(metadata={"flag": 0}, text="Zebra foals."))
        return fetch(store, per_query, flt)

    monkeypatch.setattr("kb.shown.complete", loaded_then_written)
    store.replica.mirror = None  # ranked on FTS5
    try:
        result = ask(store, query="zebra", mode="keyword", where={"flag": 1})
    finally:
        store.replica.mirror = mirror
    assert result.matches == []


def test_a_chunked_document_written_during_the_search_is_ranked_again(
    small_chunks: KnowledgeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole texts of chunked hits are fetched after their chunks: a write in between
    joined the new version's text to the passage and metadata of the one ranked, then the
    document was left out (review helper 90); it is now ranked again and shown whole as its
    new version."""
    small_chunks.add([GAN_LAST])
    fetch = small_chunks.documents_of
    new = GAN_LAST.text.replace("tomato", "pesto")
    writes: list[int] = []

    def written_once(records: Any) -> Any:
        if not writes:
            writes.append(1)
            small_chunks.update("long", UpdateFields(text=new, metadata={"rewritten": True}))
        return fetch(records)

    monkeypatch.setattr(small_chunks, "documents_of", written_once)
    result = ask(small_chunks, query="gradient descent")
    assert writes == [1]
    assert result.status == "ok"
    (match,) = result.matches
    assert (match.id, match.text, match.metadata) == ("long", new, {"rewritten": True})
    assert match.passage is not None
    assert match.passage in new


def test_a_chunked_document_written_at_every_ranking_is_left_out(
    small_chunks: KnowledgeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search ranks again at most ATTEMPTS times: a document rewritten before each fetch
    is left out, never shown joined to another version's passage or metadata."""
    small_chunks.add([GAN_LAST])
    fetch = small_chunks.documents_of
    writes: list[int] = []

    def written_first(records: Any) -> Any:
        writes.append(1)
        small_chunks.update("long", UpdateFields(metadata={"rewritten": len(writes)}))
        return fetch(records)

    monkeypatch.setattr(small_chunks, "documents_of", written_first)
    result = ask(small_chunks, query="gradient descent")
    assert len(writes) == ATTEMPTS
    assert result.matches == []
    assert (result.status, result.candidates) == ("no_candidates", 1)
    assert result.message == "The documents found were changed or deleted while the search ran."


@pytest.mark.parametrize(
    ("mode", "loaded"),
    [("dense", True), ("keyword", True), ("hybrid", True), ("hybrid", False)],
    ids=["dense-mirror", "keyword-mirror", "hybrid-mirror", "hybrid-chroma"],
)
@pytest.mark.parametrize("explain", [False, True])
def test_documents_upserted_during_the_search_are_ranked_again(
    store: KnowledgeStore, monkeypatch: pytest.MonkeyPatch, mode: str, loaded: bool, explain: bool
) -> None:
    """Every document ranked is upserted (a new version) between the ranking and the fetch:
    each hit was dropped as of another version, so the answer was no_candidates ('changed or
    deleted while the search ran') though all of them matched before and after (review
    helper 90). The search now ranks again and shows each one's new version. (Dense search
    on Chroma reads the texts with the ranking, and FTS5's keyword hits carry no version:
    neither drops a hit.)"""

    def notes(revision: int) -> list[DocumentIn]:
        return [
            DocumentIn(
                id=f"up-{i}",
                text=f"zqup note {i} revision {revision} about storage",
                metadata={"g": "up", "rev": revision},
            )
            for i in range(5)
        ]

    store.add(notes(0))
    store.add([DocumentIn(id="other", text="Espresso wants finely ground coffee.")])
    fetch = hybrid.complete
    calls: list[int] = []

    def upserted_once(store: KnowledgeStore, per_query: Any, flt: Any) -> Any:
        if not calls:
            store.add(notes(1), WriteMode.UPSERT)
        calls.append(1)
        return fetch(store, per_query, flt)

    monkeypatch.setattr("kb.shown.complete", upserted_once)
    threshold = 1.0 if explain else -1.0  # explain: the near misses are fetched too
    with mirror_state(store, loaded):
        result = ask(
            store,
            query="zqup storage",
            mode=mode,
            top_k=5,
            min_score=threshold,
            where={"g": "up"},
            explain=explain,
        )
    shown = result.near_misses if explain else result.matches
    assert {m.id: (m.text, m.metadata) for m in shown or []} == {
        doc.id: (doc.text, doc.metadata) for doc in notes(1)
    }
    assert result.status == ("no_confident_match" if explain else "ok")
    assert len(calls) == 2  # one ranking again


def test_a_chunked_document_deleted_during_the_search_is_left_out(
    small_chunks: KnowledgeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole texts of chunked hits are fetched after the ranking; a document deleted in
    between is left out of the answer (a 500 'NoneType.__format__' when it was the only one)."""
    small_chunks.add([GAN_LAST])
    fetch = small_chunks.documents_of

    def deleted_first(records: Any) -> Any:
        small_chunks.delete(["long"])
        return fetch(records)

    monkeypatch.setattr(small_chunks, "documents_of", deleted_first)
    result = ask(small_chunks, query="gradient descent")
    assert result.matches == []
    assert (result.status, result.candidates) == ("no_candidates", 1)  # found, then gone
    assert result.message == "The documents found were changed or deleted while the search ran."
