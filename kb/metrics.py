"""Ranking metrics over runs and relevance judgments (qrels), as trec_eval defines them."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

Qrels = Mapping[str, Mapping[str, int]]  # query id -> document id -> graded relevance
Run = Mapping[str, Sequence[str]]  # query id -> ranked document ids, best first


def relevant_ids(relevant: Mapping[str, int]) -> set[str]:
    """The documents judged relevant: grade > 0 (0 and negative grades are judged not)."""
    return {doc for doc, grade in relevant.items() if grade > 0}


def judged(qrels: Qrels) -> list[str]:
    """The queries the metrics score: those with at least one relevant document."""
    return [query for query, relevant in qrels.items() if relevant_ids(relevant)]


def ndcg_at(ranking: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    """nDCG@k with linear gains (trec_eval's ndcg_cut); a negative grade gains 0, as in
    pytrec_eval and BEIR, not a penalty."""
    gains = (max(relevant.get(doc, 0), 0) for doc in ranking[:k])
    dcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(gains))
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:k]
    idcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def mrr_at(ranking: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    for rank, doc in enumerate(ranking[:k]):
        if relevant.get(doc, 0) > 0:
            return 1.0 / (rank + 1)
    return 0.0


def recall_at(ranking: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    wanted = relevant_ids(relevant)
    return len(wanted & set(ranking[:k])) / len(wanted) if wanted else 0.0


def evaluate(run: Run, qrels: Qrels) -> dict[str, float]:
    """Mean nDCG@10, MRR@10, Recall@10 and Recall@100 over the judged queries."""
    scored = judged(qrels)
    totals = {"ndcg@10": 0.0, "mrr@10": 0.0, "recall@10": 0.0, "recall@100": 0.0}
    if not scored:
        return totals
    for query in scored:
        ranking, relevant = run.get(query, []), qrels[query]
        totals["ndcg@10"] += ndcg_at(ranking, relevant, 10)
        totals["mrr@10"] += mrr_at(ranking, relevant, 10)
        totals["recall@10"] += recall_at(ranking, relevant, 10)
        totals["recall@100"] += recall_at(ranking, relevant, 100)
    return {name: total / len(scored) for name, total in totals.items()}
