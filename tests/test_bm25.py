"""The in-memory BM25 ranks like SQLite FTS5 (which it replaces on the search path)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kb.bm25 import Bm25, tokens
from kb.keyword import query_tokens
from kb.schemas import DocumentIn
from kb.store import KnowledgeStore
from tests.conftest import DATA


def test_tokens_fold_case_and_diacritics_and_stem_like_fts5() -> None:
    assert tokens("Running Naïve CAFÉS, re-indexing e_mail!") == [
        "run", "naiv", "cafe", "re", "index", "e", "mail",
    ]  # fmt: skip


def test_scores_removals_and_masks() -> None:
    index = Bm25()
    for row, text in enumerate(["red apples", "green apples and pears", "red red wine"]):
        index.add(row, text)
    rows, scores = index.search(tokens("red"), 10)
    assert rows.tolist() == [2, 0]  # two occurrences beat one
    assert scores[0] > scores[1] > 0
    index.remove(2)
    assert index.search(tokens("red"), 10)[0].tolist() == [0]
    mask = np.array([False, True, True])
    assert index.search(tokens("apples"), 10, mask)[0].tolist() == [1]
    assert not index.search(tokens("nothing"), 10)[0].size
    with pytest.raises(ValueError, match="in order"):
        index.add(7, "rows come in order")


@pytest.fixture
def seeded(store: KnowledgeStore, seed_docs: list[DocumentIn]) -> KnowledgeStore:
    store.add(seed_docs)
    store.replica.wait_loaded()
    return store


def test_rankings_agree_with_fts5_on_the_seed_queries(seeded: KnowledgeStore) -> None:
    mirror = seeded.replica.current_mirror()
    assert mirror is not None
    queries = [
        json.loads(line)["query"]
        for line in (DATA / "eval" / "queries.jsonl").read_text().splitlines()
    ]
    agree, gaps = 0, []
    for query in queries:
        fts5 = seeded.keyword.search(query, 10)
        rows, scores = mirror.keyword(query_tokens(query), 10)
        ours = [(mirror.ids[row], float(score)) for row, score in zip(rows, scores, strict=True)]
        agree += [h.record_id for h in fts5] == [record_id for record_id, _ in ours]
        gaps += [
            abs(a.score - score) / a.score
            for a, (record_id, score) in zip(fts5, ours, strict=False)
            if a.record_id == record_id
        ]
    assert agree >= 0.95 * len(queries)
    assert max(gaps) < 0.01  # same formula, same statistics: scores match to within 1%
