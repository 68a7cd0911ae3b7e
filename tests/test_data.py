"""The shipped data: the seed knowledge base and the labeled evaluation sets are well-formed."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from kb.config import Settings
from kb.loader import Item, Options, read, sources

DATA = Path(__file__).resolve().parent.parent / "data"
DIFFICULTIES = {"beginner", "intermediate", "advanced"}


def seed_docs() -> list[Item]:
    entries = [e for s in sources([str(DATA / "seed")]) for e in read(s, Options(Settings()))]
    problems = [str(e) for e in entries if not isinstance(e, Item)]
    assert not problems, problems[:5]
    return entries  # type: ignore[return-value]


def test_seed_has_250_documents_with_the_promised_metadata() -> None:
    docs = [item.doc for item in seed_docs()]
    assert len(docs) >= 250
    assert len({doc.id for doc in docs}) == len(docs)
    assert len({doc.text for doc in docs}) == len(docs)
    for doc in docs:
        meta = doc.metadata or {}
        assert {"category", "difficulty", "author", "date", "tags"} <= set(meta), doc.id
        assert meta["difficulty"] in DIFFICULTIES, doc.id
        assert isinstance(meta["tags"], list), doc.id
        assert len(meta["date"]) == 10, doc.id
    long_docs = [doc for doc in docs if len(doc.text.split()) > 400]
    assert len(long_docs) >= 10
    assert len(Counter(doc.metadata["category"] for doc in docs)) >= 8  # type: ignore[index]


def test_eval_queries_point_at_seed_documents() -> None:
    ids = {item.doc.id for item in seed_docs()}
    queries = [
        json.loads(line) for line in (DATA / "eval" / "queries.jsonl").read_text().splitlines()
    ]
    assert len(queries) >= 60
    assert len({q["id"] for q in queries}) == len(queries)
    unanswerable = [q for q in queries if not q["relevant"]]
    assert len(unanswerable) >= 15
    for query in queries:
        assert query["query"].strip()
        assert set(query["relevant"]) <= ids, query["id"]


def test_eval_pairs_are_labeled_with_hard_negatives() -> None:
    pairs = [json.loads(line) for line in (DATA / "eval" / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) >= 100
    assert {p["label"] for p in pairs} == {0, 1}
    assert sum(p["kind"] == "hard-negative" for p in pairs) >= 20
    assert all(p["a"].strip() and p["b"].strip() for p in pairs)
